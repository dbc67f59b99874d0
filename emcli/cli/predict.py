"""``emcli predict``: labels, probabilities and log-densities of new rows under a model."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from emcli.errors import DataError

from .app import app, handled
from .options import DataArg, DebugOpt, FormatOpt, ModelArg, ProbabilitiesOpt, QuietOpt

PredictIdColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--id-column",
        help="Column passed through to the labels output instead of the row number "
        "(default: the fit's id column, when the file has it).",
        show_default=False,
    ),
]
PredictLabelsOpt = Annotated[
    str,
    typer.Option(
        "--labels", help="Labels output path (.csv/.tsv/.parquet/.json/.jsonl); - for stdout."
    ),
]


@app.command("predict")
def predict_command(
    model: ModelArg,
    data: DataArg,
    labels: PredictLabelsOpt = "-",
    probabilities: ProbabilitiesOpt = False,
    id_column: PredictIdColumnOpt = None,
    format: FormatOpt = None,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Labels, probabilities and log-densities of new rows under a fitted model (NaN allowed)."""
    with handled(debug):
        from emcli import io
        from emcli.fitting import score_rows
        from emcli.render import Reporter, apply_summary

        started = time.perf_counter()
        labels_fmt = io.output_format(labels, "csv")
        loaded = io.load_model(model)
        inputs = io.resolve_inputs(data, format.value if format is not None else None)
        io.check_output_paths([labels], [*inputs, io.InputFile(model, "json")])
        table = io.read_table(inputs)
        if id_column is None:  # the fit's id column, when the new file has it too
            stored = loaded.fit.get("id_column")
            if isinstance(stored, str) and stored in table.table.column_names:
                id_column = stored
        feats = io.model_features(table, loaded.columns, id_column)
        try:
            resp, log_density = score_rows(loaded.params, feats.X, loaded.columns)
        except DataError as exc:
            raise DataError(f"{table.name}: {exc}") from exc
        n_observed = io.observed_counts(feats.X)
        cols = io.scores_columns(
            resp, log_density, n_observed, feats.ids, feats.id_name, probabilities
        )
        with io.AtomicOutputs() as out:
            out.add(labels, io.render_table(cols, labels_fmt))
            out.commit()
        apply_summary(
            Reporter(quiet),
            "scored",
            source=table.name,
            n_rows=table.n_rows,
            n_empty=int((n_observed == 0).sum()),
            labels=resp.argmax(axis=1),
            n_components=loaded.params.n_components,
            written=labels,
            seconds=time.perf_counter() - started,
        )

"""``emcli predict``: labels, probabilities and log-densities of new rows under a model."""

from __future__ import annotations

import os
import time
from typing import Annotated

import numpy as np
import typer

from emcli.errors import DataError

from .app import app, handled
from .options import (
    DaskOpt,
    DataArg,
    DebugOpt,
    FormatOpt,
    MaxMemoryOpt,
    ModelArg,
    ProbabilitiesOpt,
    QuietOpt,
    TmpDirOpt,
    memory_budget,
)

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
    max_memory: MaxMemoryOpt = None,
    tmp_dir: TmpDirOpt = None,
    dask: DaskOpt = None,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Labels, probabilities and log-densities of new rows under a fitted model (NaN allowed)."""
    with handled(debug):
        from emcli import io
        from emcli.fitting import row_threads
        from emcli.io.rows import open_model_rows
        from emcli.render import Reporter, apply_summary
        from emcli.scoring import score_blocks
        from emcli.sources.cluster import cluster

        started = time.perf_counter()
        labels_fmt = io.output_format(labels, "csv")
        loaded = io.load_model(model)
        inputs = io.resolve_inputs(data, format.value if format is not None else None)
        io.check_output_paths([labels], [*inputs, io.InputFile(model, "json")])
        stored = loaded.fit.get("id_column")  # the default: the fit's, when the file has it
        counts = np.zeros(loaded.params.n_components, dtype=np.int64)
        n_empty = 0
        with (
            cluster(dask) as client,
            open_model_rows(
                inputs, loaded.columns, id_column,
                default_id=stored if isinstance(stored, str) else None,
                tmp_dir=tmp_dir, budget=memory_budget(max_memory), client=client,
            ) as rows,
            io.AtomicOutputs() as out,
            row_threads(os.cpu_count() or 1) as pmap,
        ):
            table = out.stage_table(labels, labels_fmt)
            try:
                for block in score_blocks(loaded.params, rows.source, pmap):
                    table.write(io.scores_columns(
                        block.resp, block.log_density, block.n_observed, block.extra,
                        rows.id_name, probabilities, first_row=block.start + 1,
                    ))
                    counts += np.bincount(block.labels, minlength=counts.size)
                    n_empty += int((block.n_observed == 0).sum())
            except DataError as exc:
                raise DataError(f"{rows.name}: {exc}") from exc
            out.commit()
        apply_summary(
            Reporter(quiet),
            "scored",
            source=rows.name,
            n_rows=rows.n_rows,
            n_empty=n_empty,
            counts=counts,
            n_components=loaded.params.n_components,
            written=labels,
            seconds=time.perf_counter() - started,
        )


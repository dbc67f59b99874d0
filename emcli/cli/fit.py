"""``emcli fit``: read a table, fit one mixture, write labels, the model file and the log."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from emcli.errors import DataError, FitError, NotConvergedError, UsageError

from .app import app, handled
from .options import (
    ColumnsOpt,
    Covariance,
    CovarianceOpt,
    DataArg,
    DebugOpt,
    DType,
    DTypeOpt,
    ExcludeOpt,
    FormatOpt,
    IdColumnOpt,
    InitOpt,
    JsonOpt,
    LabelsOpt,
    LogOpt,
    MaxIterOpt,
    ModelOpt,
    NComponentsOpt,
    NInitOpt,
    OutDirOpt,
    ProbabilitiesOpt,
    QuietOpt,
    RegCovarOpt,
    SeedOpt,
    StandardizeOpt,
    StrictOpt,
    TolOpt,
    WeightsColumnOpt,
    init_choice,
    stdout_count,
)

if TYPE_CHECKING:  # pragma: no cover
    from emcli.io import Features, InputTable
    from emcli.model import FitResult


@app.command("fit")
def fit_command(
    data: DataArg,
    n_components: NComponentsOpt,
    covariance: CovarianceOpt = Covariance.full,
    init: InitOpt = "kmeans",
    tol: TolOpt = 1e-3,
    max_iter: MaxIterOpt = 200,
    n_init: NInitOpt = 1,
    seed: SeedOpt = 0,
    reg_covar: RegCovarOpt = 1e-6,
    columns: ColumnsOpt = None,
    exclude: ExcludeOpt = None,
    id_column: IdColumnOpt = None,
    weights_column: WeightsColumnOpt = None,
    standardize: StandardizeOpt = False,
    out_dir: OutDirOpt = ".",
    labels: LabelsOpt = None,
    model: ModelOpt = None,
    log: LogOpt = None,
    probabilities: ProbabilitiesOpt = False,
    json_: JsonOpt = False,
    format: FormatOpt = None,
    dtype: DTypeOpt = DType.float64,
    debug: DebugOpt = False,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit one mixture; write labels, the model file and the convergence log."""
    with handled(debug):
        run_fit(
            data,
            n_components=n_components,
            covariance=covariance.value,
            init=init,
            tol=tol,
            max_iter=max_iter,
            n_init=n_init,
            seed=seed,
            reg_covar=reg_covar,
            columns=columns,
            exclude=exclude,
            id_column=id_column,
            weights_column=weights_column,
            standardize=standardize,
            out_dir=out_dir,
            labels=labels,
            model=model,
            log=log,
            probabilities=probabilities,
            json_=json_,
            fmt=format.value if format is not None else None,
            dtype=dtype.value,
            strict=strict,
            quiet=quiet,
        )


def run_fit(
    data: list[str],
    *,
    n_components: int,
    covariance: str,
    init: str,
    tol: float,
    max_iter: int,
    n_init: int,
    seed: int,
    reg_covar: float,
    columns: list[str] | None,
    exclude: list[str] | None,
    id_column: str | None,
    weights_column: str | None,
    standardize: bool,
    out_dir: str,
    labels: str | None,
    model: str | None,
    log: str | None,
    probabilities: bool,
    json_: bool,
    fmt: str | None,
    dtype: str,
    strict: bool,
    quiet: bool,
    extra_outputs: Sequence[str] = (),
) -> tuple[FitResult, InputTable, Features]:
    """Read, fit, write the fit's files; ``extra_outputs`` are the caller's (``impute -k``)."""
    from emcli import io
    from emcli.render import Reporter

    started = time.perf_counter()
    stdout_count(
        **{
            "--labels -": labels == "-",
            "--model -": model == "-",
            "--log -": log == "-",
            "--json": json_,
            "--output -": "-" in extra_outputs,
        }
    )
    method, means_path = init_choice(init)
    stem = io.input_stem(data)
    labels_path = labels or os.path.join(out_dir, f"{stem}.labels.csv")
    model_path = model or os.path.join(out_dir, f"{stem}.model.json")
    log_path = log or os.path.join(out_dir, f"{stem}.convergence.csv")
    labels_fmt = io.output_format(labels_path, "csv")
    log_fmt = io.output_format(log_path, "csv")
    if model_path != "-" and not model_path.lower().endswith(".json"):
        raise UsageError(f"{model_path}: the model file is JSON; give it a .json name")

    inputs = io.resolve_inputs(data, fmt)
    io.check_output_paths([labels_path, model_path, log_path, *extra_outputs], inputs)
    reporter = Reporter(quiet)
    table = io.read_table(inputs)
    feats = io.select_features(
        table, columns=columns, exclude=exclude, id_column=id_column, weights_column=weights_column
    )
    for message in feats.notices:
        reporter.notice(f"{table.name}: {message}")
    means_init = None
    if means_path is not None:
        means_init = io.read_means(means_path, feats.columns, n_components)

    from threadpoolctl import threadpool_limits

    from emcli.fitting import fit_mixture

    with threadpool_limits(1, user_api="blas"), reporter.progress(n_init, max_iter) as callback:
        try:
            result = fit_mixture(
                feats.X,
                n_components=n_components,
                covariance_type=covariance,
                sample_weight=feats.weights,
                init=method,
                means_init=means_init,
                n_init=n_init,
                seed=seed,
                tol=tol,
                max_iter=max_iter,
                reg_covar=reg_covar,
                standardize=standardize,
                dtype=dtype,
                n_threads=os.cpu_count() or 1,
                column_names=feats.columns,
                callback=callback,
            )
        except DataError as exc:
            raise DataError(f"{table.name}: {exc}") from exc
        except FitError as exc:
            raise FitError(f"{table.name}: {exc}") from exc

    extra: dict[str, object] = {"id_column": id_column, "weights_column": weights_column}
    if means_path is not None:
        extra["init_means_file"] = os.path.basename(means_path)
    doc = io.model_document(result, feats.columns, table.sha256, extra)
    model_bytes = io.dumps_model(doc)
    with io.AtomicOutputs() as out:
        out.add(
            labels_path,
            io.render_table(
                io.labels_columns(result, feats.ids, feats.id_name, probabilities), labels_fmt
            ),
        )
        out.add(model_path, model_bytes)
        out.add(log_path, io.render_table(io.convergence_columns(result), log_fmt))
        if json_:
            out.add("-", model_bytes)
        out.commit()
    written = [p for p in (labels_path, model_path, log_path) if p != "-"]
    reporter.fit_summary(
        result,
        source=table.name,
        columns=feats.columns,
        written=written,
        seconds=time.perf_counter() - started,
    )
    if strict and not result.converged:
        raise NotConvergedError(
            f"the fit did not converge in {max_iter} iterations (outputs were written); "
            "raise --max-iter or --tol"
        )
    return result, table, feats

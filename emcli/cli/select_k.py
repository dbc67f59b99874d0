"""``emcli select-k``: sweep k and covariance types, pick the best by BIC/AIC/ICL, write it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from enum import Enum
from typing import Annotated

import typer

from emcli.errors import DataError, FitError, NotConvergedError, UsageError

from .app import app, handled
from .options import (
    ColumnsOpt,
    DataArg,
    DebugOpt,
    DType,
    DTypeOpt,
    ExcludeOpt,
    FormatOpt,
    IdColumnOpt,
    InitOpt,
    MaxIterOpt,
    NInitOpt,
    ProbabilitiesOpt,
    QuietOpt,
    RegCovarOpt,
    SeedOpt,
    StandardizeOpt,
    TolOpt,
    WeightsColumnOpt,
    init_choice,
    stdout_count,
)


class Criterion(str, Enum):
    bic = "bic"
    aic = "aic"
    icl = "icl"


_BLAS_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """One BLAS thread here (threadpoolctl) and in worker processes started meanwhile (env)."""
    from threadpoolctl import threadpool_limits

    saved = {name: os.environ.get(name) for name in _BLAS_ENV}
    os.environ.update(dict.fromkeys(_BLAS_ENV, "1"))
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@app.command("select-k")
def select_k_command(
    data: DataArg,
    k: Annotated[
        str,
        typer.Option(
            "-k",
            "--k",
            help="Numbers of components to try: a range 1:9 (inclusive; 1:9:2 with a step), "
            "a list 2,4,8, or a mix.",
        ),
    ] = "1:9",
    covariance: Annotated[
        str,
        typer.Option(
            "--covariance",
            help="Covariance types to try: a list of full, diag, spherical, tied, or all.",
        ),
    ] = "full",
    criterion: Annotated[
        Criterion,
        typer.Option(
            "--criterion", case_sensitive=False, help="Picks the best cell; lower is better."
        ),
    ] = Criterion.bic,
    jobs: Annotated[
        int,
        typer.Option(
            "-j",
            "--jobs",
            min=1,
            help="Cells fitted in parallel processes (results identical to --jobs 1).",
        ),
    ] = 1,
    table_path: Annotated[
        str | None,
        typer.Option(
            "--table",
            help="Write the sweep table (one row per k and covariance) here: "
            ".csv/.tsv/.parquet/.json/.jsonl, or - for stdout.",
            show_default=False,
        ),
    ] = None,
    no_hc: Annotated[
        bool,
        typer.Option(
            "--no-hc",
            help="With --init kmeans, do not also try the hc start in each cell "
            "(by default both are tried and the better likelihood kept).",
        ),
    ] = False,
    init: InitOpt = "kmeans",
    tol: TolOpt = 1e-5,
    max_iter: MaxIterOpt = 200,
    n_init: NInitOpt = 1,
    seed: SeedOpt = 0,
    reg_covar: RegCovarOpt = 1e-6,
    columns: ColumnsOpt = None,
    exclude: ExcludeOpt = None,
    id_column: IdColumnOpt = None,
    weights_column: WeightsColumnOpt = None,
    standardize: StandardizeOpt = False,
    out_dir: Annotated[
        str,
        typer.Option(
            "-o",
            "--out-dir",
            help="Directory for the best model's files: STEM.model.json, STEM.labels.csv, "
            "STEM.convergence.csv (created if needed).",
        ),
    ] = ".",
    probabilities: ProbabilitiesOpt = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the best model's document to stdout.")
    ] = False,
    format: FormatOpt = None,
    debug: DebugOpt = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 3 if the best model did not converge.")
    ] = False,
    dtype: DTypeOpt = DType.float64,
    quiet: QuietOpt = False,
) -> None:
    """Sweep k (and covariance types), pick the best by BIC/AIC/ICL, write its files."""
    with handled(debug):
        _select_k(
            data,
            k_spec=k,
            covariance_spec=covariance,
            criterion=criterion.value,
            jobs=jobs,
            table_path=table_path,
            try_hc=not no_hc,
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
            probabilities=probabilities,
            json_=json_,
            fmt=format.value if format is not None else None,
            strict=strict,
            dtype=dtype.value,
            quiet=quiet,
        )


def _select_k(
    data: list[str],
    *,
    k_spec: str,
    covariance_spec: str,
    criterion: str,
    jobs: int,
    table_path: str | None,
    try_hc: bool,
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
    probabilities: bool,
    json_: bool,
    fmt: str | None,
    strict: bool,
    dtype: str,
    quiet: bool,
) -> None:
    from emcli import io
    from emcli.render import Reporter, sweep_progress, sweep_report
    from emcli.selection import parse_covariances, parse_k

    started = time.perf_counter()
    stdout_count(**{"--table -": table_path == "-", "--json": json_})
    k_values = parse_k(k_spec)
    covariance_types = parse_covariances(covariance_spec)
    method, means_path = init_choice(init)
    if means_path is not None:
        raise UsageError(
            f"--init {init!r}: select-k tries several k, so it cannot start from a file of "
            "means; use a method (kmeans, hc, …) or emcli fit"
        )
    stem = io.input_stem(data)
    labels_path = os.path.join(out_dir, f"{stem}.labels.csv")
    model_path = os.path.join(out_dir, f"{stem}.model.json")
    log_path = os.path.join(out_dir, f"{stem}.convergence.csv")
    table_fmt = io.output_format(table_path, "csv") if table_path is not None else None

    inputs = io.resolve_inputs(data, fmt)
    outputs = [labels_path, model_path, log_path] + ([table_path] if table_path else [])
    io.check_output_paths(outputs, inputs)
    reporter = Reporter(quiet)
    table = io.read_table(inputs)
    feats = io.select_features(
        table, columns=columns, exclude=exclude, id_column=id_column, weights_column=weights_column
    )
    for message in feats.notices:
        reporter.notice(f"{table.name}: {message}")

    from emcli.selection import sweep

    n_cells = len(k_values) * len(covariance_types)
    with _one_blas_thread(), sweep_progress(reporter, n_cells) as on_cell:
        try:
            result = sweep(
                feats.X,
                k_values=k_values,
                covariance_types=covariance_types,
                criterion=criterion,
                sample_weight=feats.weights,
                n_init=n_init,
                seed=seed,
                tol=tol,
                max_iter=max_iter,
                reg_covar=reg_covar,
                standardize=standardize,
                init=method,
                try_hc=try_hc,
                jobs=jobs,
                column_names=feats.columns,
                on_cell=on_cell,
                dtype=dtype,
                n_threads=os.cpu_count() or 1,
            )
        except DataError as exc:
            raise DataError(f"{table.name}: {exc}") from exc
        except FitError as exc:
            raise FitError(f"{table.name}: {exc}") from exc

    best = result.best
    fit = best.result
    assert fit is not None  # the sweep never picks a failed cell
    extra: dict[str, object] = {
        "id_column": id_column,
        "weights_column": weights_column,
        "selected_by": {
            "criterion": result.criterion,
            "k_values": list(result.k_values),
            "covariance_types": covariance_types,
            "try_hc": try_hc,
        },
    }
    doc = io.model_document(fit, feats.columns, table.sha256, extra)
    model_bytes = io.dumps_model(doc)
    with io.AtomicOutputs() as out:
        out.add(
            labels_path,
            io.render_table(
                io.labels_columns(fit, feats.ids, feats.id_name, probabilities), "csv"
            ),
        )
        out.add(model_path, model_bytes)
        out.add(log_path, io.render_table(io.convergence_columns(fit), "csv"))
        if table_path is not None and table_fmt is not None:
            out.add(table_path, io.render_table(io.sweep_columns(result), table_fmt))
        if json_:
            out.add("-", model_bytes)
        out.commit()
    sweep_report(
        reporter,
        result,
        source=table.name,
        n_rows=table.n_rows,
        columns=feats.columns,
        written=[p for p in outputs if p != "-"],
        seconds=time.perf_counter() - started,
    )
    if strict and not fit.converged:
        raise NotConvergedError(
            f"the best model (k={best.k}, {best.covariance_type}) did not converge in {max_iter} "
            "iterations (outputs were written); raise --max-iter or --tol"
        )

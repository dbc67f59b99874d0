"""``emcli select-k``: sweep k and covariance types, pick the best by BIC/AIC/ICL, write it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from enum import Enum
from typing import Annotated

import numpy as np
import typer

from emcli.errors import UsageError

from .app import app, flagged, handled
from .fit import (
    PARTS,
    checked_path,
    draw_fit,
    fit_paths,
    is_parts_dir,
    naming,
    open_input,
    plot_paths,
    report_warnings,
    require_clean,
    write_fit,
)
from .options import (
    DataArg,
    DebugOpt,
    FitOptions,
    FormatOpt,
    LabelsOpt,
    PlotOpt,
    ProbabilitiesOpt,
    QuietOpt,
    fit_options,
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
@fit_options(tol=1e-5, after={"dtype": "strict"})
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
            help="Covariance models to try: a list such as EII,VEV,full (mclust's fourteen, "
            "or full, diag, spherical, tied), or all (the fourteen).",
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
    bootstrap: Annotated[
        str,
        typer.Option(
            "--bootstrap",
            metavar="B",
            help="Refit the cells within 10 of the best criterion (at most five) on B "
            "resamples of the rows and report how often each wins (bootstrap_share); "
            "0 = off.",
        ),
    ] = "0",
    *,
    fit: FitOptions,
    out_dir: Annotated[
        str,
        typer.Option(
            "-o",
            "--out-dir",
            help="Directory for the best model's files: STEM.model.json, STEM.labels.csv, "
            "STEM.convergence.csv (created if needed).",
        ),
    ] = ".",
    labels: LabelsOpt = None,
    probabilities: ProbabilitiesOpt = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the best model's document to stdout.")
    ] = False,
    plot: PlotOpt = None,
    format: FormatOpt = None,
    debug: DebugOpt = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 3 if the best model has a warning (not converged, degenerate or spike "
            "component, collapse recovery, failed restart).",
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Sweep k (and covariance types), pick the best by BIC/AIC/ICL, write its files."""
    with handled(debug):
        from emcli import io
        from emcli.bootstrap import resamples
        from emcli.render import Reporter, sweep_progress, sweep_report
        from emcli.selection import parse_covariances, parse_k

        started = time.perf_counter()
        stdout_count(
            **{"--labels -": labels == "-", "--table -": table_path == "-", "--json": json_}
        )
        n_boot = resamples(bootstrap, "--bootstrap")
        if n_boot and fit.dask is not None:
            raise UsageError(
                "--bootstrap draws resamples from rows held in this process, so it does not "
                "run with --dask; drop one of them"
            )
        k_values = parse_k(k)
        covariance_types = parse_covariances(covariance)
        method, means_path = init_choice(fit.init)
        if means_path is not None:
            raise UsageError(
                f"--init {fit.init!r}: select-k tries several k, so it cannot start from a file of "
                "means; use a method (kmeans, hc, …) or emcli fit"
            )
        default_labels, model_path, log_path = fit_paths(data, out_dir, fit)
        paths = (labels or default_labels, model_path, log_path)
        parts = is_parts_dir(labels, fit)  # Parquet part files the workers write
        labels_fmt = PARTS if parts else io.output_format(paths[0], "csv")
        table_fmt = io.output_format(table_path, "csv") if table_path is not None else None

        pictures = plot_paths(data, plot, "select-k")
        outputs = [p for p in paths if p is not None] + ([table_path] if table_path else [])
        outputs += pictures
        checked = [checked_path(paths[0], parts), *outputs[1:]]
        fmt = format.value if format is not None else None
        reporter = Reporter(quiet)
        from emcli.selection import sweep

        if fit.dask is not None and jobs > 1:
            reporter.notice(
                f"--jobs {jobs} does not apply with --dask: the cells run one after another, "
                "each fit's passes spread over the cluster's workers"
            )
            jobs = 1
        with open_input(data, fit, fmt, checked, reporter) as rows:
            n_cells = len(k_values) * len(covariance_types)
            with (
                _one_blas_thread(),
                sweep_progress(reporter, n_cells + n_boot) as on_cell,
                naming(rows.name),
            ):
                result = sweep(
                    rows.source,
                    k_values=k_values,
                    covariance_types=covariance_types,
                    criterion=criterion.value,
                    init=method,
                    try_hc=not no_hc,
                    jobs=jobs,
                    column_names=rows.columns,
                    on_cell=on_cell,
                    n_threads=os.cpu_count() or 1,
                    bootstrap=n_boot,
                    **fit.em_settings(),
                )

            best = result.best
            best_fit = best.result
            assert best_fit is not None  # the sweep never picks a failed cell
            selected_by: dict[str, object] = {
                "criterion": result.criterion,
                "k_values": list(result.k_values),
                "covariance_types": covariance_types,
                "try_hc": not no_hc,
            }
            if result.bootstrap is not None:  # the pick's share (docs/criteria.md §7)
                share = result.bootstrap.shares[result.bootstrap.cells.index(result.best_index)]
                selected_by["bootstrap"] = {
                    "resamples": result.bootstrap.n_resamples,
                    "share": float(share) if np.isfinite(share) else None,
                }
            extra: dict[str, object] = {
                "id_column": fit.id_column,
                "weights_column": fit.weights_column,
                "selected_by": selected_by,
            }
            more = []
            if table_path is not None and table_fmt is not None:
                table = io.sweep_columns(result, fit.timings)
                more.append((table_path, io.render_table(table, table_fmt)))
            more += draw_fit(best_fit, rows, data, plot, fit.seed)
            if plot is not None:
                from emcli.plots.pictures import sweep_picture

                more.append(sweep_picture(
                    result, out_dir=plot, stem=io.input_stem(data), name=rows.name
                ))
            write_fit(
                best_fit,
                rows,
                extra,
                paths,
                (labels_fmt, "csv"),
                probabilities=probabilities,
                json_=json_,
                timings=fit.timings,
                more=more,
            )
        report_warnings(reporter, best_fit, f"{rows.name} (k={best.k}, {best.covariance_type})")
        sweep_report(
            reporter,
            dataclasses.replace(result, edge_warning=flagged(result.edge_warning)),
            source=rows.name,
            n_rows=rows.n_rows,
            columns=rows.columns,
            written=[p for p in outputs if p != "-"],
            seconds=time.perf_counter() - started,
        )
        if strict:
            require_clean(best_fit, f"the best model (k={best.k}, {best.covariance_type})")

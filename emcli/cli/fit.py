"""``emcli fit``: read a table, fit one mixture, write labels, the model file and the log.

``run_fit`` and ``require_clean`` also serve ``impute -k``; ``fit_paths``, ``open_input``,
``naming`` and ``write_fit`` also serve ``select-k``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any, cast

import numpy as np
import typer

from emcli.errors import DataError, FitError, NotConvergedError, UsageError

from .app import app, handled
from .options import (
    Covariance,
    CovarianceOpt,
    DataArg,
    DebugOpt,
    FitOptions,
    FormatOpt,
    JsonOpt,
    LabelsOpt,
    LogOpt,
    ModelOpt,
    NComponentsOpt,
    OutDirOpt,
    PlotOpt,
    ProbabilitiesOpt,
    QuietOpt,
    StrictOpt,
    fit_options,
    init_choice,
    stdout_count,
)

# ``--labels DIR`` with ``--dask``: one Parquet part file per partition
PARTS = "parts"

if TYPE_CHECKING:  # pragma: no cover
    from emcli.io.outputs import AtomicOutputs
    from emcli.io.rows import OpenedRows
    from emcli.model import FitResult
    from emcli.render import Reporter
    from emcli.scoring import BlockScores


@app.command("fit")
@fit_options(after={"dtype": "format"})
def fit_command(
    data: DataArg,
    n_components: NComponentsOpt,
    covariance: CovarianceOpt = Covariance("full"),
    *,
    fit: FitOptions,
    out_dir: OutDirOpt = ".",
    labels: LabelsOpt = None,
    model: ModelOpt = None,
    log: LogOpt = None,
    probabilities: ProbabilitiesOpt = False,
    json_: JsonOpt = False,
    plot: PlotOpt = None,
    compare_kmeans: Annotated[
        bool,
        typer.Option(
            "--compare-kmeans",
            help="Also run k-means from the same start; report the adjusted Rand index, the "
            "rows that change cluster and both log-likelihoods (stderr and the model's fit block).",
        ),
    ] = False,
    format: FormatOpt = None,
    debug: DebugOpt = False,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit one mixture; write labels, the model file and the convergence log."""
    with handled(debug):
        run_fit(
            data,
            fit,
            n_components=n_components,
            covariance=covariance.value,
            out_dir=out_dir,
            labels=labels,
            model=model,
            log=log,
            probabilities=probabilities,
            json_=json_,
            fmt=format.value if format is not None else None,
            strict=strict,
            quiet=quiet,
            plot=plot,
            compare_kmeans=compare_kmeans,
        )


def run_fit(
    data: list[str],
    fit: FitOptions,
    *,
    n_components: int,
    covariance: str,
    out_dir: str,
    labels: str | None,
    model: str | None,
    log: str | None,
    probabilities: bool,
    json_: bool,
    fmt: str | None,
    strict: bool,
    quiet: bool,
    extra_outputs: Sequence[str] = (),
    stage_more: Callable[[AtomicOutputs, FitResult, OpenedRows], None] | None = None,
    stdin: Any = None,
    plot: str | None = None,
    compare_kmeans: bool = False,
) -> tuple[FitResult, OpenedRows]:
    """Read, fit, write the fit's files; ``extra_outputs`` are the caller's (``impute -k``),
    which ``stage_more`` stages with the fit's files: they are committed all or none.
    ``plot`` is a directory for the pictures."""
    from emcli import io
    from emcli.render import Reporter

    pictures = plot_paths(data, plot, "fit")

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
    method, means_path = init_choice(fit.init)
    default_labels, default_model, default_log = fit_paths(data, out_dir, fit)
    labels_path = labels or default_labels
    model_path = model or default_model
    if fit.no_log and log is not None:
        raise UsageError("--no-log and --log contradict each other; give one")
    log_path = None if fit.no_log else log or default_log
    parts = is_parts_dir(labels, fit)
    labels_fmt = PARTS if parts else io.output_format(labels_path, "csv")
    checked = checked_path(labels_path, parts)
    log_fmt = io.output_format(log_path, "csv") if log_path is not None else "csv"
    if model_path != "-" and not model_path.lower().endswith(".json") and not io.in_place(
        model_path
    ):
        raise UsageError(f"{model_path}: the model file is JSON; give it a .json name")

    reporter = Reporter(quiet)
    paths = [p for p in (labels_path, model_path, log_path) if p is not None]
    with open_input(
        data, fit, fmt, [checked, *paths[1:], *extra_outputs, *pictures], reporter, stdin
    ) as rows:
        means_init = None
        if means_path is not None:
            means_init = io.read_means(means_path, rows.columns, n_components)

        from threadpoolctl import threadpool_limits

        from emcli.fitting import fit_source

        with (
            threadpool_limits(1, user_api="blas"),
            reporter.progress(fit.n_init, fit.max_iter) as callback,
            naming(rows.name),
        ):
            result = fit_source(
                rows.source,
                n_components=n_components,
                covariance_type=covariance,
                init=method,
                means_init=means_init,
                n_threads=os.cpu_count() or 1,
                column_names=rows.columns,
                callback=callback,
                compare_kmeans=compare_kmeans,
                **fit.em_settings(),
            )

        extra: dict[str, object] = {
            "id_column": fit.id_column, "weights_column": fit.weights_column
        }
        if means_path is not None:
            extra["init_means_file"] = os.path.basename(means_path)
        counts = write_fit(
            result,
            rows,
            extra,
            (labels_path, model_path, log_path),
            (labels_fmt, log_fmt),
            probabilities=probabilities,
            json_=json_,
            timings=fit.timings,
            more=draw_fit(result, rows, data, plot, fit.seed),
            stage_more=stage_more,
        )
    written = [p for p in (*paths, *pictures) if p != "-"]
    report_warnings(reporter, result, rows.name)
    reporter.fit_summary(
        result,
        source=rows.name,
        columns=rows.columns,
        written=written,
        seconds=time.perf_counter() - started,
        counts=counts,
    )
    if strict:
        require_clean(result)
    return result, rows


def is_parts_dir(path: str | None, fit: FitOptions) -> bool:
    """Whether the output ``path`` is a directory of Parquet part files that the workers
    write: with ``--dask``, a path with a trailing slash or an existing directory."""
    return fit.dask is not None and path is not None and path != "-" and (
        path.endswith(("/", os.sep)) or os.path.isdir(path)
    )


def checked_path(path: str, parts: bool) -> str:
    """The file that ``io.check_output_paths`` checks for the output ``path``: its first
    part file when it is a directory of parts."""
    return os.path.join(path, "part-00000.parquet") if parts else path


def plot_paths(data: list[str], plot: str | None, command: str) -> list[str]:
    """The pictures ``--plot DIR`` will write (none without it); checks the plot extra first."""
    if plot is None:
        return []
    from emcli import io
    from emcli.plots import require_extra
    from emcli.plots.pictures import FIT_PICTURES, SWEEP_PICTURES, picture_paths

    require_extra("--plot")
    kinds = SWEEP_PICTURES if command == "select-k" else FIT_PICTURES
    return picture_paths(plot, io.input_stem(data), kinds)


def draw_fit(
    result: FitResult, rows: OpenedRows, data: list[str], plot: str | None, seed: int
) -> list[tuple[str, bytes]]:
    """The fit's pictures for ``--plot DIR`` (none without it), as (path, PNG bytes)."""
    if plot is None:
        return []
    from emcli import io
    from emcli.plots.pictures import fit_pictures

    return fit_pictures(
        result.params, rows.source, rows.columns, n_fit=result.n_rows - result.n_empty_rows,
        seed=seed, out_dir=plot, stem=io.input_stem(data), name=rows.name, result=result,
    )


def report_warnings(reporter: Reporter, result: FitResult, source: str) -> None:
    """Each of the fit's warnings as one stderr line, also under ``--quiet``."""
    from .app import flagged

    for message in result.warnings:
        reporter.warning(f"{source}: {flagged(message)}")


def require_clean(result: FitResult, what: str = "the fit") -> None:
    """``--strict``: exit 3 when the fit has any warning (its outputs are written)."""
    from .app import flagged

    if result.warnings:
        n = len(result.warnings)
        raise NotConvergedError(
            f"--strict: {what} has {n} warning{'s' if n > 1 else ''} (outputs were written); "
            f"first: {flagged(result.warnings[0])}"
        )


def fit_paths(data: list[str], out_dir: str, fit: FitOptions) -> tuple[str, str, str | None]:
    """The default labels, model and convergence-log paths: OUT_DIR/STEM.* (``--name``
    STEM; no log under ``--no-log``)."""
    from emcli import io

    stem = io.input_stem(data) if fit.name is None else fit.name
    if not stem or os.sep in stem or stem in (".", ".."):
        raise UsageError(f"--name {stem!r}: give a file name stem without a directory")
    return (
        os.path.join(out_dir, f"{stem}.labels.csv"),
        os.path.join(out_dir, f"{stem}.model.json"),
        None if fit.no_log else os.path.join(out_dir, f"{stem}.convergence.csv"),
    )


@contextlib.contextmanager
def open_input(
    data: list[str],
    fit: FitOptions,
    fmt: str | None,
    outputs: list[str],
    reporter: Reporter,
    stdin: Any = None,
) -> Iterator[OpenedRows]:
    """DATA as a row source (after checking that no output overwrites it), with its
    feature columns chosen; a temporary copy of CSV or stdin, or the Dask cluster of
    ``--dask``, lives as long as the context."""
    from emcli import io
    from emcli.io.rows import check_cluster_inputs, open_rows
    from emcli.sources.cluster import cluster

    from .options import memory_budget

    inputs = io.resolve_inputs(data, fmt)
    io.check_output_paths(outputs, inputs)
    if fit.dask is not None:
        check_cluster_inputs(inputs)
    budget = memory_budget(fit.max_memory)
    with cluster(fit.dask) as client, open_rows(
        inputs, **fit.column_choice(), tmp_dir=fit.tmp_dir, budget=budget, stdin=stdin,
        client=client,
    ) as rows:
        for message in rows.notices:
            if message.startswith("warning: "):  # names its input itself
                reporter.warning(message.removeprefix("warning: "))
            else:
                reporter.notice(f"{rows.name}: {message}")
        yield rows


@contextlib.contextmanager
def naming(source: str) -> Iterator[None]:
    """Prefix the core's data and fit errors with the table they are about."""
    try:
        yield
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from exc
    except FitError as exc:
        raise FitError(f"{source}: {exc}") from exc


def write_fit(
    result: FitResult,
    rows: OpenedRows,
    extra: dict[str, object],
    paths: tuple[str, str, str | None],
    formats: tuple[str, str],
    *,
    probabilities: bool,
    json_: bool,
    timings: bool = False,
    more: Sequence[tuple[str, bytes]] = (),
    stage_more: Callable[[AtomicOutputs, FitResult, OpenedRows], None] | None = None,
) -> np.ndarray:
    """Write a fit's labels, model file and convergence log (``paths``; no log when its
    path is None), all or none.

    The labels stream block by block, in input order. ``formats`` are those of
    the labels and the log (its ``seconds`` column only with ``timings``);
    ``more`` are further (path, bytes) outputs written with them, and
    ``stage_more`` stages the caller's; ``json_`` adds the model document on
    stdout. Returns how many rows each component labels.
    """
    from emcli import io
    from emcli.fitting import row_threads
    from emcli.scoring import score_blocks

    labels_path, model_path, log_path = paths
    labels_fmt, log_fmt = formats
    model_bytes = io.dumps_model(io.model_document(result, rows.columns, rows.sha256, extra))
    K = result.params.n_components
    counts = np.zeros(K, dtype=np.int64)
    id_name = rows.id_name

    def columns(block: BlockScores) -> dict[str, object]:
        return io.scores_columns(block.resp, block.log_density, block.n_observed, block.extra,
                                 id_name, probabilities, first_row=block.start + 1)

    with io.AtomicOutputs() as out, row_threads(os.cpu_count() or 1) as pmap:
        if labels_fmt == PARTS:  # written by the workers, in input order
            from emcli.sources.dask import written

            staged = written(rows.source, out.stage_dir(labels_path), columns,
                             lambda block: np.bincount(block.labels, minlength=K))
            for c in score_blocks(result.params, staged, pmap):  # each block's counts
                counts += cast(np.ndarray, c)
        else:
            table = out.stage_table(labels_path, labels_fmt)
            for block in score_blocks(result.params, rows.source, pmap):
                table.write(columns(block))
                counts += np.bincount(block.labels, minlength=K)
        out.add(model_path, model_bytes)
        if log_path is not None:
            out.add(log_path, io.render_table(io.convergence_columns(result, timings), log_fmt))
        for path, data in more:
            out.add(path, data)
        if stage_more is not None:
            stage_more(out, result, rows)
        if json_:
            out.add("-", model_bytes)
        out.commit()
    return counts

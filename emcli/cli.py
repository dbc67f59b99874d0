"""The ``emcli`` command line: parse, read, call one core function, write.

The only module that imports typer. Options shared between commands are
defined once below as ``Annotated`` aliases. Every ``EmcliError`` becomes one
stderr line ``emcli: error: …`` and its exit code (the traceback only with
``--debug``); Ctrl-C exits 130 leaving no output behind; a closed stdout pipe
ends quietly with status 0.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from . import __version__
from .errors import DataError, EmcliError, FitError, NotConvergedError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from .io import Features, InputTable
    from .model import FitResult

app = typer.Typer(
    name="emcli",
    help="Cluster tables with Gaussian mixtures fitted by EM; missing values are integrated out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Covariance(str, Enum):
    full = "full"
    diag = "diag"
    spherical = "spherical"
    tied = "tied"


class InputFormat(str, Enum):
    csv = "csv"
    tsv = "tsv"
    parquet = "parquet"


class DType(str, Enum):
    float64 = "float64"
    float32 = "float32"


INIT_HELP = (
    "Starting point: kmeans, kmeans++ (k-means++), random, random-from-data "
    "(random_from_data), hc, or a JSON/CSV file of initial means (one row per component)."
)

# ---- shared options (select-k, predict and impute reuse these) -------------------------
DataArg = Annotated[
    list[str],
    typer.Argument(
        metavar="DATA",
        help="Input: .csv, .tsv, .csv.gz, .parquet/.pq, a directory or glob of Parquet files, "
        "several paths, or - for standard input.",
        show_default=False,
    ),
]
NComponentsOpt = Annotated[
    int,
    typer.Option(
        "-k", "--n-components", min=1, help="Number of mixture components.", show_default=False
    ),
]
CovarianceOpt = Annotated[
    Covariance, typer.Option("--covariance", case_sensitive=False, help="Covariance structure.")
]
InitOpt = Annotated[str, typer.Option("--init", help=INIT_HELP)]
TolOpt = Annotated[
    float,
    typer.Option(
        "--tol", min=0.0, help="Stop when the mean per-row log-likelihood changes less than this."
    ),
]
MaxIterOpt = Annotated[int, typer.Option("--max-iter", min=0, help="Iteration cap per restart.")]
NInitOpt = Annotated[
    int, typer.Option("--n-init", min=1, help="Restarts; the best log-likelihood wins.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="One seed for everything random.")]
RegCovarOpt = Annotated[
    float,
    typer.Option(
        "--reg-covar",
        min=0.0,
        help="Added to covariance diagonals, relative to each column's variance.",
    ),
]
ColumnsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--columns",
        help="Feature columns (comma-separated or repeated); "
        "default: every numeric column except the id and weights columns.",
        show_default=False,
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude", help="Columns to leave out (comma-separated or repeated).", show_default=False
    ),
]
IdColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--id-column",
        help="Column passed through to the labels output instead of the row number.",
        show_default=False,
    ),
]
PredictIdColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--id-column",
        help="Column passed through to the labels output instead of the row number "
        "(default: the fit's id column, when the file has it).",
        show_default=False,
    ),
]
WeightsColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--weights-column", help="Column of non-negative row weights.", show_default=False
    ),
]
StandardizeOpt = Annotated[
    bool, typer.Option("--standardize", help="Fit on z-scored columns; report in original units.")
]
OutDirOpt = Annotated[
    str, typer.Option("-o", "--out-dir", help="Directory for the output files (created if needed).")
]
LabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--labels",
        help="Labels output path (.csv/.tsv/.parquet/.json/"
        ".jsonl); - for stdout. Default: OUT_DIR/STEM.labels.csv.",
        show_default=False,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model file path (.json); - for stdout. Default: OUT_DIR/STEM.model.json.",
        show_default=False,
    ),
]
LogOpt = Annotated[
    str | None,
    typer.Option(
        "--log",
        help="Convergence log path; - for stdout. Default: OUT_DIR/STEM.convergence.csv.",
        show_default=False,
    ),
]
ProbabilitiesOpt = Annotated[
    bool, typer.Option("--probabilities", help="Add one probability column p_k per component.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the model document (as in the model file) to stdout.")
]
FormatOpt = Annotated[
    InputFormat | None,
    typer.Option(
        "--format",
        case_sensitive=False,
        help="Input format when the extension does not say (stdin: csv).",
        show_default=False,
    ),
]
DTypeOpt = Annotated[
    DType,
    typer.Option(
        "--dtype", case_sensitive=False, help="Arithmetic precision (sums are always float64)."
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit 3 if the fit did not converge.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="No progress or summary on stderr.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"emcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Cluster tables with Gaussian mixtures fitted by EM; missing values are integrated out."""


# ---- errors, interrupts, pipes ----------------------------------------------------------


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _stderr_line(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


@contextlib.contextmanager
def _handled(debug: bool) -> Iterator[None]:
    """Turn emcli's errors into one stderr line and an exit code."""
    try:
        yield
    except EmcliError as exc:
        if debug:
            traceback.print_exc()
        _stderr_line(f"emcli: error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        _stderr_line("emcli: interrupted; no output written")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        _quiet_stdout()
        raise typer.Exit(0) from None
    except MemoryError:
        if debug:
            traceback.print_exc()
        _stderr_line(
            "emcli: error: out of memory; use fewer rows, columns or components, or --dtype float32"
        )
        raise typer.Exit(1) from None
    except Exception as exc:  # a bug, not a user error: still one line unless --debug
        if debug:
            traceback.print_exc()
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        _stderr_line(
            f"emcli: error: internal error ({type(exc).__name__}: {detail}); "
            "rerun with --debug and report the traceback"
        )
        raise typer.Exit(1) from None


def _stdout_count(**targets: bool) -> None:
    on = [name for name, used in targets.items() if used]
    if len(on) > 1:
        raise UsageError(
            f"{' and '.join(on)} would both write to stdout; send at most one output to stdout"
        )


def _init_choice(init: str) -> tuple[str, str | None]:
    """(method, None) for a method name, ("kmeans", path) for a file of means."""
    from .init import ALIASES, INIT_METHODS

    name = ALIASES.get(init, init)
    if name in INIT_METHODS:
        return name, None
    if os.path.isfile(init):
        return "kmeans", init
    raise UsageError(
        f"--init {init!r} is neither a method ({', '.join(INIT_METHODS)}) nor an existing file "
        "of initial means"
    )


# ---- commands -----------------------------------------------------------------------------


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
    with _handled(debug):
        _fit(
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


def _fit(
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
    from . import io
    from .render import Reporter

    started = time.perf_counter()
    _stdout_count(
        **{
            "--labels -": labels == "-",
            "--model -": model == "-",
            "--log -": log == "-",
            "--json": json_,
            "--output -": "-" in extra_outputs,
        }
    )
    method, means_path = _init_choice(init)
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

    from .fitting import fit_mixture

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


# ---- select-k ----


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
    with _handled(debug):
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
    from . import io
    from .render import Reporter, sweep_progress, sweep_report
    from .selection import parse_covariances, parse_k

    started = time.perf_counter()
    _stdout_count(**{"--table -": table_path == "-", "--json": json_})
    k_values = parse_k(k_spec)
    covariance_types = parse_covariances(covariance_spec)
    method, means_path = _init_choice(init)
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

    from .selection import sweep

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


# ---- predict, impute, sample, describe ----

ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Model file (.json) written by emcli fit or select-k.",
        show_default=False,
    ),
]
PredictLabelsOpt = Annotated[
    str,
    typer.Option(
        "--labels", help="Labels output path (.csv/.tsv/.parquet/.json/.jsonl); - for stdout."
    ),
]
OutputOpt = Annotated[
    str,
    typer.Option(
        "-o", "--output", help="Output path (.csv/.tsv/.parquet/.json/.jsonl); - for stdout (CSV)."
    ),
]
VarianceOpt = Annotated[
    bool,
    typer.Option(
        "--variance", help="Add <column>_var: the conditional variance (0 for observed cells)."
    ),
]
ImputeKOpt = Annotated[
    int | None,
    typer.Option(
        "-k",
        "--n-components",
        min=1,
        help="Fit a mixture with this many components first (then DATA only, no MODEL).",
        show_default=False,
    ),
]
FitOutDirOpt = Annotated[
    str, typer.Option("--out-dir", help="With -k: directory for the fit's files.")
]
NSamplesOpt = Annotated[
    int,
    typer.Option("-n", "--n-samples", min=1, help="Number of rows to draw.", show_default=False),
]
DescribeJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the model document (validated) to stdout.")
]

# impute's options that only make sense with -k (a fit first)
_IMPUTE_FIT_ONLY = (
    "covariance", "init", "tol", "max_iter", "n_init", "seed", "reg_covar", "columns",
    "exclude", "id_column", "weights_column", "standardize", "out_dir", "labels", "model",
    "log", "probabilities", "json_", "dtype", "strict",
)  # fmt: skip


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
    with _handled(debug):
        from . import io
        from .fitting import score_rows
        from .render import Reporter, apply_summary

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


@app.command("impute")
def impute_command(
    ctx: typer.Context,
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="[MODEL] DATA",
            help="MODEL then DATA; or, with -k, DATA only (fitted first). "
            "DATA as for fit: files, a directory or glob of Parquet files, or -.",
            show_default=False,
        ),
    ],
    n_components: ImputeKOpt = None,
    output: OutputOpt = "-",
    variance: VarianceOpt = False,
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
    out_dir: FitOutDirOpt = ".",
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
    """Fill every missing cell of the model's columns with E[x_missing | x_observed]."""
    with _handled(debug):
        from . import io
        from .fitting import impute_rows
        from .render import Reporter, apply_summary

        started = time.perf_counter()
        fmt = format.value if format is not None else None
        out_fmt = io.output_format(output, "csv")
        fit = None
        if n_components is None:
            given = [
                "--" + name.rstrip("_").replace("_", "-")
                for name in _IMPUTE_FIT_ONLY
                if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
            ]
            if given:
                raise UsageError(
                    f"{given[0]} is a fit option: give -k K and DATA only to fit first, "
                    "or leave it out to impute with MODEL"
                )
            if len(paths) < 2:
                raise UsageError(
                    "impute needs MODEL DATA (a model file, then the data), "
                    "or DATA -k K to fit first"
                )
            model_path, data = paths[0], paths[1:]
            loaded = io.load_model(model_path)
            inputs = io.resolve_inputs(data, fmt)
            io.check_output_paths([output], [*inputs, io.InputFile(model_path, "json")])
            table = io.read_table(inputs)
            feats = io.model_features(table, loaded.columns)
            params, feature_names = loaded.params, loaded.columns
        else:
            if paths[0].lower().endswith(".json"):
                raise UsageError(
                    f"{paths[0]}: with -k, impute fits first and takes DATA only; "
                    "leave out -k to impute with a model file"
                )
            fit, table, feats = _fit(
                paths,
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
                fmt=fmt,
                dtype=dtype.value,
                strict=False,
                quiet=quiet,
                extra_outputs=[output],
            )
            params, feature_names = fit.params, feats.columns
        filled, var = impute_rows(params, feats.X)
        cols = io.imputed_columns(table, feature_names, filled, var if variance else None)
        with io.AtomicOutputs() as out:
            out.add(output, io.render_table(cols, out_fmt))
            out.commit()
        n_observed = io.observed_counts(feats.X)
        apply_summary(
            Reporter(quiet),
            "imputed",
            source=table.name,
            n_rows=table.n_rows,
            n_empty=int((n_observed == 0).sum()),
            n_filled=int(feats.X.size - n_observed.sum()),
            columns=feature_names,
            written=output,
            seconds=time.perf_counter() - started,
        )
        if strict and fit is not None and not fit.converged:
            raise NotConvergedError(
                f"the fit did not converge in {max_iter} iterations (outputs were written); "
                "raise --max-iter or --tol"
            )


@app.command("sample")
def sample_command(
    model: ModelArg,
    n_samples: NSamplesOpt,
    seed: SeedOpt = 0,
    output: OutputOpt = "-",
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Draw synthetic rows from a model, with the component each came from."""
    with _handled(debug):
        import numpy as np

        from . import io
        from .fitting import sample_mixture
        from .render import Reporter, apply_summary

        started = time.perf_counter()
        out_fmt = io.output_format(output, "csv")
        loaded = io.load_model(model)
        io.check_output_paths([output], [io.InputFile(model, "json")])
        rng = np.random.default_rng(seed)
        X, components = sample_mixture(loaded.params, n_samples, rng)
        order = rng.permutation(n_samples)  # drawn in component order; shuffle the rows
        cols = io.sample_columns(loaded.columns, X[order], components[order])
        with io.AtomicOutputs() as out:
            out.add(output, io.render_table(cols, out_fmt))
            out.commit()
        apply_summary(
            Reporter(quiet),
            "sampled",
            source=model,
            n_rows=n_samples,
            labels=components,
            n_components=loaded.params.n_components,
            written=output,
            seconds=time.perf_counter() - started,
        )


@app.command("describe")
def describe_command(
    model: ModelArg,
    json_: DescribeJsonOpt = False,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show a model's weights, means, covariances and fit statistics (tables on stderr)."""
    with _handled(debug):
        from . import io
        from .render import Reporter, describe_model

        loaded = io.load_model(model)
        if not quiet:
            describe_model(Reporter(quiet).console, loaded, source=model)
        if json_:
            with io.AtomicOutputs() as out:
                out.add("-", io.dumps_model(loaded.document))
                out.commit()


def main() -> None:
    """Entry point of the ``emcli`` script."""
    try:
        app(prog_name="emcli")
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(0)
    except KeyboardInterrupt:
        _stderr_line("emcli: interrupted")
        sys.exit(130)

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
from collections.abc import Iterator
from enum import Enum
from typing import Annotated

import typer

from . import __version__
from .errors import DataError, EmcliError, FitError, NotConvergedError, UsageError

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
) -> None:
    from . import io
    from .render import Reporter

    started = time.perf_counter()
    _stdout_count(
        **{
            "--labels -": labels == "-",
            "--model -": model == "-",
            "--log -": log == "-",
            "--json": json_,
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
    io.check_output_paths([labels_path, model_path, log_path], inputs)
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

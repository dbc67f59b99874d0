"""Options shared between the ``emcli`` commands, each defined once.

Single options are ``Annotated`` aliases (``DataArg``, ``QuietOpt``, …) that a
command names in its signature. The fit settings that ``fit``, ``select-k``
and ``impute -k`` share form one group: the dataclass ``FitOptions``, one
field per option, whose annotation is the Typer option and whose default is
the option's default. A command takes the whole group as one parameter
annotated ``FitOptions`` and decorated with ``@fit_options()``: the decorator
rewrites the command's ``__signature__`` so that Typer sees the group's
options in that parameter's place (sqlite-utils' ``output_options`` style),
and on each call collects their values into one ``FitOptions``, passed on to
the core (``em_settings()`` are the keyword arguments of ``fit_mixture`` and
``sweep``). A new fit option is therefore one new field of ``FitOptions``
(which the core's ``fit_mixture`` and ``sweep`` accept as a keyword): it then
shows in all three commands, and ``impute`` refuses it without ``-k``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from emcli.covariance import ALIASES, ORDER
from emcli.errors import UsageError

# mclust's fourteen models, and emcli's earlier names for four of them
Covariance = Enum(  # type: ignore[misc]
    "Covariance", {name: name for name in (*ALIASES, *ORDER)}, type=str
)


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
    Covariance,
    typer.Option(
        "--covariance",
        case_sensitive=False,
        help="Covariance model: one of mclust's fourteen (EII … VVV), or full (= VVV), "
        "diag (= VVI), spherical (= VII), tied (= EEE).",
    ),
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
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="Bound on what emcli holds (512MB, 4GB, 2GiB; default: half the memory available). "
        "Rows stay in memory when they fit, else every pass streams from the input.",
    ),
]
TmpDirOpt = Annotated[
    str | None,
    typer.Option(
        "--tmp-dir",
        metavar="DIR",
        help="Where CSV, TSV and standard input are converted to a columnar file that later "
        "passes read (default: the system's temporary directory); removed on exit.",
    ),
]
TimingsOpt = Annotated[
    bool,
    typer.Option(
        "--timings",
        help="Add the seconds column to the convergence log (and the sweep table); "
        "without it the same data and seed give the same bytes.",
    ),
]
NoLogOpt = Annotated[bool, typer.Option("--no-log", help="Do not write the convergence log.")]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        metavar="STEM",
        help="Stem of the default output names (OUT_DIR/STEM.labels.csv, …); "
        "default: the input's name, stdin for -.",
    ),
]
DaskOpt = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="ADDRESS",
        help="Run on a Dask cluster: a scheduler address (tcp://host:8786), or local / local:N "
        "for N worker processes on this machine. The workers read the input files "
        "themselves. Needs pip install 'emcli[dask]'.",
        show_default=False,
    ),
]
PlotOpt = Annotated[
    str | None,
    typer.Option(
        "--plot",
        metavar="DIR",
        help="Also write PNG pictures (clusters, uncertainty, convergence) to DIR; "
        "needs the plot extra: pip install 'emcli[plot]'.",
        show_default=False,
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Exit 3 if the fit has a warning (not converged, degenerate or spike component, "
        "collapse recovery, failed restart); the outputs are still written.",
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option("-q", "--quiet", help="No progress or summary on stderr (warnings still show)."),
]
ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Model file (.json) written by emcli fit or select-k.",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    str,
    typer.Option(
        "-o", "--output", help="Output path (.csv/.tsv/.parquet/.json/.jsonl); - for stdout (CSV)."
    ),
]


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """The fit settings, as the user gave them; enum options keep their enum until used."""

    init: InitOpt = "kmeans"
    tol: TolOpt = 1e-3
    max_iter: MaxIterOpt = 200
    n_init: NInitOpt = 1
    seed: SeedOpt = 0
    reg_covar: RegCovarOpt = 1e-6
    columns: ColumnsOpt = None
    exclude: ExcludeOpt = None
    id_column: IdColumnOpt = None
    weights_column: WeightsColumnOpt = None
    standardize: StandardizeOpt = False
    dtype: DTypeOpt = DType.float64
    max_memory: MaxMemoryOpt = None
    tmp_dir: TmpDirOpt = None
    timings: TimingsOpt = False
    no_log: NoLogOpt = False
    name: NameOpt = None
    dask: DaskOpt = None

    # These fields go to io.select_features; init (a method or a file of means) to
    # init_choice; tmp_dir to the reader, dask to the cluster it reads on; timings,
    # no_log and name to the writers; max_memory, in bytes, and every other field, as
    # it is, to fit_mixture and sweep (em_settings).
    COLUMN_CHOICE = ("columns", "exclude", "id_column", "weights_column")
    READING = ("tmp_dir", "dask")
    WRITING = ("timings", "no_log", "name")

    def column_choice(self) -> dict[str, Any]:
        """The keyword arguments of ``io.select_features``."""
        return {name: getattr(self, name) for name in self.COLUMN_CHOICE}

    def em_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``fit_mixture`` and ``sweep``: the other fields but init."""
        out = {
            field.name: _plain(getattr(self, field.name))
            for field in dataclasses.fields(self)
            if field.name != "init"
            and field.name not in self.COLUMN_CHOICE + self.READING + self.WRITING
        }
        out["max_memory"] = memory_budget(self.max_memory)
        return out


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes from ``512MB``, ``4GB``, ``2GiB``, ``1e9`` (decimal units, or binary with i)."""
    t = text.strip().lower().replace(" ", "")
    number = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = float("nan")
    if unit not in _UNITS or not value > 0 or value == float("inf"):
        raise UsageError(
            f"--max-memory {text!r}: give a size like 512MB, 4GB or 2GiB"
        )
    return int(value * _UNITS[unit])


def available_memory() -> int:
    """Memory the system can give now (MemAvailable), or its physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def memory_budget(text: str | None) -> int:
    """``--max-memory`` in bytes; by default half the memory available."""
    return parse_size(text) if text is not None else available_memory() // 2


def _plain(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


Command = TypeVar("Command", bound=Callable[..., Any])


def fit_options(
    *, after: Mapping[str, str] | None = None, **defaults: object
) -> Callable[[Command], Command]:
    """Give the command's ``FitOptions`` parameter as the group of options it stands for.

    The options appear, in field order, where that parameter stands, except those
    ``after`` moves behind another of the command's parameters (``{"dtype": "format"}``);
    ``defaults`` overrides fields' defaults for this command (``tol=1e-5``).
    """
    moved = dict(after or {})
    hints = get_type_hints(FitOptions, include_extras=True)
    group = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=defaults.get(field.name, field.default),
            annotation=hints[field.name],
        )
        for field in dataclasses.fields(FitOptions)
    ]

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        [slot] = [p.name for p in signature.parameters.values() if p.annotation is FitOptions]
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name == slot:
                parameters += [p for p in group if p.name not in moved]
            else:  # keyword-only: Typer passes keywords, and defaults may now precede non-defaults
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            parameters += [p for p in group if moved.get(p.name) == parameter.name]
        if len(parameters) != len(signature.parameters) - 1 + len(group):
            raise TypeError(f"{command.__name__}: fit_options(after={moved}) names no parameter")

        @functools.wraps(command)
        def with_group(**kwargs: Any) -> Any:
            values = {p.name: kwargs.pop(p.name) for p in group}
            return command(**kwargs, **{slot: FitOptions(**values)})

        with_group.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return with_group  # type: ignore[return-value]

    return decorate


def stdout_count(**targets: bool) -> None:
    on = [name for name, used in targets.items() if used]
    if len(on) > 1:
        raise UsageError(
            f"{' and '.join(on)} would both write to stdout; send at most one output to stdout"
        )


def init_choice(init: str) -> tuple[str, str | None]:
    """(method, None) for a method name, ("kmeans", path) for a file of means."""
    from emcli.init import ALIASES, INIT_METHODS

    name = ALIASES.get(init, init)
    if name in INIT_METHODS:
        return name, None
    if os.path.isfile(init):
        return "kmeans", init
    raise UsageError(
        f"--init {init!r} is neither a method ({', '.join(INIT_METHODS)}) nor an existing file "
        "of initial means"
    )

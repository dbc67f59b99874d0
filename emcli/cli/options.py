"""Options shared between the ``emcli`` commands, defined once as ``Annotated`` aliases."""

from __future__ import annotations

import os
from enum import Enum
from typing import Annotated

import typer

from emcli.errors import UsageError


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

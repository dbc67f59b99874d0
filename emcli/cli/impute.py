"""``emcli impute``: fill missing cells with their conditional means, from a model or a new fit."""

from __future__ import annotations

import io as stdio
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

from emcli.errors import UsageError

from .app import app, handled
from .fit import PARTS, checked_path, is_parts_dir, require_clean, run_fit
from .options import (
    Covariance,
    CovarianceOpt,
    DebugOpt,
    FitOptions,
    FormatOpt,
    JsonOpt,
    LabelsOpt,
    LogOpt,
    ModelOpt,
    OutputOpt,
    ProbabilitiesOpt,
    QuietOpt,
    StrictOpt,
    fit_options,
)

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
# impute's own parameters; every other option belongs to the fit and needs -k
_IMPUTE_OWN = ("paths", "n_components", "output", "variance", "format", "max_memory", "tmp_dir",
               "dask", "debug", "quiet")

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from emcli.io import AtomicOutputs, InputFile
    from emcli.io.rows import OpenedRows
    from emcli.model import FitResult, GMMParams
    from emcli.sources import Block

T = TypeVar("T")


@app.command("impute")
@fit_options(after={"dtype": "format"})
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
    covariance: CovarianceOpt = Covariance("full"),
    *,
    fit: FitOptions,
    out_dir: FitOutDirOpt = ".",
    labels: LabelsOpt = None,
    model: ModelOpt = None,
    log: LogOpt = None,
    probabilities: ProbabilitiesOpt = False,
    json_: JsonOpt = False,
    format: FormatOpt = None,
    debug: DebugOpt = False,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fill every missing cell of the model's columns with E[x_missing | x_observed]."""
    from emcli.sources.cluster import cluster

    with handled(debug), cluster(fit.dask) as client:  # one cluster for the fit and the rows
        from emcli import io
        from emcli.render import Reporter, apply_summary

        from .options import memory_budget

        started = time.perf_counter()
        fmt = format.value if format is not None else None
        parts = is_parts_dir(output, fit)  # Parquet part files the workers write
        out_fmt = PARTS if parts else io.output_format(output, "csv")
        checked = checked_path(output, parts)
        budget = memory_budget(fit.max_memory)
        done: dict[str, Any] = {}
        fitted: FitResult | None = None
        if n_components is None:
            given = [
                max(param.opts, key=len)
                for param in ctx.command.params
                if param.name not in _IMPUTE_OWN
                and getattr(ctx.get_parameter_source(param.name), "name", "") == "COMMANDLINE"
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
            io.check_output_paths([checked], [*inputs, io.InputFile(model_path, "json")])
            with io.AtomicOutputs() as out:
                done = stage_imputed(out, loaded.params, inputs, loaded.columns, output, out_fmt,
                                     variance, fit.tmp_dir, budget, client=client)
                out.commit()
        else:
            if paths[0].lower().endswith(".json"):
                raise UsageError(
                    f"{paths[0]}: with -k, impute fits first and takes DATA only; "
                    "leave out -k to impute with a model file"
                )
            # the rows are read twice (to fit, then to impute): standard input is kept
            stdin = stdio.BytesIO(sys.stdin.buffer.read()) if "-" in paths else None
            inputs = io.resolve_inputs(paths, fmt)

            def stage(out: AtomicOutputs, result: FitResult, rows: OpenedRows) -> None:
                if stdin is not None:
                    stdin.seek(0)
                done.update(stage_imputed(out, result.params, inputs, rows.columns, output,
                                          out_fmt, variance, fit.tmp_dir, budget, stdin,
                                          client))

            # the fit's files and the imputed table are committed together, all or none
            fitted, _ = run_fit(
                paths,
                fit,
                n_components=n_components,
                covariance=covariance.value,
                out_dir=out_dir,
                labels=labels,
                model=model,
                log=log,
                probabilities=probabilities,
                json_=json_,
                fmt=fmt,
                strict=False,
                quiet=quiet,
                extra_outputs=[checked],
                stage_more=stage,
                stdin=stdin,
            )
        apply_summary(
            Reporter(quiet),
            "imputed",
            written=output,
            seconds=time.perf_counter() - started,
            **done,
        )
        if strict and fitted is not None:
            require_clean(fitted)


def stage_imputed(
    out: AtomicOutputs,
    params: GMMParams,
    inputs: list[InputFile],
    feature_names: list[str],
    output: str,
    out_fmt: str,
    variance: bool,
    tmp_dir: str | None,
    budget: int,
    stdin: Any = None,
    client: Any = None,
) -> dict[str, Any]:
    """Stage the imputed table of ``inputs`` in ``out``, a block at a time in input order
    (every input column passed through), filled where the rows are (a Dask ``client``'s
    workers, or here); returns what the summary reports. ``out_fmt`` ``PARTS``: the
    workers write it to the directory ``output`` as Parquet part files."""
    from emcli import io
    from emcli.io.rows import open_model_rows
    from emcli.scoring import impute_rows

    def fill(block: Block) -> tuple[Block, tuple[np.ndarray, np.ndarray]]:
        return block, impute_rows(params, block.X)

    def columns(result: tuple[Block, tuple[np.ndarray, np.ndarray]]) -> dict[str, object]:
        block, (filled, var) = result
        return io.imputed_columns(block.extra, feature_names, filled, var if variance else None)

    def tally(result: tuple[Block, Any]) -> tuple[int, int]:  # rows empty, cells filled
        X = result[0].X
        n_observed = io.observed_counts(X)
        return int((n_observed == 0).sum()), int(X.size - n_observed.sum())

    n_empty = n_filled = 0
    with open_model_rows(inputs, feature_names, passthrough=True, tmp_dir=tmp_dir,
                         budget=budget, stdin=stdin, client=client) as rows:
        if out_fmt == PARTS:  # written by the workers, in input order
            from emcli.sources.dask import written

            staged = written(rows.source, out.stage_dir(output), columns, tally)
            tallies = cast(Iterator[tuple[int, int]], staged.each(fill))  # each block's tally
        else:
            tallies = _written_here(out.stage_table(output, out_fmt), rows.source.each(fill),
                                    columns, tally)
        for empty, filled in tallies:
            n_empty += empty
            n_filled += filled
    return {"source": rows.name, "n_rows": rows.n_rows, "n_empty": n_empty,
            "n_filled": n_filled, "columns": feature_names}


def _written_here(table: Any, results: Iterator[T], columns: Callable[[T], dict[str, object]],
                  tally: Callable[[T], tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Write each result's columns to ``table`` here; yield its tally."""
    for result in results:
        table.write(columns(result))
        yield tally(result)

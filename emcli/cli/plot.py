"""``emcli plot``: the pictures of a saved model over a table (and its convergence log)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from emcli.errors import DataError

from .app import app, handled
from .options import (
    DataArg,
    DebugOpt,
    FormatOpt,
    MaxMemoryOpt,
    ModelArg,
    QuietOpt,
    SeedOpt,
    TmpDirOpt,
    memory_budget,
)


@app.command("plot")
def plot_command(
    model: ModelArg,
    data: DataArg,
    out_dir: Annotated[
        str, typer.Option("-o", "--out-dir", help="Directory for the PNGs (created if needed).")
    ] = ".",
    log: Annotated[
        str | None,
        typer.Option("--log", metavar="FILE",
                     help="The fit's convergence log (.csv), to draw the convergence picture.",
                     show_default=False),
    ] = None,
    seed: SeedOpt = 0,
    format: FormatOpt = None,
    max_memory: MaxMemoryOpt = None,
    tmp_dir: TmpDirOpt = None,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Draw a saved model's clusters and uncertainty over DATA as PNGs (needs emcli[plot])."""
    with handled(debug):
        from emcli.plots import require_extra

        require_extra("emcli plot")
        from emcli import io
        from emcli.io.rows import open_model_rows
        from emcli.plots.pictures import FIT_PICTURES, fit_pictures, picture_paths
        from emcli.render import Reporter

        started = time.perf_counter()
        loaded = io.load_model(model)
        inputs = io.resolve_inputs(data, format.value if format is not None else None)
        stem = io.input_stem(data)
        kinds = FIT_PICTURES if log is not None else FIT_PICTURES[:2]
        paths = picture_paths(out_dir, stem, kinds)
        io.check_output_paths(paths, [*inputs, io.InputFile(model, "json")])
        result = _logged_fit(loaded, log) if log is not None else None
        with (
            open_model_rows(inputs, loaded.columns, tmp_dir=tmp_dir,
                            budget=memory_budget(max_memory)) as rows,
            io.AtomicOutputs() as out,
        ):
            try:
                pictures = fit_pictures(
                    loaded.params, rows.source, loaded.columns, n_fit=rows.n_rows, seed=seed,
                    out_dir=out_dir, stem=stem, name=rows.name, result=result,
                )
            except DataError as exc:
                raise DataError(f"{rows.name}: {exc}") from exc
            for path, png in pictures:
                out.add(path, png)
            out.commit()
        reporter = Reporter(quiet)
        if not quiet:
            seconds = time.perf_counter() - started
            reporter.console.print(
                f"wrote {', '.join(p for p, _ in pictures)} ({seconds:.2f} s)", markup=False
            )


def _logged_fit(loaded, log: str):
    """A ``FitResult`` carrying the convergence log's history, for the convergence picture."""
    import dataclasses

    import numpy as np

    from emcli import io
    from emcli.model import FitResult, IterationRecord

    table = io.read_table(io.resolve_inputs([log])).table
    need = {"init", "iter", "log_likelihood", "event"}
    if not need <= set(table.column_names):
        raise DataError(
            f"{log}: not a convergence log (it needs the columns {', '.join(sorted(need))})"
        )
    cols = {name: table.column(name).to_pylist() for name in need}
    history = tuple(
        IterationRecord(int(r), int(i), float("nan") if ll is None else float(ll), 0.0, 0.0, 0.0,
                        e or "")
        for r, i, ll, e in zip(cols["init"], cols["iter"], cols["log_likelihood"], cols["event"],
                               strict=True)
    )
    fit = loaded.fit
    fields: dict[str, Any] = {f.name: None for f in dataclasses.fields(FitResult)}
    fields.update(
        params=loaded.params, history=history, converged=bool(fit.get("converged", True)),
        n_iter=int(fit.get("n_iter", 0)), best_restart=int(fit.get("best_restart", 0)),
        log_likelihood=float(fit.get("log_likelihood") or np.nan),
    )
    return FitResult(**fields)

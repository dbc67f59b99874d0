"""``emcli sample``: draw synthetic rows from a model."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from .app import app, handled
from .options import DebugOpt, ModelArg, OutputOpt, QuietOpt, SeedOpt

NSamplesOpt = Annotated[
    int,
    typer.Option("-n", "--n-samples", min=1, help="Number of rows to draw.", show_default=False),
]


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
    with handled(debug):
        import numpy as np

        from emcli import io
        from emcli.render import Reporter, apply_summary
        from emcli.scoring import sample_mixture

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

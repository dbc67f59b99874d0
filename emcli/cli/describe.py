"""``emcli describe``: a model's weights, means, covariances and fit statistics."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app, handled
from .options import DebugOpt, ModelArg, QuietOpt

DescribeJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the model document (validated) to stdout.")
]


@app.command("describe")
def describe_command(
    model: ModelArg,
    json_: DescribeJsonOpt = False,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show a model's weights, means, covariances and fit statistics (tables on stderr)."""
    with handled(debug):
        from emcli import io
        from emcli.render import Reporter, describe_model

        loaded = io.load_model(model)
        if not quiet:
            describe_model(Reporter(quiet).console, loaded, source=model)
        if json_:
            with io.AtomicOutputs() as out:
                out.add("-", io.dumps_model(loaded.document))
                out.commit()

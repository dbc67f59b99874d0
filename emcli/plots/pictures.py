"""Which pictures a command writes, and their file names (PNG bytes; no file is written here).

``fit_pictures`` gives ``STEM.clusters.png``, ``STEM.uncertainty.png`` and,
when the fit's history is known, ``STEM.convergence.png``; ``select-k`` adds
``STEM.criterion.png`` (``sweep_picture``). The callers commit them with
their other outputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from emcli.model import FitResult, GMMParams, SweepResult
from emcli.sources import RowSource

FIT_PICTURES = ("clusters", "uncertainty", "convergence")
SWEEP_PICTURES = (*FIT_PICTURES, "criterion")


def picture_paths(out_dir: str, stem: str, kinds: Sequence[str]) -> list[str]:
    """``OUT_DIR/STEM.KIND.png`` for each kind: what a command checks before it starts."""
    return [os.path.join(out_dir, f"{stem}.{kind}.png") for kind in kinds]


def fit_pictures(
    params: GMMParams,
    source: RowSource,
    columns: Sequence[str],
    *,
    n_fit: int,
    seed: int,
    out_dir: str,
    stem: str,
    name: str,
    result: FitResult | None = None,
) -> list[tuple[str, bytes]]:
    """The clusters and uncertainty pictures (and the convergence one, given ``result``)."""
    from .data import plot_points
    from .figures import clusters_png, convergence_png, uncertainty_png

    K = params.n_components
    points = plot_points(params, source, n_fit, seed)
    what = f"{name}: k={K}, {params.covariance_type} covariances"
    clusters, uncertainty, convergence = picture_paths(out_dir, stem, FIT_PICTURES)
    out = [
        (clusters, clusters_png(params, points, columns, seed, f"Clusters of {what}")),
        (uncertainty,
         uncertainty_png(points, K, seed, f"Uncertainty and log-density, {what}")),
    ]
    if result is not None and result.history:
        out.append((convergence, convergence_png(result, f"Convergence of EM, {what}")))
    return out


def sweep_picture(result: SweepResult, *, out_dir: str, stem: str, name: str) -> tuple[str, bytes]:
    from .figures import criterion_png

    title = f"{result.criterion.upper()} against k, {name}"
    [path] = picture_paths(out_dir, stem, ["criterion"])
    return path, criterion_png(result, title)

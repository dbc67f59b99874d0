"""What the pictures show, computed from a mixture's parameters and rows (numpy only).

``plot_points`` draws at most ``MAX_POINTS`` rows with the seed (one pass
over the rows, ``init.draw_sample``), scores them and puts every row with a
missing coordinate at its conditional mean (``fitting.impute_rows``).
``principal_axes`` projects on the mixture's principal axes, from the
parameters alone; ``ellipse`` and ``component_densities`` give the shapes
drawn over the points (docs/pictures.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emcli.init import draw_sample, seed_key
from emcli.model import GMMParams
from emcli.scoring import impute_rows, score_rows
from emcli.sources import FitRows, RowSource, Units

MAX_POINTS = 50_000  # rows drawn in a picture
PICTURE_KEY = 7  # seed_key(seed, PICTURE_KEY): the picture's sample, apart from the starts'


@dataclass(frozen=True)
class PlotPoints:
    """The rows a picture draws (in input order) and what the mixture says of them."""

    X: np.ndarray  # (m, d) the rows, NaN = missing
    filled: np.ndarray  # (m, d) missing cells at their conditional means
    labels: np.ndarray  # (m,)
    uncertainty: np.ndarray  # (m,) 1 - the largest responsibility
    log_density: np.ndarray  # (m,)
    n_rows: int  # rows with something observed, of which these were drawn

    @property
    def sampled(self) -> bool:
        return self.X.shape[0] < self.n_rows

    @property
    def missing(self) -> np.ndarray:
        return np.isnan(self.X)


def plot_points(
    params: GMMParams, source: RowSource, n_fit: int, seed: int, limit: int = MAX_POINTS
) -> PlotPoints:
    """At most ``limit`` of the ``n_fit`` rows with something observed, drawn with ``seed``."""
    rows = FitRows(source, Units(np.zeros(params.n_features), None, np.float64), keep=False)
    sample = draw_sample(rows, limit, seed_key(seed, PICTURE_KEY), n_fit, float(n_fit), False)
    X = sample.X
    resp, log_density = score_rows(params, X)
    filled, _ = impute_rows(params, X)
    return PlotPoints(
        X=X,
        filled=filled,
        labels=np.argmax(resp, axis=1),
        uncertainty=1.0 - resp.max(axis=1),
        log_density=log_density,
        n_rows=max(int(n_fit), X.shape[0]),
    )


def mixture_covariance(params: GMMParams) -> tuple[np.ndarray, np.ndarray]:
    """The mixture's mean and covariance: ``Σ_k w_k (Σ_k + μ_k μ_kᵀ) − μ μᵀ``."""
    w, mu = params.weights, params.means
    m = w @ mu
    second = np.einsum("k,kij->ij", w, params.full_covariances()) + (mu.T * w) @ mu
    return m, second - np.outer(m, m)


def principal_axes(params: GMMParams, n_axes: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mixture's centre, its ``n_axes`` principal axes (columns) and the share of
    variance each explains; signs fixed so each axis's largest loading is positive."""
    m, cov = mixture_covariance(params)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:n_axes]
    axes = vectors[:, order]
    flip = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    axes = axes * np.where(flip == 0, 1.0, flip)
    return m, axes, values[order] / max(values.sum(), 1e-300)


def ellipse(cov2: np.ndarray, n_sigma: float) -> tuple[float, float, float]:
    """Width, height and angle (degrees) of the ``n_sigma`` contour of a 2×2 covariance."""
    values, vectors = np.linalg.eigh(cov2)
    values = np.maximum(values, 0.0)
    angle = float(np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1])))
    return 2 * n_sigma * float(np.sqrt(values[1])), 2 * n_sigma * float(np.sqrt(values[0])), angle


def component_densities(params: GMMParams, j: int, grid: np.ndarray) -> np.ndarray:
    """``w_k N(x; μ_kj, Σ_kjj)`` on ``grid`` for each component: shape (K, len(grid))."""
    var = params.full_covariances()[:, j, j]
    mu = params.means[:, j]
    z = (grid[None, :] - mu[:, None]) ** 2 / var[:, None]
    return params.weights[:, None] * np.exp(-0.5 * z) / np.sqrt(2 * np.pi * var[:, None])

"""Image segmentation by pixel colour: features, the fitted sample, every pixel labelled.

Pixels are rows: their colour (sRGB scaled to 0–255, or CIE L*a*b*, docs/segment.md)
and, with ``spatial``, their coordinates. Transparent pixels are missing: they
are no rows at all, left out of the fit, and get no label (-1). The mixture is fitted on at most
``MAX_FIT_PIXELS`` visible pixels drawn with the seed (one k, or a BIC sweep
over several with ``selection.sweep``); then every pixel is labelled, a chunk of
rows at a time, so memory stays near the image's own size. numpy only; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError, UsageError
from .fitting import fit_mixture
from .model import FitResult, GMMParams, SweepResult
from .scoring import score_rows
from .selection import sweep

MAX_FIT_PIXELS = 250_000
LABEL_ROWS = 256  # image rows labelled at a time
COLOR_SPACES = ("rgb", "lab")
COLOR_COLUMNS = {"rgb": ("red", "green", "blue"), "lab": ("L", "a", "b")}
SPATIAL_SPAN = 100.0  # the longest side spans SPATIAL_SPAN × W in the coordinate columns

# sRGB (D65) to CIE XYZ, and the D65 white point (docs/segment.md §2)
_RGB_TO_XYZ = np.array([
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of sRGB colours in [0, 1], over the last axis."""
    c = np.asarray(rgb, dtype=np.float64)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    t = (linear @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(t > _DELTA**3, np.cbrt(t), t / (3 * _DELTA**2) + 4.0 / 29.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """sRGB colours in [0, 1] (clipped to the gamut) of CIE L*a*b* (D65) colours."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    t = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    linear = np.clip((t * _WHITE) @ _XYZ_TO_RGB.T, 0.0, 1.0)
    return np.where(
        linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055
    ).clip(0.0, 1.0)


@dataclass(frozen=True)
class PixelFeatures:
    """How pixels become rows: the colour space and the weight of the coordinates."""

    color_space: str = "rgb"
    spatial: float = 0.0  # 0: colour only

    def __post_init__(self) -> None:
        if self.color_space not in COLOR_SPACES:
            raise UsageError(
                f"unknown color space {self.color_space!r}; use one of {', '.join(COLOR_SPACES)}"
            )
        if not (np.isfinite(self.spatial) and self.spatial >= 0):
            raise UsageError(f"spatial must be a non-negative number, got {self.spatial}")

    @property
    def columns(self) -> list[str]:
        return [*COLOR_COLUMNS[self.color_space], *(("x", "y") if self.spatial else ())]

    def rows(self, rgb: np.ndarray, x: np.ndarray, y: np.ndarray, shape: tuple[int, int]
             ) -> np.ndarray:
        """One row per pixel: colours ``rgb`` (``(n, 3)`` in [0, 1]) at columns ``x``
        and rows ``y`` of an image of ``shape`` (height, width)."""
        colour = np.asarray(rgb, dtype=np.float64)
        colour = srgb_to_lab(colour) if self.color_space == "lab" else colour * 255.0
        if not self.spatial:
            return colour
        scale = self.spatial * SPATIAL_SPAN / max(max(shape) - 1, 1)
        return np.column_stack([colour, x * scale, y * scale])

    def colours(self, params: GMMParams) -> np.ndarray:
        """Each component's mean colour as sRGB in [0, 1]: ``(K, 3)``."""
        mean = params.means[:, :3]
        return lab_to_srgb(mean) if self.color_space == "lab" else np.clip(mean / 255.0, 0, 1)


@dataclass(frozen=True)
class Segmentation:
    """The fit and every pixel's label (-1 where the pixel is transparent)."""

    result: FitResult  # the fit on the sample (no per-row outputs kept)
    sweep: SweepResult | None  # when several k were tried
    labels: np.ndarray  # (H, W) int16
    sample: np.ndarray  # (m, d) the fitted rows, for pictures
    n_visible: int


def fitted_pixels(visible: np.ndarray, seed: int, limit: int = MAX_FIT_PIXELS) -> np.ndarray:
    """Flat indices (increasing) of at most ``limit`` visible pixels, drawn with ``seed``."""
    where = np.flatnonzero(visible.reshape(-1))
    if where.size <= limit:
        return where
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E6]))
    return np.sort(rng.choice(where, size=limit, replace=False))


def segment(
    rgb: np.ndarray,
    visible: np.ndarray,
    *,
    k_values: Sequence[int],
    features: PixelFeatures,
    covariance_type: str = "full",
    seed: int = 0,
    max_fit_pixels: int = MAX_FIT_PIXELS,
    **options: Any,
) -> Segmentation:
    """Fit a mixture to the pixels of ``rgb`` (``(H, W, 3)`` in [0, 1]) where ``visible``
    and label every pixel. Several ``k_values`` are swept and the lowest BIC kept;
    ``options`` go to ``fit_mixture`` (``n_init``, ``tol``, ``max_iter``, …)."""
    H, W = visible.shape
    n_visible = int(visible.sum())
    ks = sorted({int(k) for k in k_values})
    if n_visible < max(ks):
        raise DataError(
            f"the image has {n_visible} visible pixels, fewer than k={max(ks)}; use a smaller k"
        )
    picked = fitted_pixels(visible, seed, max_fit_pixels)
    y, x = np.divmod(picked, W)
    sample = features.rows(rgb[y, x], x, y, (H, W))
    swept = None
    if len(ks) == 1:
        result = fit_mixture(sample, n_components=ks[0], covariance_type=covariance_type,
                             seed=seed, **options)
    else:
        swept = sweep(sample, k_values=ks, covariance_types=[covariance_type], criterion="bic",
                      seed=seed, try_hc=False, **options)
        best = swept.best.result
        assert best is not None
        result = best
    labels = label_pixels(result.params, rgb, visible, features)
    result = _without_rows(result)
    return Segmentation(result, swept, labels, sample, n_visible)


def label_pixels(params: GMMParams, rgb: np.ndarray, visible: np.ndarray,
                 features: PixelFeatures) -> np.ndarray:
    """Every pixel's most probable component (-1 if transparent), ``LABEL_ROWS`` rows at a time."""
    H, W = visible.shape
    labels = np.full((H, W), -1, dtype=np.int16)
    for top in range(0, H, LABEL_ROWS):
        bottom = min(H, top + LABEL_ROWS)
        seen = np.flatnonzero(visible[top:bottom].reshape(-1))
        if not seen.size:
            continue
        y, x = np.divmod(seen, W)
        X = features.rows(rgb[top:bottom].reshape(-1, 3)[seen], x, y + top, (H, W))
        resp, _ = score_rows(params, X)
        labels[top:bottom].reshape(-1)[seen] = np.argmax(resp, axis=1)
    return labels


def _without_rows(result: FitResult) -> FitResult:
    from dataclasses import replace

    return replace(result, resp=None, log_density=None, n_observed=None)


def painted(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """RGBA ``uint8`` image: each pixel in its component's colour, transparent if unlabelled."""
    table = np.zeros((colours.shape[0] + 1, 4), dtype=np.uint8)
    table[:-1, :3] = np.round(colours * 255.0).astype(np.uint8)
    table[:-1, 3] = 255
    return table[labels]  # label -1 picks the last, transparent, entry

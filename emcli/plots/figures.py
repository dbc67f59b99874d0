"""The pictures, drawn with matplotlib's Agg canvas and returned as PNG bytes.

The only module that imports matplotlib (inside the functions, so importing it
costs nothing). No pyplot: each picture is its own ``Figure`` on a
``FigureCanvasAgg``, drawn under matplotlib's default style (a user's
matplotlibrc changes nothing) and saved at a fixed dpi without the
``Software`` stamp, so the same inputs give the same bytes (docs/pictures.md).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from emcli.model import FitResult, GMMParams, SweepResult

from .data import PlotPoints, component_densities, ellipse, principal_axes

DPI = 100
PANEL_INCHES = 2.7
MAX_PAIR_COLUMNS = 5


@contextmanager
def _figure(width: float, height: float) -> Iterator[Any]:
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        fig = Figure(figsize=(width, height), dpi=DPI)
        FigureCanvasAgg(fig)
        yield fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def palette(K: int) -> np.ndarray:
    """K distinct RGB colours in [0, 1]: tab10, tab20, then evenly spaced hues."""
    import matplotlib

    if K <= 20:
        name = "tab10" if K <= 10 else "tab20"
        return np.asarray(matplotlib.colormaps[name](np.arange(K)))[:, :3]
    return np.asarray(matplotlib.colormaps["hsv"](np.linspace(0, 1, K, endpoint=False)))[:, :3]


def _point_colours(points: PlotPoints, colours: np.ndarray, K: int) -> np.ndarray:
    """RGBA per point: the label's colour, faded as the uncertainty grows."""
    top = 1.0 - 1.0 / K if K > 1 else 1.0
    certainty = 1.0 - np.clip(points.uncertainty / top, 0.0, 1.0)
    base = 0.9 if points.X.shape[0] <= 2000 else 0.5
    rgba = np.empty((points.X.shape[0], 4))
    rgba[:, :3] = colours[points.labels]
    rgba[:, 3] = base * (0.12 + 0.88 * certainty)
    return rgba


def _caption(points: PlotPoints, seed: int) -> str:
    drawn = (
        f"{points.X.shape[0]:,} of {points.n_rows:,} rows drawn at random (seed {seed})"
        if points.sampled
        else f"all {points.n_rows:,} rows"
    )
    parts = [drawn, "faded: uncertain rows"]
    if points.missing.any():
        parts.append("hollow: a coordinate missing, drawn at its conditional mean")
    return "; ".join(parts)


def _scatter(ax: Any, x: np.ndarray, y: np.ndarray, rgba: np.ndarray, hollow: np.ndarray) -> None:
    size = 10.0 if x.size <= 2000 else 3.0
    solid = ~hollow
    ax.scatter(x[solid], y[solid], s=size, c=rgba[solid], linewidths=0, rasterized=False)
    if hollow.any():
        ax.scatter(x[hollow], y[hollow], s=size * 2.5, facecolors="none",
                   edgecolors=rgba[hollow], linewidths=0.8)


def _ellipses(ax: Any, means: np.ndarray, covs: np.ndarray, colours: np.ndarray) -> None:
    from matplotlib.patches import Ellipse

    for k in range(means.shape[0]):
        for n_sigma, style in ((1.0, "-"), (2.0, "--")):
            w, h, angle = ellipse(covs[k], n_sigma)
            # a darker shade of the component's colour, to stand out from its points
            ax.add_patch(Ellipse(means[k], w, h, angle=angle, fill=False,
                                 edgecolor=colours[k] * 0.55, linewidth=1.5, linestyle=style))
        ax.plot(*means[k], marker="+", color="black", markersize=8)


def _histogram(ax: Any, params: GMMParams, points: PlotPoints, j: int, colours: np.ndarray,
               name: str) -> None:
    """Column ``j``'s observed values, the mixture density and its components."""
    seen = points.X[~points.missing[:, j], j]
    sd = np.sqrt(params.full_covariances()[:, j, j])
    lo, hi = (params.means[:, j] - 3 * sd).min(), (params.means[:, j] + 3 * sd).max()
    if seen.size:  # a column observed in few rows may have none among those drawn
        ax.hist(seen, bins=min(60, max(10, int(np.sqrt(seen.size)))), density=True,
                color="0.8", edgecolor="0.6", linewidth=0.5)
        lo, hi = min(lo, seen.min()), max(hi, seen.max())
    grid = np.linspace(lo, hi, 400)
    parts = component_densities(params, j, grid)
    ax.plot(grid, parts.sum(axis=0), color="black", linewidth=2.6, label="mixture", alpha=0.45)
    for k in range(parts.shape[0]):
        ax.plot(grid, parts[k], color=colours[k], linewidth=1.4, linestyle="--",
                label=f"component {k} (weight {params.weights[k]:.2f})")
    ax.set_xlabel(name)
    ax.set_ylabel("density")


def _legend(fig: Any, colours: np.ndarray, weights: np.ndarray) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", linestyle="", color=colours[k],
               label=f"{k} (weight {weights[k]:.2f})")
        for k in range(len(weights))
    ]
    handles += [
        Line2D([], [], color="black", linestyle="-", label="1σ"),
        Line2D([], [], color="black", linestyle="--", label="2σ"),
    ]
    fig.legend(handles=handles, loc="center right", title="component", fontsize=8,
               title_fontsize=9, frameon=False)


def clusters_png(
    params: GMMParams, points: PlotPoints, columns: Sequence[str], seed: int, title: str
) -> bytes:
    """Pair plot (≤ 5 columns), principal-axes projection (more), or histogram (one)."""
    params = params.in_data_units()
    d, K = params.n_features, params.n_components
    colours = palette(K)
    caption = _caption(points, seed)
    if d == 1:
        with _figure(7.5, 5.0) as fig:
            ax = fig.add_subplot(1, 1, 1)
            _histogram(ax, params, points, 0, colours, columns[0])
            ax.legend(fontsize=8, frameon=False)
            n_missing = int(points.missing[:, 0].sum())
            fig.suptitle(title)
            fig.text(0.01, 0.01, _caption(points, seed).split("; ")[0]
                     + (f"; {n_missing} rows missing" if n_missing else ""), fontsize=8)
            fig.tight_layout(rect=(0, 0.04, 1, 0.95))
            return _png(fig)
    rgba = _point_colours(points, colours, K)
    covs = params.full_covariances()
    if d > MAX_PAIR_COLUMNS:
        centre, axes, share = principal_axes(params)
        P = (points.filled - centre) @ axes
        hollow = np.asarray(points.missing.any(axis=1))
        with _figure(9.0, 7.5) as fig:
            ax = fig.add_subplot(1, 1, 1)
            _scatter(ax, P[:, 0], P[:, 1], rgba, hollow)
            _ellipses(ax, (params.means - centre) @ axes,
                      np.einsum("ia,kij,jb->kab", axes, covs, axes), colours)
            ax.set_xlabel(f"principal axis 1 ({100 * share[0]:.0f}% of the variance)")
            ax.set_ylabel(f"principal axis 2 ({100 * share[1]:.0f}% of the variance)")
            ax.autoscale_view()
            _legend(fig, colours, params.weights)
            fig.suptitle(f"{title}\n{d} columns projected on the mixture's principal axes")
            fig.text(0.01, 0.01, caption, fontsize=8)
            fig.tight_layout(rect=(0, 0.03, 0.84, 0.95))
            return _png(fig)
    side = PANEL_INCHES * d
    with _figure(side + 1.8, side + 0.6) as fig:
        grid = fig.subplots(d, d, squeeze=False)
        for i in range(d):
            for j in range(d):
                ax = grid[i, j]
                if i == j:
                    _histogram(ax, params, points, j, colours, columns[j])
                else:
                    hollow = points.missing[:, i] | points.missing[:, j]
                    _scatter(ax, points.filled[:, j], points.filled[:, i], rgba, hollow)
                    pair = np.ix_(range(K), [j, i], [j, i])
                    _ellipses(ax, params.means[:, [j, i]], covs[pair], colours)
                    ax.autoscale_view()
                    ax.set_xlabel(columns[j])
                    ax.set_ylabel(columns[i])
                ax.tick_params(labelsize=7)
                ax.xaxis.label.set_size(9)
                ax.yaxis.label.set_size(9)
        _legend(fig, colours, params.weights)
        fig.suptitle(title)
        fig.text(0.01, 0.005, caption, fontsize=8)
        fig.tight_layout(rect=(0, 0.02, side / (side + 1.8), 0.97))
        return _png(fig)


def criterion_png(result: SweepResult, title: str) -> bytes:
    """The criterion against k, one line per covariance type, the pick marked."""
    crit = result.criterion
    types = list(dict.fromkeys(c.covariance_type for c in result.cells))
    colours = palette(len(types))
    best = result.best
    with _figure(7.5, 5.0) as fig:
        ax = fig.add_subplot(1, 1, 1)
        for t, colour in zip(types, colours, strict=True):
            cells = [c for c in result.cells if c.covariance_type == t and c.result is not None]
            ks = [c.k for c in cells]
            values = [getattr(c.result, crit) for c in cells]
            ax.plot(ks, values, marker="o", color=colour, label=t)
        assert best.result is not None
        ax.plot([best.k], [getattr(best.result, crit)], marker="*", markersize=18,
                color="gold", markeredgecolor="black", linestyle="",
                label=f"pick: k={best.k}, {best.covariance_type}")
        ax.set_xticks(sorted({c.k for c in result.cells}))
        ax.set_xlabel("k (number of components)")
        ax.set_ylabel(f"{crit.upper()} (lower is better)")
        ax.legend(fontsize=9, frameon=False)
        ax.grid(alpha=0.3)
        fig.suptitle(title)
        failed = sum(1 for c in result.cells if c.result is None)
        if failed:
            fig.text(0.01, 0.01, f"{failed} cells failed and are not drawn", fontsize=8)
        fig.tight_layout(rect=(0, 0.03, 1, 0.95))
        return _png(fig)


def convergence_png(result: FitResult, title: str) -> bytes:
    """Log-likelihood against iteration for every restart; recovery events marked."""
    history = result.history
    restarts = sorted({h.restart for h in history})
    colours = palette(max(len(restarts), 1))
    with _figure(7.5, 5.0) as fig:
        ax = fig.add_subplot(1, 1, 1)
        marked = False
        for r, colour in zip(restarts, colours, strict=True):
            rows = [h for h in history if h.restart == r and np.isfinite(h.log_likelihood)]
            if not rows:
                continue
            best = r == result.best_restart
            ax.plot([h.iteration for h in rows], [h.log_likelihood for h in rows],
                    color=colour, linewidth=2.2 if best else 1.0, zorder=3 if best else 2,
                    marker="o" if len(rows) <= 30 else None, markersize=3,
                    label=f"restart {r}" + (" (kept)" if best else ""))
            events = [h for h in rows if h.event]
            if events:
                ax.plot([h.iteration for h in events], [h.log_likelihood for h in events],
                        marker="X", markersize=9, color="red", linestyle="",
                        label=None if marked else "recovery event")
                marked = True
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("iteration")
        ax.set_ylabel("log-likelihood")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False, ncols=2 if len(restarts) > 6 else 1)
        failed = sorted({h.restart for h in history if h.event.startswith("restart failed")})
        fig.suptitle(title)
        status = "converged" if result.converged else "not converged"
        note = f"{status} after {result.n_iter} iterations of restart {result.best_restart}"
        if failed:
            note += f"; restarts {', '.join(map(str, failed))} failed"
        fig.text(0.01, 0.01, note, fontsize=8)
        fig.tight_layout(rect=(0, 0.03, 1, 0.95))
        return _png(fig)


def uncertainty_png(points: PlotPoints, K: int, seed: int, title: str) -> bytes:
    """Histograms of the uncertainty and of the log-density (outliers at its low end)."""
    with _figure(10.0, 4.2) as fig:
        left, right = fig.subplots(1, 2)
        top = 1.0 - 1.0 / K if K > 1 else 1.0
        left.hist(points.uncertainty, bins=40, range=(0.0, max(top, 1e-9)), color="tab:blue")
        left.set_yscale("log")
        left.set_xlabel("uncertainty (1 − largest probability)")
        left.set_ylabel("rows (log scale)")
        left.set_title("how sure the assignment is", fontsize=10)
        ld = points.log_density[np.isfinite(points.log_density)]
        right.hist(ld, bins=60, color="tab:green")
        low = float(np.quantile(ld, 0.01))
        right.axvline(low, color="red", linestyle="--", linewidth=1.2,
                      label=f"1% quantile ({low:.3g})")
        right.set_xlabel("log-density of the row under the mixture")
        right.set_ylabel("rows")
        right.set_title("how well the mixture explains each row", fontsize=10)
        right.legend(fontsize=8, frameon=False)
        fig.suptitle(title)
        fig.text(0.01, 0.01, _caption(points, seed).split("; ")[0]
                 + "; rows left of the red line are the least likely (outliers)", fontsize=8)
        fig.tight_layout(rect=(0, 0.04, 1, 0.93))
        return _png(fig)

"""What people see: notices, a progress bar and a summary table, all on stderr.

The progress bar appears only when stderr is a terminal; ``quiet`` silences
progress and the summary (errors, warnings and notices still show).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .covariance import ORDER, get_model, model_name
from .model import FitResult, IterationRecord


class Reporter:
    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)

    def notice(self, message: str) -> None:
        self.console.print(f"emcli: {message}", markup=False, highlight=False)

    def warning(self, message: str) -> None:
        """A doubt about the result: shown under ``quiet`` too, as one plain line."""
        self.console.file.write(f"emcli: warning: {message}\n")
        self.console.file.flush()

    def error(self, message: str) -> None:
        # one plain line, never wrapped or styled, so scripts can grep it
        self.console.file.write(f"emcli: error: {message}\n")
        self.console.file.flush()

    @contextlib.contextmanager
    def progress(
        self, n_init: int, max_iter: int
    ) -> Iterator[Callable[[IterationRecord], None] | None]:
        """A callback for ``fit_mixture`` that drives a progress bar, or None."""
        if self.quiet or not self.console.is_terminal:
            yield None
            return
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task("fitting", total=n_init * max(max_iter, 1), status="")

            def callback(rec: IterationRecord) -> None:
                bar.update(
                    task,
                    completed=rec.restart * max(max_iter, 1) + min(rec.iteration, max_iter),
                    description=f"restart {rec.restart + 1}/{n_init}",
                    status=f"iter {rec.iteration}  mean ll {rec.mean_log_likelihood:.6g}",
                )

            yield callback

    def fit_summary(
        self,
        result: FitResult,
        *,
        source: str,
        columns: Sequence[str],
        written: Sequence[str],
        seconds: float,
        counts: np.ndarray | None = None,
    ) -> None:
        """The fit's summary; ``counts``: rows per component (default: from the result's labels)."""
        if self.quiet:
            return
        p = result.params
        s = result.settings
        head = Table(show_header=False, box=None, pad_edge=False)
        head.add_column(style="bold")
        head.add_column()
        rows = f"{result.n_rows}"
        if result.n_empty_rows:
            rows += f" ({result.n_empty_rows} with nothing observed: given the prior)"
        conv = "yes" if result.converged else "[bold red]no[/] (raise --max-iter or --tol)"
        items: list[tuple[str, Any]] = [
            ("data", source),
            ("rows", rows),
            ("columns", f"{len(columns)}: {', '.join(columns)}"),
            ("missing", f"{100 * result.missing_fraction:.1f}% of cells"),
            (
                "model",
                f"k={p.n_components}, covariance {s.get('covariance_type', p.covariance_type)}",
            ),
            ("converged", f"{conv} after {result.n_iter} iterations"),
            ("restarts", _restarts(result)),
            (
                "log-likelihood",
                f"{result.log_likelihood:.6g} (mean {result.mean_log_likelihood:.6g})",
            ),
            ("BIC / AIC / ICL", f"{result.bic:.6g} / {result.aic:.6g} / {result.icl:.6g}"),
            *_kmeans_items(result.kmeans_comparison),
            ("rows held", result.rows_held),
            ("time", f"{seconds:.2f} s"),
        ]
        for k, v in items:
            head.add_row(k, v)
        self.console.print(head)
        comp = Table(title=None, header_style="bold")
        comp.add_column("component", justify="right")
        comp.add_column("weight", justify="right")
        comp.add_column("rows", justify="right")
        comp.add_column("mean")
        if counts is None:
            counts = np.bincount(result.labels, minlength=p.n_components)
        for j in range(p.n_components):
            mean = ", ".join(f"{x:.4g}" for x in p.means[j][:6])
            if p.n_features > 6:
                mean += ", …"
            comp.add_row(str(j), f"{p.weights[j]:.3f}", str(int(counts[j])), mean)
        self.console.print(comp)
        if written:
            self.console.print("wrote " + ", ".join(written), markup=False)


def _restarts(result: FitResult) -> str:
    """How many distinct restarts ran, which won, how many failed and why."""
    n, asked = result.n_restarts, result.settings.get("n_init", result.n_restarts)
    text = f"{n} distinct, best: {result.best_restart}"
    if n < asked:
        text += f" ({asked} asked; this start depends on the data alone)"
    if result.failed_restarts:
        text += f"; {len(result.failed_restarts)} failed: " + "; ".join(result.failed_restarts)
    return text


def _kmeans_items(c: dict | None) -> list[tuple[str, str]]:
    """``--compare-kmeans``: k-means (hard) against EM (soft) on the same rows."""
    if c is None:
        return []
    changed = f"{c['rows_changed']} of {c['rows_compared']} rows change cluster"
    if c["changed_mean_uncertainty"] is not None:
        changed += f" (their mean EM uncertainty {c['changed_mean_uncertainty']:.3g})"
    return [
        ("k-means vs EM", f"adjusted Rand index {c['adjusted_rand_index']:.4f}; {changed}"),
        ("k-means log-lik.", f"k-means {c['kmeans_log_likelihood']:.6g} (one M-step on its "
         f"partition), EM {c['em_log_likelihood']:.6g}"),
    ]


# ---- select-k ----

_SERIES_STYLES = ("cyan", "magenta", "yellow", "green", "blue", "red", "bright_cyan")


def _series_mark(name: str) -> str:
    return get_model(name).name if model_name(name) is not None else "?"


def _model_label(name: str) -> str:
    """``VEV``, or ``full (VVV)`` for an alias."""
    mark = _series_mark(name)
    return name if mark in (name, "?") else f"{name} ({mark})"


def _series_style(name: str) -> str:
    if model_name(name) is None:
        return ""
    return _SERIES_STYLES[ORDER.index(get_model(name).name) % len(_SERIES_STYLES)]


@contextlib.contextmanager
def sweep_progress(reporter: Reporter, n_cells: int) -> Iterator[Callable[[Any], None] | None]:
    """An ``on_cell`` callback for the sweep that drives a progress bar over cells (and
    bootstrap resamples, ``None``), or None."""
    if reporter.quiet or not reporter.console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("select-k"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=reporter.console,
        transient=True,
    ) as bar:
        task = bar.add_task("cells", total=n_cells, status="")

        def on_cell(cell: Any) -> None:
            if cell is None:
                bar.update(task, advance=1, status="bootstrap resamples")
                return
            state = "done" if cell.ok else "failed"
            bar.update(task, advance=1, status=f"k={cell.k} {cell.covariance_type} {state}")

        yield on_cell


def _num(x: float, fmt: str = ".7g") -> str:
    return format(x, fmt) if np.isfinite(x) else "—"


def sweep_table(result: Any) -> Table:
    """One row per (k, covariance): log-likelihood, parameters, criteria, convergence, time."""
    crit = result.criterion.upper()
    from rich import box

    table = Table(
        title=f"BIC, AIC, ICL: lower is better; * = best by {crit}",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        show_edge=False,
    )
    for name in ("k", "covariance", "log-lik", "params", "BIC", "AIC", "ICL", "conv", "iter",
                 "s"):
        table.add_column(name, justify="left" if name in ("covariance", "conv") else "right",
                         no_wrap=True)
    sizes = [
        abs(float(getattr(c.result, a)))
        for c in result.cells
        if c.result is not None
        for a in ("log_likelihood", "bic", "aic", "icl")
    ]
    wide = any(np.isfinite(v) and v >= 1e5 for v in sizes)
    fmt = ".0f" if wide else ".1f"  # at most 7 digits: the table fits 80 columns
    for i, cell in enumerate(result.cells):
        r = cell.result
        best = i == result.best_index
        if r is None:
            table.add_row(str(cell.k), _series_mark(cell.covariance_type), "[red]failed[/]", "",
                          "", "", "", "", "", f"{cell.seconds:.2f}")
            continue
        table.add_row(
            f"[bold green]*[/]{cell.k}" if best else str(cell.k),
            _series_mark(cell.covariance_type),  # three letters (docs/criteria.md §3)
            _num(r.log_likelihood, fmt),
            str(r.n_params),
            _num(r.bic, fmt),
            _num(r.aic, fmt),
            _num(r.icl, fmt),
            "yes" if r.converged else "[red]no[/]",
            str(r.n_iter),
            f"{cell.seconds:.2f}",
            style="bold" if best else None,
        )
    return table


def criterion_chart(result: Any, width: int = 80, height: int = 12) -> Any:
    """A character plot of the criterion against k, one series per model, named by its letters.

    Returns a rich ``Text`` at most ``width`` columns wide; points are joined by dots.
    """
    from rich.text import Text

    crit = result.criterion
    ks = list(result.k_values) or sorted({c.k for c in result.cells})
    covs = list(dict.fromkeys(c.covariance_type for c in result.cells))
    series: dict[str, list[tuple[int, float]]] = {c: [] for c in covs}
    for cell in result.cells:
        if cell.result is None:
            continue
        v = float(getattr(cell.result, crit))
        if np.isfinite(v):
            series[cell.covariance_type].append((ks.index(cell.k), v))
    values = [v for pts in series.values() for _, v in pts]
    out = Text()
    if not values:
        return out
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 1.0, hi + 1.0
    labels = [format(hi, ".6g"), format((lo + hi) / 2, ".6g"), format(lo, ".6g")]
    lw = max(len(s) for s in labels)
    plot_w = max(10, min(width, 80) - lw - 2)
    n = len(ks)

    def col(i: int) -> int:
        return 0 if n == 1 else round(i * (plot_w - 1) / (n - 1))

    def row(v: float) -> int:
        return round((hi - v) / (hi - lo) * (height - 1))

    grid = [[" "] * plot_w for _ in range(height)]
    style = [[""] * plot_w for _ in range(height)]
    for cov, pts in series.items():  # lines first, points on top
        pts.sort()
        for (i0, v0), (i1, v1) in zip(pts, pts[1:], strict=False):
            c0, c1 = col(i0), col(i1)
            for c in range(c0 + 1, c1):
                y = v0 + (v1 - v0) * (c - c0) / (c1 - c0)
                r = row(y)
                if grid[r][c] == " ":
                    grid[r][c], style[r][c] = ".", _series_style(cov)
    owner: list[list[str | None]] = [[None] * plot_w for _ in range(height)]
    shared = False  # two series' names overlap: show "*" rather than hide one
    for cov, pts in series.items():
        mark = _series_mark(cov)  # three letters, centred on the point
        for i, v in pts:
            r, c = row(v), col(i)
            start = min(max(0, c - len(mark) // 2), plot_w - len(mark))
            span = range(start, start + len(mark))
            if any(owner[r][x] not in (None, cov) for x in span):
                grid[r][c], style[r][c], owner[r][c], shared = "*", "bold", "*", True
                continue
            for x, ch in zip(span, mark, strict=True):
                grid[r][x], style[r][x], owner[r][x] = ch, "bold " + _series_style(cov), cov
    label_rows = {0: labels[0], (height - 1) // 2: labels[1], height - 1: labels[2]}
    out.append(f"{crit.upper()} against k (lower is better)\n", style="bold")
    for r in range(height):
        out.append(label_rows.get(r, "").rjust(lw) + " │")
        for c in range(plot_w):
            out.append(grid[r][c], style=style[r][c] or None)
        out.append("\n")
    out.append(" " * lw + " └" + "─" * plot_w + "\n")
    axis = [" "] * plot_w
    best_cell = result.cells[result.best_index]
    for i, k in enumerate(ks):
        s, c = str(k), col(i)
        start = min(max(0, c - (len(s) - 1) // 2), plot_w - len(s))
        if all(ch == " " for ch in axis[max(0, start - 1) : start + len(s) + 1]):
            axis[start : start + len(s)] = list(s)
    out.append("k".rjust(lw) + "  " + "".join(axis).rstrip() + "\n")
    at = col(ks.index(best_cell.k))
    note = f"best: k={best_cell.k}"
    if at + 2 + len(note) <= plot_w:
        marker = " " * at + "^ " + note
    else:
        marker = (note + " ^").rjust(at + 1)
    out.append(" " * (lw + 2) + marker + "\n")
    legend = "  ".join(f"{_series_mark(c)} = {c}" for c in covs if _series_mark(c) != c)
    if shared:
        legend += ("  " if legend else "") + "* = several"
    out.append(" " * (lw + 2) + legend)
    return out


def sweep_report(
    reporter: Reporter,
    result: Any,
    *,
    source: str,
    n_rows: int,
    columns: Sequence[str],
    written: Sequence[str],
    seconds: float,
) -> None:
    """The sweep on stderr: table, failed cells, chart, best model, edge warning."""
    failed = [c for c in result.cells if c.result is None]
    if not reporter.quiet:
        best = result.best
        console = reporter.console
        console.print(
            f"select-k on {source}: {n_rows} rows, {len(columns)} columns "
            f"({', '.join(columns)})",
            markup=False,
        )
        console.print(sweep_table(result))
    for cell in failed:
        reporter.notice(f"k={cell.k} {cell.covariance_type} failed (skipped): {cell.error}")
    if not reporter.quiet:
        console.print(criterion_chart(result, width=min(console.width, 80)))
        r = best.result
        console.print(
            f"best: k={best.k} {best.covariance_type} "
            f"({result.criterion.upper()} {_num(getattr(r, result.criterion))}, "
            f"{'converged' if r.converged else 'NOT converged'} after {r.n_iter} "
            f"iteration{'' if r.n_iter == 1 else 's'}); "
            f"{len(result.cells)} cells in {seconds:.2f} s",
            markup=False,
        )
        if result.bootstrap is not None:
            from .bootstrap import summary

            console.print(summary(result), markup=False)
        if written:
            console.print("wrote " + ", ".join(written), markup=False)
    if result.edge_warning:
        reporter.notice(f"warning: {result.edge_warning}")


# ---- describe ----

_MAX_CORRELATION_COLUMNS = 12

# the fit block's entries in display order: (key, label)
_FIT_ROWS = (
    ("log_likelihood", "log-likelihood"),
    ("mean_log_likelihood", "mean log-likelihood"),
    ("bic", "BIC"),
    ("aic", "AIC"),
    ("icl", "ICL"),
    ("converged", "converged"),
    ("n_iter", "iterations"),
    ("best_restart", "best restart"),
    ("n_rows", "rows"),
    ("n", "n (weighted rows with data)"),
    ("n_empty_rows", "rows with nothing observed"),
    ("n_params", "parameters"),
    ("missing_fraction", "missing cells"),
    ("init", "init"),
    ("n_init", "restarts"),
    ("seed", "seed"),
    ("tol", "tol"),
    ("max_iter", "max iterations"),
    ("reg_covar", "reg_covar"),
    ("standardize", "standardize"),
    ("dtype", "dtype"),
    ("id_column", "id column"),
    ("weights_column", "weights column"),
    ("input_sha256", "input SHA-256"),
)


def _g(x: float) -> str:
    return f"{x:.6g}"


def _shown(value: Any, limit: int = 200) -> Text:
    """A value from a model file as plain text (never markup), cut to ``limit`` characters."""
    import json

    if isinstance(value, float):
        s = _g(value)
    elif isinstance(value, bool) or value is None:
        s = {True: "yes", False: "no", None: "—"}[value]
    elif isinstance(value, (dict, list)):
        s = json.dumps(value, separators=(", ", ": "))
    else:
        s = str(value)
    return Text(s if len(s) <= limit else s[: limit - 1] + "…")


def apply_summary(
    reporter: Reporter,
    verb: str,
    *,
    source: str,
    n_rows: int,
    written: str,
    seconds: float,
    n_empty: int = 0,
    labels: np.ndarray | None = None,
    n_components: int = 0,
    n_filled: int | None = None,
    columns: Sequence[str] = (),
    counts: np.ndarray | None = None,
) -> None:
    """One or two lines after predict, impute or sample (``counts``: rows per component)."""
    if reporter.quiet:
        return
    line = f"{verb} {n_rows} rows of {source}"
    if n_filled is not None:
        line += f": filled {n_filled} missing cells in {len(columns)} columns"
    if n_empty:
        line += f" ({n_empty} with nothing observed: given the prior)"
    line += f" in {seconds:.2f} s"
    if written != "-":
        line += f"; wrote {written}"
    reporter.console.print(line, markup=False)
    if counts is None and labels is not None and n_components:
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_components)
    if counts is not None:
        reporter.console.print(
            "rows per component: " + ", ".join(f"{k}: {int(c)}" for k, c in enumerate(counts)),
            markup=False,
        )


def _component_table(
    title: str, columns: Sequence[str], values: np.ndarray, weights: np.ndarray | None = None
) -> Table:
    """Per-component values (K, d): features as rows for few components, else transposed."""
    K = values.shape[0]
    table = Table(title=title, header_style="bold", title_justify="left")
    if K <= 8:
        table.add_column("")
        for k in range(K):
            table.add_column(f"component {k}", justify="right")
        if weights is not None:
            table.add_row(Text("weight", style="bold"), *(_g(w) for w in weights))
        for j, c in enumerate(columns):
            table.add_row(Text(c), *(_g(v) for v in values[:, j]))
    else:
        table.add_column("component", justify="right")
        if weights is not None:
            table.add_column("weight", justify="right")
        for c in columns:
            table.add_column(Text(c), justify="right")
        for k in range(K):
            lead = [str(k)] + ([_g(weights[k])] if weights is not None else [])
            table.add_row(*lead, *(_g(v) for v in values[k]))
    return table


def _correlation_table(title: str, columns: Sequence[str], cov: np.ndarray) -> Table:
    sd = np.sqrt(np.diagonal(cov))
    table = Table(title=title, header_style="bold", title_justify="left")
    table.add_column("")
    table.add_column("sd", justify="right")
    show = len(columns) <= _MAX_CORRELATION_COLUMNS
    if show:
        corr = cov / np.outer(sd, sd)
        for c in columns:
            table.add_column(Text(c), justify="right")
    for j, c in enumerate(columns):
        cells = [f"{corr[j, i]:.3f}" for i in range(len(columns))] if show else []
        table.add_row(Text(c), _g(sd[j]), *cells)
    if not show:
        table.caption = f"correlations left out for more than {_MAX_CORRELATION_COLUMNS} columns"
    return table


def describe_model(console: Console, loaded: Any, source: str) -> None:
    """A model file as tables: summary, fit statistics, weights and means, covariances."""
    p = loaded.params
    cols = loaded.columns
    doc = loaded.document
    fit = loaded.fit
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold")
    head.add_column()
    std = loaded.standardization
    rows: list[tuple[str, Any]] = [
        ("model", source),
        ("format", f"{doc.get('format')} version {doc.get('format_version')}"),
        ("written by", f"emcli {doc.get('emcli_version', '?')}"),
        ("components", p.n_components),
        ("covariance", _model_label(p.covariance_type)),
        ("columns", f"{len(cols)}: {', '.join(cols)}"),
        (
            "standardized",
            "no" if std is None
            else "yes (fitted on z-scores; parameters below are of the z-scores: scaling "
            f"does not keep {p.model.name}'s constraints)" if p.scaling is not None
            else "yes (fitted on z-scores; parameters below in original units)",
        ),
    ]
    for label, value in rows:
        head.add_row(label, _shown(value, 1000))
    console.print(head)

    stats = Table(title="fit", header_style="bold", title_justify="left", show_header=False)
    stats.add_column(style="bold")
    stats.add_column()
    known = {key for key, _ in _FIT_ROWS} | {"covariance_type"}
    for key, label in _FIT_ROWS:
        if key not in fit:
            continue
        value = fit[key]
        if key == "missing_fraction" and isinstance(value, (int, float)):
            value = f"{100 * value:.2f}%"
        stats.add_row(label, _shown(value))
    for key, value in fit.items():
        if key not in known:
            stats.add_row(_shown(key, 60), _shown(value))
    if stats.row_count:
        console.print(stats)

    console.print(_component_table("weights and means", cols, p.means, p.weights))
    model = p.model
    full = p.full_covariances()
    if not model.correlated:
        variances = np.diagonal(full, axis1=1, axis2=2)
        note = " (one per component, the same in every column)" if model.isotropic else ""
        console.print(_component_table("variances" + note, cols, variances))
    elif model.per_component:
        for k in range(p.n_components):
            console.print(
                _correlation_table(f"component {k}: standard deviations and correlations", cols,
                                   full[k])
            )
    else:
        console.print(
            _correlation_table(f"every component ({model.name}): standard deviations and "
                               "correlations", cols, full[0])
        )

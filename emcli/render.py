"""What people see: notices, a progress bar and a summary table, all on stderr.

The progress bar appears only when stderr is a terminal; ``quiet`` silences
progress and the summary (errors and notices still show).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .model import FitResult, IterationRecord


class Reporter:
    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)

    def notice(self, message: str) -> None:
        self.console.print(f"emcli: {message}", markup=False, highlight=False)

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
    ) -> None:
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
            (
                "converged",
                f"{conv} after {result.n_iter} iterations "
                f"(best of {s.get('n_init', 1)} restarts: {result.best_restart})",
            ),
            (
                "log-likelihood",
                f"{result.log_likelihood:.6g} (mean {result.mean_log_likelihood:.6g})",
            ),
            ("BIC / AIC / ICL", f"{result.bic:.6g} / {result.aic:.6g} / {result.icl:.6g}"),
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
        counts = np.bincount(result.labels, minlength=p.n_components)
        for j in range(p.n_components):
            mean = ", ".join(f"{x:.4g}" for x in p.means[j][:6])
            if p.n_features > 6:
                mean += ", …"
            comp.add_row(str(j), f"{p.weights[j]:.3f}", str(int(counts[j])), mean)
        self.console.print(comp)
        if written:
            self.console.print("wrote " + ", ".join(written), markup=False)

"""What ``export`` and ``verify`` print: a stage checklist and the per-output error table.

The checklist lists every stage with ✓ (done), ✗ (failed) or – (skipped) and one line of
detail, like torch's export status, and is printed even when a stage fails.
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

from rich.markup import escape
from rich.table import Table

from dyconv_deploy.tolerance import Comparison

DONE, FAILED, SKIPPED = "✓", "✗", "–"


@dataclass
class StageRow:
    """One stage of the checklist; ``detail`` may be set while the stage runs."""

    name: str
    status: str = SKIPPED
    detail: str = "not reached"
    seconds: float | None = None


class Checklist:
    """Stages in pipeline order; :meth:`stage` marks one done or failed, :meth:`skip` skips one."""

    def __init__(self, stages: Sequence[str]):
        self.rows = {name: StageRow(name) for name in stages}

    @contextmanager
    def stage(self, name: str) -> Iterator[StageRow]:
        """Run a stage: ✓ when the block ends, ✗ (with the error's first line) when it raises."""
        row = self.rows[name]
        row.detail = ""
        start = time.perf_counter()
        try:
            yield row
        except BaseException as exc:
            row.status = FAILED
            row.detail = row.detail or (str(exc).splitlines() or [type(exc).__name__])[0]
            raise
        else:
            row.status = DONE
        finally:
            row.seconds = time.perf_counter() - start

    def skip(self, name: str, reason: str) -> None:
        self.rows[name].status = SKIPPED
        self.rows[name].detail = reason

    def table(self, title: str) -> Table:
        table = Table("stage", "", "time", "detail", title=title, title_justify="left")
        for row in self.rows.values():
            style = {DONE: "green", FAILED: "red", SKIPPED: "dim"}[row.status]
            seconds = "" if row.seconds is None else f"{row.seconds:.1f}s"
            table.add_row(row.name, f"[{style}]{row.status}[/{style}]", seconds, escape(row.detail))  # not markup
        return table


def comparison_table(comparisons: Sequence[Comparison], backend: str) -> Table:
    """Max/mean absolute error per output and batch size, against PyTorch eager."""
    tolerance = comparisons[0].tolerance if comparisons else None
    title = f"{'engine' if backend == 'trt' else 'ONNX'} ({backend}) vs PyTorch eager" + (
        f", atol={tolerance.atol:g} rtol={tolerance.rtol:g}" if tolerance else "")
    table = Table("output", "max abs", "mean abs", "max rel", "smallest passing atol", "result", title=title,
                  title_justify="left")
    for c in comparisons:
        verdict = "[green]pass[/green]" if c.passed else "[red]FAIL[/red]"
        table.add_row(c.name, f"{c.max_abs:.3g}", f"{c.mean_abs:.3g}", f"{c.max_rel:.3g}", f"{c.required_atol:.3g}",
                      verdict)
    return table

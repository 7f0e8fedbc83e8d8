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
    """Per output and batch size, against PyTorch eager: max/mean absolute error, the error over
    the tolerance (``|a - b| / (atol + rtol·|b|)``, at most 1 passes) and the smallest atol that
    passes at the given rtol ("0 (rtol suffices)" when the rtol alone covers every element)."""
    tolerance = comparisons[0].tolerance if comparisons else None
    title = f"{'engine' if backend == 'trt' else 'ONNX'} ({backend}) vs PyTorch eager" + (
        f", atol={tolerance.atol:g} rtol={tolerance.rtol:g}" if tolerance else "")
    table = Table("output", "max abs", "mean abs", "error / tolerance", "smallest passing atol", "result",
                  title=title, title_justify="left", caption_justify="left",
                  caption="error / tolerance: max |a - b| / (atol + rtol·|b|); at most 1 passes")
    for c in comparisons:
        verdict = "[green]pass[/green]" if c.passed else "[red]FAIL[/red]"
        atol = f"{c.required_atol:.3g}" if c.required_atol > 0 else "0 (rtol suffices)"
        table.add_row(c.name, f"{c.max_abs:.3g}", f"{c.mean_abs:.3g}", f"{c.tolerance_used:.2g}", atol, verdict)
    return table

"""The progress bar of `fastivc bench`: rich.progress on stderr, driven by the
``progress(done, total, what)`` callback every benchmark takes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

Progress = Callable[[int, int, str], None]


def wanted(quiet: bool) -> bool:
    """A bar only for a person watching: stderr is a terminal and no --quiet."""
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(title: str, enabled: bool = True) -> Iterator[Progress | None]:
    """Yield a progress callback that drives a bar (None when not `enabled`).
    The bar stays on screen, complete, when the benchmark ends."""
    if not enabled:
        yield None
        return
    import rich.progress as rp
    from rich.console import Console

    columns = (rp.TextColumn("[bold]{task.fields[title]}"), rp.BarColumn(),
               rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TextColumn("left"),
               rp.TimeRemainingColumn(), rp.TextColumn("{task.description}"))
    with rp.Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("starting", total=None, title=title)

        def update(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        yield update

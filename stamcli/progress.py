"""Progress display and end-of-run summary for long jobs (rich, on stderr)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Videos per second since the start (steadier than rich's short-window estimate for batched work)."""

    def render(self, task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if not elapsed or not task.completed:
            return Text("- videos/s", style="cyan")
        return Text(f"{task.completed / elapsed:.2f} videos/s", style="cyan")


class RunProgress:
    """A progress bar with videos/s and ETA; ``start(total)`` then ``advance(record)`` per video.

    ``verb`` names the work in the bar and the summary: ``("tagging", "tagged")``, ``("embedding", "embedded")``.
    """

    def __init__(self, console: Console, enabled: bool = True, verb: tuple[str, str] = ("tagging", "tagged")):
        self.console = console
        self.enabled = enabled
        self.verb = verb
        self.failed = 0
        self._progress = Progress(
            TextColumn(f"[bold]{verb[0]}[/]{{task.fields[where]}}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TextColumn("failed: {task.fields[failed]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, disable=not enabled, transient=False,
        )
        self._task = None

    def __enter__(self) -> "RunProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start(self, total: int) -> None:
        self._task = self._progress.add_task(self.verb[0], total=total, failed=0, where="")

    def advance(self, record: dict) -> None:
        if record.get("type") == "window":  # a timeline window: show how far into its video the run is
            where = f" {Path(record['path']).name} at {timedelta(seconds=round(record['end_s']))}"
            self._progress.update(self._task, where=escape(where))
            return
        if record.get("type") == "event":  # made when its video is done: the video record follows
            return
        if record.get("status") != "ok":
            self.failed += 1
        self._progress.update(self._task, advance=1, failed=self.failed, where="")

    def print_summary(self, summary) -> None:
        where = f"; results in {summary.output}" if summary.output else ""
        skipped = f", {summary.skipped} already done" if summary.skipped else ""
        unsure = f" ({summary.unsure} unsure: no label reached --min-score/--thresholds)" if summary.unsure else ""
        colour = "red" if summary.failed else "green"
        self.console.print(
            f"[{colour}]{self.verb[1]} {summary.ok}{unsure}, failed {summary.failed}[/]{skipped} "
            f"in {summary.elapsed_s:.1f} s ({summary.videos_per_s:.2f} videos/s){where}",
            highlight=False,
        )
        if summary.interrupted:
            self.console.print(f"[yellow]interrupted[/]: what was {self.verb[1]} is saved; run again with --resume to continue")

"""The live table of a load run: rate achieved, in flight, dropped, errors
by type and percentiles per name, redrawn in place on a terminal at most
once a second (a timer in the coordinator's wait calls :meth:`LiveTable.show`)."""

from __future__ import annotations

from typing import TextIO

from taskmap.loadmode.report import LoadReport, format_rows


class LiveTable:
    """Draws the report on ``stream`` (a terminal: redrawn in place; any
    other stream: one block per refresh)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.lines = 0  # lines drawn last time (to move back over)

    def render(self, report: LoadReport, in_flight: int, elapsed: float) -> str:
        rate = report.started / elapsed if elapsed > 0 else 0.0
        head = (
            f"{elapsed:6.1f}s  rate {rate:8.1f}/s (target {report.target_rate:.1f})  in flight {in_flight}"
            f"  dropped {report.dropped}  done {report.completed}"
        )
        errors = report.errors()
        lines = [head, format_rows(report.summary)]
        if errors:
            lines.append(
                "errors: "
                + "; ".join(f"{name}: " + ", ".join(f"{t} x{n}" for t, n in e.items()) for name, e in errors.items())
            )
        return "\n".join(lines)

    def show(self, report: LoadReport, in_flight: int, elapsed: float) -> None:
        text = self.render(report, in_flight, elapsed)
        try:
            if self.tty and self.lines:
                self.stream.write(f"\x1b[{self.lines}F\x1b[J")
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            return
        self.lines = text.count("\n") + 1

    def close(self, report: LoadReport, in_flight: int) -> None:
        """The run ended: the last figures stay on screen."""
        self.show(report, in_flight, report.duration or 0.0)

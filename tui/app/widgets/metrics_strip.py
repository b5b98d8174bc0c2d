"""The metrics strip: one line above the prompt in a narrow terminal (live tok/s, TTFT,
context, memory), so the figures stay in sight when the Metrics pane does not fit beside the
conversation. It redraws on its own timer, like the pane, only when the figures changed."""

from __future__ import annotations

from textual.widgets import Static

from tui.app.stats import LiveStats
from tui.app.widgets.metrics_pane import REDRAW_S, strip_text


class MetricsStrip(Static):
    def __init__(self, stats: LiveStats, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.stats = stats
        self.drawn = -1  # the stats version last drawn

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(REDRAW_S, self._tick)

    def _tick(self) -> None:
        if self.stats.version != self.drawn and self.display:
            self.redraw()

    def redraw(self) -> None:
        self.drawn = self.stats.version
        self.update(strip_text(self.stats))

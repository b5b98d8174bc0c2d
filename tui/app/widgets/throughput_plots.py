"""Throughput plots (textual-plotext): tok/s over the current reply with its prefill marked,
and decode tok/s per reply across the conversation, both with axes and units.

A plot is redrawn from LiveStats at most every PLOT_S seconds and only when its data changed:
plotext draws in Python on the UI thread, and on a machine with few cores every redraw takes
time from the engine's threads (tui/app/app.py yield_cpu_to_engine).
"""

from __future__ import annotations

from textual_plotext import PlotextPlot

from tui.app.stats import LiveStats

PLOT_S = 1.0  # most redraws a second, per plot
MIN_BARS = 12  # the replies axis spans at least this many, so a few replies are not walls


class ThrottledPlot(PlotextPlot):
    def __init__(self, stats: LiveStats, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.stats = stats
        self.drawn: object = None  # the data last drawn

    def on_mount(self) -> None:
        self.replot()
        self.set_interval(PLOT_S, self.replot)

    def data(self) -> object:
        raise NotImplementedError

    def draw(self) -> None:
        raise NotImplementedError

    def replot(self) -> None:
        data = self.data()
        if data == self.drawn or not self.display:
            return
        self.drawn = data
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self.draw()
        self.refresh()


class ReplyCurve(ThrottledPlot):
    """tok/s against seconds since the request started; the prefill (to the first token) is
    the span before the vertical line."""

    def data(self) -> object:
        s = self.stats
        return (tuple(s.curve), s.first_s if s.tokens else None)

    def draw(self) -> None:
        s, plt = self.stats, self.plt
        plt.title("this reply: tok/s over time")
        plt.xlabel("s since sent")
        if s.curve:
            xs, ys = zip(*s.curve, strict=True)
            plt.plot(list(xs), list(ys), marker="braille")
            plt.ylim(0, max(ys) * 1.15)
            plt.xlim(0, max(xs))
        if s.tokens:
            plt.vline(s.first_s)  # prefill ends at the first token
            top = max((y for _, y in s.curve), default=1.0)
            plt.text("prefill", s.first_s / 2, top * 0.5, alignment="center")


class RepliesBars(ThrottledPlot):
    """Decode tok/s of each reply, numbered from 1."""

    def data(self) -> object:
        return tuple(self.stats.turns)

    def draw(self) -> None:
        turns, plt = list(self.stats.turns), self.plt
        plt.title("decode tok/s per reply")
        plt.xlabel("reply")
        if turns:
            first = self.stats.turns_seen - len(turns) + 1
            xs = list(range(first, first + len(turns)))
            plt.bar(xs, turns, width=0.6)
            plt.ylim(0, max(turns) * 1.15)
            plt.xlim(first - 0.5, max(xs[-1], first + MIN_BARS - 1) + 0.5)  # one reply: one bar

"""The Metrics pane: live decode tok/s, sparklines, TTFT, prefill, cache, context, memory.

It redraws from a LiveStats object on its own timer (2 Hz, only when something changed), so
however fast tokens arrive the cost per token is a few attribute updates.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Label, ProgressBar, Sparkline

from tui.app.stats import LiveStats

REDRAW_S = 0.5
MIB = 1024 * 1024


def _rate(value: float) -> str:
    return f"{value:,.1f} tok/s" if value > 0 else "—"


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / MIB:,.0f} MiB"


def metric_lines(stats: LiveStats) -> list[tuple[str, str]]:
    """The (label, value) rows of the pane; pure, so tests can read them."""
    m = stats.last
    mem = stats.memory
    gpu = "—"
    if mem is not None and mem.gpu_allocated_bytes is not None:
        gpu = f"{_mib(mem.gpu_allocated_bytes)} / {_mib(mem.gpu_reserved_bytes)}"
    rows = [
        ("decode", _rate(stats.decode_tok_s) + (" (live)" if stats.streaming else "")),
        ("TTFT", f"{m.ttft_s * 1000:,.0f} ms" if m else "—"),
        ("prefill", _rate(m.prefill_tok_s) if m else "—"),
        ("prompt", f"{m.cached_tokens} cached + {m.computed_tokens} new" if m else "—"),
        ("reply", f"{m.generated_tokens} tokens" if m else "—"),
        ("RSS", _mib(mem.rss_bytes) if mem else "—"),
        ("GPU", gpu + (" alloc/resv" if gpu != "—" else "")),
    ]
    if stats.model is not None:
        load = "cached" if stats.model.reused else f"{stats.model.load_s:.1f} s"
    else:
        load = "—"
    rows.append(("load", load))
    m_used, m_limit = (m.context_used, m.context_limit) if m else (0, 0)
    if not m_limit and stats.model is not None:
        m_limit = stats.model.context_length
    rows.append(("context", f"{m_used:,} / {m_limit:,} tokens" if m_limit else "—"))
    if m is not None and m.source:  # a remote profile: who measured which figure, a row each
        parts = m.source.split("; ")
        rows += [("source" if i == 0 else "", part) for i, part in enumerate(parts)]
    n, turns = stats.dropped_messages, stats.dropped_turns
    rows.append(("dropped", f"{n} msgs ({turns} turns)" if n else "none"))
    if m is not None and m.offload_bytes_per_token:  # weights streamed from CPU memory
        waiting = m.offload_wait_s / m.decode_s if m.decode_s > 0 else 0.0
        rows.append(
            (
                "offload",
                f"{m.offload_bytes_per_token / 2**30:.2f} GiB/token at {m.offload_gb_s:.1f} GB/s, "
                f"{waiting:.0%} waiting",
            )
        )
    return rows


class Figures(Widget):
    """The figures as text; a fixed height (one line per row, changed only when the offload
    row comes or goes), so a redraw is a repaint, never a relayout."""

    DEFAULT_CSS = "Figures { height: 10; }"

    def __init__(self, stats: LiveStats, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.stats = stats

    def render(self) -> Content:
        rows = metric_lines(self.stats)
        width = max(len(k) for k, _ in rows)
        return Content("\n").join(Content.assemble((f"{k:<{width}}  ", "dim"), v) for k, v in rows)


class MetricsPane(Vertical):
    BORDER_TITLE = "Metrics"

    def __init__(self, stats: LiveStats, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.stats = stats

    def compose(self) -> ComposeResult:
        yield Figures(self.stats, id="figures")
        yield Label("tok/s, recent tokens", classes="caption")
        yield Sparkline([], id="recent")
        yield Label("tok/s, recent replies", classes="caption")
        yield Sparkline([], id="turns")
        yield ProgressBar(total=1, show_eta=False, id="context")

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(REDRAW_S, self._tick)

    def _tick(self) -> None:
        if self.stats.dirty and self.display:
            self.redraw()

    def redraw(self) -> None:
        s = self.stats
        s.dirty = False
        figures = self.query_one(Figures)
        rows = len(metric_lines(s))
        if figures.styles.height is None or figures.styles.height.value != rows:
            figures.styles.height = rows
        figures.refresh()
        recent = list(s.recent)[-60:]
        spark = self.query_one("#recent", Sparkline)
        if spark.data != recent:
            spark.data = recent
        turns = self.query_one("#turns", Sparkline)
        if turns.data != list(s.turns):
            turns.data = list(s.turns)
        m = s.last
        if m is not None:
            self.query_one("#context", ProgressBar).update(
                total=max(m.context_limit, 1), progress=m.context_used
            )

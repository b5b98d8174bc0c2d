"""The Metrics pane: live decode tok/s, TTFT, prefill, cache, context, memory, where the
last reply's time went, its energy and cost, and tok/s over the current reply (the per-reply
plot, with room for it, is in the reply details: F9).

It redraws from a LiveStats object on its own timer (2 Hz, only when something changed), so
however fast tokens arrive the cost per token is a few attribute updates.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Label

from engine import BUSY_SHOWN, Done
from tui.app.stats import LiveStats
from tui.app.widgets.throughput_plots import ReplyCurve

REDRAW_S = 0.5
MIB = 1024 * 1024


def _rate(value: float) -> str:
    return f"{value:,.1f} tok/s" if value > 0 else "—"


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / MIB:,.0f} MiB"


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.0f} ms"


def context_text(stats: LiveStats) -> str:
    """ "52 / 512 tokens (30 cached)": the context so far, growing while the reply streams."""
    used, limit = stats.context_used, stats.context_limit
    if not limit:
        return "—"
    cached = f" ({stats.cached_tokens:,} cached)" if stats.cached_tokens else ""
    return f"{used:,} / {limit:,} tokens{cached}"


def strip_text(stats: LiveStats) -> str:
    """The one-line strip above the prompt in a narrow terminal: the figures people watch."""
    mem = stats.memory
    parts = [
        ("▶ " if stats.streaming else "") + _rate(stats.decode_tok_s),
        f"TTFT {_ms(stats.ttft_s)}",
        f"ctx {context_text(stats).replace(' tokens', '')}",
    ]
    if mem is not None:
        parts.append(f"RSS {_mib(mem.rss_bytes)}")
        if mem.gpu_allocated_bytes is not None:
            parts.append(f"VRAM {_mib(mem.gpu_allocated_bytes)}")
    return " · ".join(parts)


# ReplyTimings fields as the pane names them, in the order a reply goes through them
PHASE_LABELS = (
    ("queue_wait_s", "queue"),
    ("load_s", "load"),
    ("prompt_s", "prompt"),
    ("prefill_s", "prefill"),
    ("decode_forward_s", "forward"),
    ("offload_wait_s", "offload"),
    ("sample_s", "sample"),
    ("detokenize_s", "detok"),
)
PHASE_SHOWN = 0.005  # a phase under this share of the wall time is left out of the pane


def timing_rows(done: Done, render_lag_s: float = 0.0) -> list[tuple[str, str]]:
    """Where the reply's time went: its wall time, then each phase that took a visible share."""
    t = done.timings
    if t.wall_s <= 0:
        return []
    rows = [("time", f"{t.wall_s * 1000:,.0f} ms, submit to end")]
    phases = [(label, getattr(t, name)) for name, label in PHASE_LABELS]
    phases.append(("other", t.other_s))
    for label, seconds in phases:
        if seconds >= PHASE_SHOWN * t.wall_s:
            rows.append((f" {label}", f"{seconds * 1000:,.1f} ms {seconds / t.wall_s:4.0%}"))
    if render_lag_s > 0:
        rows.append((" render", f"{render_lag_s * 1000:,.0f} ms after it (UI)"))
    if t.other_cpu_share >= BUSY_SHOWN:
        rows.append(("busy", f"{t.other_cpu_share:.0%} other processes"))
    return rows


def session_energy(stats: LiveStats) -> str:
    """The session's energy so far, and its cost when priced."""
    session = f"{stats.session_energy_j:,.1f} J {stats.session_energy_source}"
    if stats.session_cost is not None:
        session += f", cost {stats.session_cost:,.4f}"
    return session


def energy_rows(stats: LiveStats) -> list[tuple[str, str]]:
    """The last reply's energy (and per 1,000 tokens), the session's, and the cost if priced."""
    done, m = stats.last_done, stats.last
    rows: list[tuple[str, str]] = []
    if done is not None and m is not None and done.energy is not None:
        e = done.energy
        per_1k = e.per_1k(m.computed_tokens + m.generated_tokens)
        rows.append(("energy", f"{e.joules:,.2f} J {e.source}, {per_1k:,.0f} J/1k tok"))
        rows.append(("session", session_energy(stats)))
    if done is not None and done.cost is not None:
        rows.append(("cost", f"{done.cost:,.4f} at your price"))
    return rows


def metric_lines(stats: LiveStats) -> list[tuple[str, str]]:
    """The (label, value) rows of the pane; pure, so tests can read them."""
    m = stats.last
    mem = stats.memory
    gpu = "—"
    if mem is not None and mem.gpu_allocated_bytes is not None:
        gpu = f"{_mib(mem.gpu_allocated_bytes)} / {_mib(mem.gpu_reserved_bytes)}"
    prompt = stats.prompt_tokens
    rows = [
        ("decode", _rate(stats.decode_tok_s) + (" (live)" if stats.streaming else "")),
        ("TTFT", _ms(stats.ttft_s)),
        ("prefill", _rate(m.prefill_tok_s) if m and not stats.streaming else "—"),
        (
            "prompt",
            f"{stats.cached_tokens} cached + {prompt - stats.cached_tokens} new" if prompt else "—",
        ),
        (
            "reply",
            f"{stats.tokens if stats.streaming else m.generated_tokens} tokens"
            if m or stats.streaming
            else "—",
        ),
        ("RSS", _mib(mem.rss_bytes) if mem else "—"),
    ]
    if gpu != "—":  # a CUDA model
        rows.append(("GPU", gpu + " alloc/resv"))
    if stats.model is not None:
        load = "cached" if stats.model.reused else f"{stats.model.load_s:.1f} s"
    else:
        load = "—"
    rows.append(("load", load))
    if m is not None and m.source:  # a remote profile: who measured which figure, a row each
        parts = m.source.split("; ")
        rows += [("source" if i == 0 else "", part) for i, part in enumerate(parts)]
    if m is not None and m.decode_step:  # a compiled step in play (engine/compiled.py)
        rows.append(("step", m.decode_step))
    if m is not None and m.draft_tokens:  # speculative = "prompt-lookup"
        rows.append(("drafts", f"{m.accepted_tokens} of {m.draft_tokens} tokens accepted"))
    elif m is not None and m.drafts_waited:  # on, but the compiled verify step is not built yet
        rows.append(("drafts", "none yet: verify step not built"))
    n, turns = stats.dropped_messages, stats.dropped_turns
    rows.append(("dropped", f"{n} msgs ({turns} turns)" if n else "none"))
    if stats.last_done is not None and not stats.streaming:
        rows += timing_rows(stats.last_done, stats.render_lag_s)
        rows += energy_rows(stats)
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


TWO_COLUMNS = 70  # a pane at least this wide (a bottom panel) sets its figures in two columns


def figure_columns(rows: list[tuple[str, str]], width: int) -> list[str]:
    """The rows as lines of "label  value", in two columns when the pane is wide enough."""

    def cells(part: list[tuple[str, str]]) -> list[str]:
        key_w = max((len(k) for k, _ in part), default=0)
        return [f"{k:<{key_w}}  {v}" for k, v in part]

    lines = cells(rows)
    if width >= TWO_COLUMNS:
        half = (len(rows) + 1) // 2
        left, right = cells(rows[:half]), cells(rows[half:])
        col_w = max(len(c) for c in left) + 3
        lines = [f"{a:<{col_w}}{b}" for a, b in zip(left, [*right, ""], strict=False)]
    return [c if len(c) <= width or width <= 0 else c[: width - 1] + "…" for c in lines]


class Figures(Widget):
    """The figures as text; a fixed height (one line per row, changed only when a row comes or
    goes or the columns change), so a redraw is a repaint, never a relayout."""

    DEFAULT_CSS = "Figures { height: 10; }"

    def __init__(self, stats: LiveStats, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.stats = stats

    def lines(self) -> list[str]:
        return figure_columns(metric_lines(self.stats), self.size.width)

    def render(self) -> Content:
        rows = metric_lines(self.stats)
        key_w = max(len(k) for k, _ in rows)
        out = []
        for line in self.lines():
            out.append(Content.assemble((line[:key_w], "dim"), line[key_w:]))
        return Content("\n").join(out)


class ContextBar(Widget):
    """The context used as a bar and a percentage on one line, drawn by render(): an update is
    a repaint. (Textual's ProgressBar relaid out the whole screen each time its label moved, a
    cost the UI thread takes from the engine's while a reply streams.)"""

    COMPONENT_CLASSES = {"context-bar--used", "context-bar--free"}
    DEFAULT_CSS = """
    ContextBar { height: 1; }
    ContextBar > .context-bar--used { color: $accent; }
    ContextBar > .context-bar--free { color: $foreground 15%; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.used = self.limit = 0

    def show(self, used: int, limit: int) -> None:
        if (used, limit) != (self.used, self.limit):
            self.used, self.limit = used, limit
            self.refresh()

    def render(self) -> Content:
        share = min(self.used / self.limit, 1.0) if self.limit > 0 else 0.0
        label = f" {share:4.0%}"
        width = max(self.size.width - len(label), 1)
        filled = round(share * width)
        return Content.assemble(
            ("━" * filled, self.get_visual_style("context-bar--used")),
            ("━" * (width - filled), self.get_visual_style("context-bar--free")),
            label,
        )


class MetricsPane(Vertical):
    BORDER_TITLE = "Metrics"

    def __init__(self, stats: LiveStats, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.stats = stats
        self.drawn = -1  # the stats version last drawn
        self.caption = ""  # the context caption, as drawn

    def compose(self) -> ComposeResult:
        yield Figures(self.stats, id="figures")
        yield ReplyCurve(self.stats, id="reply-plot")  # per reply across the chat: F9
        yield Label("context", classes="caption", id="context-caption")
        yield ContextBar(id="context")

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(REDRAW_S, self._tick)

    def on_resize(self) -> None:
        self.drawn = -1  # the columns may change

    def _tick(self) -> None:
        if self.stats.version != self.drawn and self.display:
            self.redraw()

    def redraw(self) -> None:
        s = self.stats
        self.drawn = s.version
        figures = self.query_one(Figures)
        rows = len(figures.lines())
        if figures.styles.height is None or figures.styles.height.value != rows:
            figures.styles.height = rows
        figures.refresh()
        caption = f"context {context_text(s)}"
        if caption != self.caption:  # one line across the pane: a repaint, not a relayout
            self.caption = caption
            self.query_one("#context-caption", Label).update(caption, layout=False)
        self.query_one(ContextBar).show(s.context_used, s.context_limit)

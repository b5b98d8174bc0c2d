"""The last reply's details (F9, or the palette): every phase of its time, its energy and
cost, and the throughput plots, at any terminal size. Esc or F9 closes it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from tui.app.stats import LiveStats
from tui.app.widgets.metrics_pane import PHASE_LABELS, energy_rows
from tui.app.widgets.throughput_plots import RepliesBars, ReplyCurve


def detail_lines(stats: LiveStats) -> list[str]:
    """The last reply's figures as lines: pure, so tests can read them."""
    done, m = stats.last_done, stats.last
    if done is None or m is None:
        return ["no reply yet"]
    t = done.timings
    wall = t.wall_s or t.accounted_s
    lines = [
        f"{m.generated_tokens} tokens, decode {m.decode_tok_s:,.1f} tok/s, "
        f"TTFT {m.ttft_s * 1000:,.0f} ms, stop: {done.stop_reason}",
        f"prompt {m.prompt_tokens} tokens ({m.cached_tokens} cached), "
        f"context {m.context_used:,} / {m.context_limit:,}",
        "",
        f"{'phase':<10}{'ms':>10}{'share':>8}",
    ]
    phases = [(label, getattr(t, name)) for name, label in PHASE_LABELS]
    phases.append(("other", t.other_s))
    for label, seconds in phases:
        share = f"{seconds / wall:.0%}" if wall > 0 else "—"
        lines.append(f"{label:<10}{seconds * 1000:>10,.1f}{share:>8}")
    lines.append(f"{'wall':<10}{t.wall_s * 1000:>10,.1f}")
    if stats.render_lag_s > 0:
        lines.append(f"{'render':<10}{stats.render_lag_s * 1000:>10,.1f}  (UI, after the wall)")
    lines.append(f"other processes: {t.other_cpu_share:.0%} of the CPU during the reply")
    lines.append("")
    lines += [f"{k:<10}{v}" for k, v in energy_rows(stats)]
    if done.energy is not None and done.energy.is_estimate:
        lines.append("estimate = this process's CPU seconds × cpu_watts_per_core (not measured)")
    return lines


class ReplyDetailsScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f9", "dismiss", "Close")]

    def __init__(self, stats: LiveStats) -> None:
        super().__init__()
        self.stats = stats

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="details"):
            yield Label("Last reply: where the time went", id="question")
            yield Static("\n".join(detail_lines(self.stats)), id="detail-figures")
            yield ReplyCurve(self.stats, id="details-reply-plot")
            yield RepliesBars(self.stats, id="details-replies-plot")

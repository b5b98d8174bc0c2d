"""A reply's details (F9, or the palette): every phase of its time, its energy and cost, and
the throughput plots, at any terminal size. It opens on the last reply; Left and Right step
through the others on screen (streamed this session or resumed from the store: each keeps the
record the store saves with it). Esc or F9 closes it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from engine import reply_record
from tui.app.stats import LiveStats
from tui.app.widgets.metrics_pane import PHASE_LABELS, session_energy
from tui.app.widgets.throughput_plots import RepliesBars, ReplyCurve

Record = Mapping[str, Any]  # a reply's figures, as engine.reply_record makes and the store keeps
BLANK: dict[str, Any] = {  # what an older record may lack
    "generated_tokens": 0,
    "decode_tok_s": 0.0,
    "ttft_s": 0.0,
    "stop_reason": "?",
    "prompt_tokens": 0,
    "cached_tokens": 0,
    "context_used": 0,
    "context_limit": 0,
}


def record_lines(record: Record, session: str = "") -> list[str]:
    """One reply's figures as lines, from its record: pure, so tests can read them.
    `session`: the session's energy (and cost) so far, shown under the reply's own."""
    t: Mapping[str, float] = record.get("timings") or {}
    r = {**BLANK, **record}
    lines = [
        f"{r['generated_tokens']} tokens, decode {r['decode_tok_s']:,.1f} tok/s, "
        f"TTFT {r['ttft_s'] * 1000:,.0f} ms, stop: {r['stop_reason']}",
        f"prompt {r['prompt_tokens']} tokens ({r['cached_tokens']} cached), "
        f"context {r['context_used']:,} / {r['context_limit']:,}",
    ]
    if not t:  # saved before replies kept their timings
        return [*lines, "", "no phase timings were saved with this reply"]
    wall = t.get("wall_s", 0.0) or sum(t.get(name, 0.0) for name, _ in PHASE_LABELS)
    lines += ["", f"{'phase':<10}{'ms':>10}{'share':>8}"]
    phases = [(label, t.get(name, 0.0)) for name, label in PHASE_LABELS]
    phases.append(("other", t.get("other_s", 0.0)))
    for label, seconds in phases:
        share = f"{seconds / wall:.0%}" if wall > 0 else "—"
        lines.append(f"{label:<10}{seconds * 1000:>10,.1f}{share:>8}")
    lines.append(f"{'wall':<10}{t.get('wall_s', 0.0) * 1000:>10,.1f}")
    if t.get("render_lag_s", 0.0) > 0:
        lag = t["render_lag_s"] * 1000
        lines.append(f"{'render':<10}{lag:>10,.1f}  (UI, after the wall)")
    lines.append(
        f"other processes: {t.get('other_cpu_share', 0.0):.0%} of the CPU during the reply"
    )
    lines.append("")
    if "energy_j" in record:
        joules, per_1k = record["energy_j"], record.get("energy_j_per_1k_tokens", 0.0)
        lines.append(
            f"{'energy':<10}{joules:,.2f} J {record.get('energy_source', '')}, "
            f"{per_1k:,.0f} J/1k tok"
        )
        if session:
            lines.append(f"{'session':<10}{session}")
    if record.get("cost") is not None:
        lines.append(f"{'cost':<10}{record['cost']:,.4f} at your price")
    if record.get("energy_source") == "estimate":
        lines.append("estimate = this process's CPU seconds × cpu_watts_per_core (not measured)")
    return lines


def last_record(stats: LiveStats) -> dict[str, Any] | None:
    """The last reply's record, with the render lag the app measured for it."""
    done = stats.last_done
    if done is None:
        return None
    timings = replace(done.timings, render_lag_s=stats.render_lag_s)
    return reply_record(replace(done, timings=timings))


def detail_lines(stats: LiveStats) -> list[str]:
    """The last reply's figures, with the session's energy so far."""
    record = last_record(stats)
    if record is None or stats.last is None:
        return ["no reply yet"]
    return record_lines(record, session_energy(stats))


class ReplyDetailsScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,f9", "dismiss", "Close"),
        Binding("left", "step(-1)", "Earlier reply"),
        Binding("right", "step(1)", "Later reply"),
    ]

    def __init__(self, stats: LiveStats, earlier: Sequence[Record | None] = ()) -> None:
        """`earlier`: the records of the replies on screen before the last one, oldest first
        (None: a reply that has none, e.g. stopped before its first token)."""
        super().__init__()
        self.stats = stats
        self.records = [*earlier, None]  # the last: drawn from the live stats
        self.at = len(self.records) - 1

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="details"):
            yield Label(self._title(), id="question")
            yield Static("\n".join(detail_lines(self.stats)), id="detail-figures")
            yield ReplyCurve(self.stats, id="details-reply-plot")
            yield RepliesBars(self.stats, id="details-replies-plot")

    def _title(self) -> str:
        count, n = len(self.records), self.at + 1
        which = "Last reply" if n == count else f"Reply {n} of {count}"
        steps = " (← → other replies)" if count > 1 else ""
        return f"{which}: where the time went{steps}"

    def action_step(self, delta: int) -> None:
        at = min(max(self.at + delta, 0), len(self.records) - 1)
        if at == self.at:
            return
        self.at = at
        last = at == len(self.records) - 1
        record = self.records[at]
        if last:
            lines = detail_lines(self.stats)
        elif record is None:
            lines = ["no figures were saved with this reply"]
        else:
            lines = record_lines(record)
        self.query_one("#question", Label).update(self._title())
        self.query_one("#detail-figures", Static).update("\n".join(lines))
        self.query_one("#details-reply-plot").display = last  # the curve is the last reply's

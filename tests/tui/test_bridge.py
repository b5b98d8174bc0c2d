"""The bridge's pacing: how long it waits between a reply's screen updates."""

from __future__ import annotations

from tui.app.bridge import BATCH_S, MAX_BATCH_S, UI_SHARE, Pacer


def test_a_busy_ui_thread_stretches_the_wait_up_to_its_cap() -> None:
    pacer = Pacer()
    waits = [pacer.next_wait(cpu_s=0.05, wall_s=0.3) for _ in range(10)]  # 17 % of the time
    assert waits[0] == BATCH_S * 1.25
    assert waits == sorted(waits)
    assert waits[-1] == MAX_BATCH_S


def test_an_idle_ui_thread_brings_the_wait_back_down() -> None:
    pacer = Pacer(wait_s=MAX_BATCH_S)
    waits = [pacer.next_wait(cpu_s=0.001, wall_s=MAX_BATCH_S) for _ in range(10)]
    assert waits[0] == MAX_BATCH_S * 0.8
    assert waits[-1] == BATCH_S


def test_a_share_between_half_and_the_target_keeps_the_wait() -> None:
    pacer = Pacer(wait_s=0.5)
    assert pacer.next_wait(cpu_s=0.75 * UI_SHARE * 0.5, wall_s=0.5) == 0.5
    assert pacer.next_wait(cpu_s=0.0, wall_s=0.0) == 0.5 * 0.8  # no time passed: no UI work

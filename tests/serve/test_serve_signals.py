"""`llama-tui serve` and real signals: SIGTERM or SIGHUP mid-stream cancels the reply, the
client's stream ends, and the server process is gone within 2 s with exit code 0 (loopback)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.peers import TEST_KEY, TEST_KEY_ENV, free_port, running, serve_argv


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_stream_stops_the_reply_and_the_server(
    tiny_gguf: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    config = tmp_path / "llama-tui.toml"
    config.write_text(
        f'[defaults]\nmodel = "{tiny_gguf.as_posix()}"\ndtype = "float32"\n'
        "context_length = 4096\ntemperature = 1.0\n"
    )
    port = free_port()
    with running(serve_argv(config, port), port, {TEST_KEY_ENV: TEST_KEY}) as peer:
        chunks: list[str] = []
        first = threading.Event()

        def stream() -> None:
            body = {"model": "x", "prompt": "once", "max_tokens": 3500, "stream": True}
            headers = {"Authorization": f"Bearer {TEST_KEY}"}
            try:
                with httpx.stream(
                    "POST", f"{peer.url}/completions", json=body, headers=headers, timeout=30
                ) as r:
                    for line in r.iter_lines():
                        chunks.append(line)
                        first.set()
            except httpx.HTTPError:
                pass  # a connection closed by the shutdown also ends the stream

        client = threading.Thread(target=stream, daemon=True)
        client.start()
        assert first.wait(60), "nothing streamed"
        time.sleep(0.3)
        t0 = time.monotonic()
        peer.proc.send_signal(sig)
        code = peer.proc.wait(10)
        took = time.monotonic() - t0
        client.join(5)
    assert code == 0 and took < 2.0, (code, took)
    assert not client.is_alive()
    data = [c for c in chunks if c.startswith("data: ")]
    assert 3 <= len(data) < 3500  # it streamed, and stopped long before max_tokens

"""Timings and memory figures carried by events."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

# GenerationMetrics.decode_step of a one-reply process (`ask`) that found no compiled step in the
# cache and builds none (engine/compiled.py load_cached_step)
STEP_NOT_BUILT = "eager (no compiled step built yet: `llama-tui prepare` builds it)"


@dataclass(frozen=True)
class GenerationMetrics:
    prompt_tokens: int = 0  # tokens in the prompt
    cached_tokens: int = 0  # of those, reused from the KV cache
    generated_tokens: int = 0
    decode_steps: int = 0  # forward passes after the first token
    ttft_s: float = 0.0  # request start -> first generated token
    prefill_s: float = 0.0
    decode_s: float = 0.0  # time for the tokens after the first
    context_used: int = 0  # tokens in the KV cache after the reply
    context_limit: int = 0
    offload_bytes_per_token: float = 0.0  # offload: weight bytes copied to the GPU per decode step
    offload_wait_s: float = 0.0  # offload: decode time spent waiting for those copies
    draft_tokens: int = 0  # speculative decoding: tokens proposed (engine/speculative.py)
    accepted_tokens: int = 0  # of those, tokens the model agreed with
    # steps that made no draft because the compiled verify step was not there yet (a background
    # build, or `llama-tui prepare` for `ask`): drafts are verified only like the step itself
    drafts_waited: int = 0
    # the one-token steps' code: "compiled", "eager, then compiled" (it became ready mid-reply),
    # "eager (compiled step building)", "eager (compiled step failed: why)", STEP_NOT_BUILT;
    # "" = eager with no compiled step in play, or remote
    decode_step: str = ""
    # remote: who measured what, one line ("" = all measured here by the local engine)
    source: str = ""
    server_prefill_tok_s: float = 0.0  # remote: the server's own prefill speed, 0 = not reported
    server_decode_tok_s: float = 0.0  # remote: the server's own decode speed, 0 = not reported

    @property
    def offload_gb_s(self) -> float:
        """Host->GPU copy rate during decode (GB/s), 0 without offload."""
        moved = self.offload_bytes_per_token * self.decode_steps
        return moved / self.decode_s / 1e9 if self.decode_s > 0 else 0.0

    @property
    def computed_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def prefill_tok_s(self) -> float:
        return self.computed_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        n = self.decode_steps
        return n / self.decode_s if self.decode_s > 0 and n > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(prefill_tok_s=self.prefill_tok_s, decode_tok_s=self.decode_tok_s)
        if self.offload_bytes_per_token:
            d["offload_gb_s"] = self.offload_gb_s
        return d


def rss_bytes() -> int:
    import psutil  # here: a metrics query, not every start, pays for its import

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def gpu_memory_bytes() -> tuple[int, int] | None:
    """(allocated, reserved) on the current CUDA device, or None without CUDA. A process that
    never imported torch (a remote profile) has nothing on a GPU: no import for it here."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()

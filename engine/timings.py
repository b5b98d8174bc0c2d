"""Where a reply's time went: each phase's seconds, accumulated from perf_counter deltas.

generate() times prefill, the decode forwards, sampling and detokenizing; the session adds
the prompt's templating and trimming, the offload streamer its copy waits, the engine queue
the wait for the engine thread (and any model load queued before the reply) and the wall time;
a front end adds its render lag. Nothing here synchronizes a device: on CUDA the forward
kernels run asynchronously, so their time shows up where the host first waits for a result
(sampling reads the chosen token back), not in ``decode_forward_s``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# the phases, in the order a reply goes through them (each a ReplyTimings field)
PHASES = (
    "queue_wait_s",
    "load_s",
    "prompt_s",
    "prefill_s",
    "decode_forward_s",
    "offload_wait_s",
    "sample_s",
    "detokenize_s",
)


@dataclass(frozen=True)
class ReplyTimings:
    queue_wait_s: float = 0.0  # submitted -> the engine thread took it (minus load_s)
    load_s: float = 0.0  # a model load that ran between submitting and starting the reply
    prompt_s: float = 0.0  # chat template, tokenizing, trimming the history to fit
    prefill_s: float = 0.0  # the prompt's forward passes (and the KV cache's prefix check)
    decode_forward_s: float = 0.0  # one-token forward passes, less offload_wait_s
    offload_wait_s: float = 0.0  # offload: forwards waiting for weights copied to the GPU
    sample_s: float = 0.0  # choosing each token from the logits (CUDA: + the forward's sync)
    detokenize_s: float = 0.0  # token ids -> text deltas
    render_lag_s: float = 0.0  # front end: the reply's end made by the engine -> on screen
    wall_s: float = 0.0  # submitted -> Done, as the engine queue saw it (0: not through one)
    other_cpu_share: float = 0.0  # other processes' share of all cores during the reply
    done_at: float = 0.0  # time.perf_counter() when the queue passed Done on (render lag)

    @property
    def accounted_s(self) -> float:
        """The phases' sum (render lag is after the wall time, so not in it)."""
        return sum(getattr(self, name) for name in PHASES)

    @property
    def other_s(self) -> float:
        """Wall time no phase accounts for: events handed to the consumer, memory figures."""
        return max(self.wall_s - self.accounted_s, 0.0)

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        del d["done_at"]
        d["other_s"] = self.other_s
        return {k: round(v, 6) for k, v in d.items()}

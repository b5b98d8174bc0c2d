"""Sampler math on hand-made distributions, and seeded determinism end to end."""

from __future__ import annotations

import math

import torch

from engine.config import SamplingSettings
from engine.events import Done
from engine.loaders import LoadedModel
from engine.sampling import (
    UNIFORM_BATCH,
    MirostatState,
    apply_presence_frequency,
    apply_repeat_penalty,
    candidates,
    chain_on_top_rows,
    draw,
    greedy,
    make_generator,
    min_p,
    mirostat_update,
    mirostat_v1,
    mirostat_v1_k,
    mirostat_v2,
    new_sampler_state,
    sample,
    top_k,
    top_p,
    top_rows,
    typical_p,
    uniform,
)
from engine.session import ChatSession

# probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625
PROBS = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> list[int]:
    return [i for i, v in enumerate(logits.tolist()) if v != -math.inf]


def test_top_k_keeps_the_k_largest() -> None:
    assert kept(top_k(LOGITS, 2)) == [0, 1]
    assert kept(top_k(LOGITS, 0)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    assert kept(top_p(LOGITS, 0.5)) == [0]
    assert kept(top_p(LOGITS, 0.6)) == [0, 1]
    assert kept(top_p(LOGITS, 0.8)) == [0, 1, 2]
    assert kept(top_p(LOGITS, 1.0)) == [0, 1, 2, 3, 4]
    shuffled = LOGITS[[3, 0, 4, 2, 1]]  # order of the vocabulary must not matter
    assert kept(top_p(shuffled, 0.6)) == [1, 4]


def test_min_p_is_relative_to_the_top_token() -> None:
    assert kept(min_p(LOGITS, 0.3)) == [0, 1]  # 0.3 * 0.5 = 0.15
    assert kept(min_p(LOGITS, 0.1)) == [0, 1, 2, 3, 4]


def test_repeat_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repeat_penalty(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]
    assert logits.tolist() == [2.0, -2.0, 1.0]  # input untouched


def test_presence_and_frequency_penalties_subtract_exact_amounts() -> None:
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = apply_presence_frequency(logits, [0, 2, 2, 2], presence=0.5, frequency=0.25)
    # token 0 seen once: 1 - (0.5 + 1 * 0.25); token 2 seen 3 times: 3 - (0.5 + 3 * 0.25)
    assert out.tolist() == [0.25, 2.0, 1.75, 4.0]
    assert logits.tolist() == [1.0, 2.0, 3.0, 4.0]  # input untouched
    negative = apply_presence_frequency(logits, [1, 1], presence=-1.0, frequency=-0.5)
    assert negative.tolist() == [1.0, 4.0, 3.0, 4.0]  # negative values encourage repeats
    assert apply_presence_frequency(logits, [0, 1], 0.0, 0.0) is logits  # off


def test_presence_penalty_uses_the_repeat_last_n_window() -> None:
    logits = torch.tensor([2.0, 1.9, 0.0])
    s = SamplingSettings(temperature=0.0, repeat_penalty=1.0, presence_penalty=0.2)
    assert sample(logits, s, [], make_generator(0)) == 0
    assert sample(logits, s, [0], make_generator(0)) == 1  # 2.0 - 0.2 < 1.9
    one = SamplingSettings(
        temperature=0.0, repeat_penalty=1.0, presence_penalty=0.2, repeat_last_n=1
    )
    assert sample(logits, one, [0, 2], make_generator(0)) == 0  # 0 is outside the window
    none = SamplingSettings(temperature=0.0, frequency_penalty=5.0, repeat_last_n=0)
    assert sample(logits, none, [0, 0], make_generator(0)) == 0


def test_typical_p_keeps_the_tokens_nearest_the_entropy() -> None:
    # surprise -ln p = ln2 * [1, 2, 3, 4, 4]; entropy H = ln2 * (.5 + .5 + .375 + .25 + .25)
    # = 1.875 ln2; |surprise - H| = ln2 * [.875, .125, 1.125, 2.125, 2.125], so the typical
    # order is 1, 0, 2, {3, 4} with cumulative mass .25, .75, .875, .9375, 1
    logp = LOGITS.log_softmax(-1)
    assert math.isclose(float(-(logp * logp.exp()).sum()), 1.875 * math.log(2), rel_tol=1e-6)
    assert kept(typical_p(LOGITS, 0.2)) == [1]  # not the most likely token: the most typical
    assert kept(typical_p(LOGITS, 0.5)) == [0, 1]
    assert kept(typical_p(LOGITS, 0.8)) == [0, 1, 2]
    assert kept(typical_p(LOGITS, 0.9)) == [0, 1, 2, 3, 4]  # 3 reaches p; 4 ties with it
    assert kept(typical_p(LOGITS, 1.0)) == [0, 1, 2, 3, 4]
    shuffled = LOGITS[[3, 0, 4, 2, 1]]  # order of the vocabulary must not matter
    assert kept(typical_p(shuffled, 0.5)) == [1, 4]


def test_mirostat_v2_truncates_by_surprise() -> None:
    # surprise -log2 p = [1, 2, 3, 4, 4] bits
    assert kept(mirostat_v2(LOGITS, 2.5)) == [0, 1]
    assert kept(mirostat_v2(LOGITS, 3.5)) == [0, 1, 2]
    assert kept(mirostat_v2(LOGITS, 1.5)) == [0]
    assert kept(mirostat_v2(LOGITS, 0.5)) == [0]  # the top token is always kept
    assert kept(mirostat_v2(LOGITS, 9.0)) == [0, 1, 2, 3, 4]


def test_mirostat_v2_draws_and_updates_mu() -> None:
    s = SamplingSettings(
        temperature=1.0, repeat_penalty=1.0, mirostat=2, mirostat_tau=1.25, mirostat_eta=0.1
    )
    state = new_sampler_state(s)
    assert state == MirostatState(mu=2.5)  # 2 * tau
    bits = [1.0, 2.0, 3.0, 4.0, 4.0]
    g = make_generator(7)
    seen = set()
    for _ in range(200):
        mu = state.mu
        keep = [i for i, b in enumerate(bits) if b <= mu] or [0]
        token = sample(LOGITS, s, [], g, state)
        assert token in keep
        seen.add(token)
        p = PROBS[token].item() / sum(PROBS[i].item() for i in keep)
        assert math.isclose(state.mu, mu - 0.1 * (-math.log2(p) - 1.25), rel_tol=1e-5)
    assert len(seen) > 1
    # the first draw by hand: mu = 2.5 keeps {0, 1} with probabilities 2/3, 1/3
    first = MirostatState(mu=2.5)
    token = sample(LOGITS, s, [], make_generator(0), first)
    p = {0: 2 / 3, 1: 1 / 3}[token]
    assert math.isclose(first.mu, 2.5 - 0.1 * (-math.log2(p) - 1.25), rel_tol=1e-6)
    assert mirostat_update(2.5, 0.5, 1.25, 0.1) == 2.5 - 0.1 * (1.0 - 1.25)


def test_mirostat_v1_k_follows_the_zipf_estimate() -> None:
    vocab, s_true = 1000, 1.2
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    logits = (-s_true * ranks.log()).float()  # p_i proportional to 1 / i^s: Zipf
    eps = s_true - 1
    for mu in (3.0, 5.0, 8.0, 10.0):
        expected = (eps * 2**mu / (1 - vocab ** (-eps))) ** (1 / s_true)
        assert abs(expected - round(expected)) > 0.01  # not on an integer edge
        k = mirostat_v1_k(logits, mu)
        assert k == max(int(expected), 1)
        assert len(kept(mirostat_v1(logits, mu))) == k
        order = torch.randperm(vocab, generator=torch.Generator().manual_seed(int(mu)))
        assert mirostat_v1_k(logits[order], mu) == k  # vocabulary order does not matter
    assert mirostat_v1_k(logits, 0.0) == 1
    assert mirostat_v1_k(torch.zeros(10), 5.0) == 10  # flat: no estimate, keep all


def test_mirostat_same_seed_and_state_same_draws() -> None:
    logits = torch.randn(300, generator=torch.Generator().manual_seed(0)) * 3
    for version in (1, 2):
        s = SamplingSettings(temperature=0.8, mirostat=version, mirostat_tau=3.0, seed=1)
        runs = []
        for _ in range(2):
            g, state = make_generator(5), new_sampler_state(s)
            runs.append(([sample(logits, s, [1, 2], g, state) for _ in range(40)], state.mu))
        assert runs[0] == runs[1]
        assert runs[0][1] != 6.0  # mu moved
    greedy = SamplingSettings(temperature=0.0, mirostat=2)
    state = new_sampler_state(greedy)
    assert sample(logits, greedy, [], make_generator(0), state) == int(logits.argmax())
    assert state.mu == 10.0  # temperature 0 is greedy and leaves mu alone


def test_greedy_and_seeded_sampling() -> None:
    greedy = SamplingSettings(temperature=0.0)
    assert sample(LOGITS, greedy, [], make_generator(0)) == 0
    s = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    g1, g2 = make_generator(123), make_generator(123)
    a = [sample(LOGITS, s, [], g1) for _ in range(50)]
    b = [sample(LOGITS, s, [], g2) for _ in range(50)]
    assert a == b
    # empirical frequencies follow the distribution
    g = make_generator(1)
    counts = torch.bincount(
        torch.tensor([sample(LOGITS, s, [], g) for _ in range(4000)]), minlength=5
    )
    assert torch.allclose(counts / 4000, PROBS, atol=0.03)
    # top-k 1 is greedy whatever the temperature
    one = SamplingSettings(temperature=5.0, top_k=1)
    assert {sample(LOGITS, one, [], g) for _ in range(20)} == {0}


def test_same_seed_same_tokens_end_to_end(default_model: LoadedModel) -> None:
    s = SamplingSettings(temperature=1.2, top_k=50, top_p=0.95, min_p=0.0, seed=42)

    def run(settings: SamplingSettings) -> list[int]:
        events = ChatSession(default_model).send("Tell me a story.", settings, 16)
        return [e for e in events if isinstance(e, Done)][0].token_ids

    first = run(s)
    assert run(s) == first
    assert len(first) > 0
    other = SamplingSettings(temperature=1.2, top_k=50, top_p=0.95, min_p=0.0, seed=43)
    assert run(other) != first


def test_mirostat_state_lives_with_the_conversation(default_model: LoadedModel) -> None:
    s = SamplingSettings(temperature=1.0, mirostat=2, mirostat_tau=3.0, mirostat_eta=0.5, seed=1)
    session = ChatSession(default_model)
    list(session.send("Tell me a story.", s, 8))
    assert session.sampler_state is not None
    mu = session.sampler_state.mu
    assert mu != 2 * 3.0  # updated by the draws of the first reply
    list(session.send("Go on.", s, 8))
    assert session.sampler_state.mu != mu  # carried into the next turn and updated again
    session.clear()
    assert session.sampler_state is None  # a new conversation starts from 2 * tau


def test_top_k_first_keeps_what_the_full_vocabulary_chain_keeps() -> None:
    """candidates() filters only top-k's survivors; the tokens kept and their probabilities
    equal running temperature, top-k, typical-p, top-p and min-p over the whole vocabulary."""
    gen = torch.Generator().manual_seed(0)
    for settings in (
        SamplingSettings(),  # the defaults: top-k 40, top-p 0.95, min-p 0.05
        SamplingSettings(temperature=1.3, top_k=200, top_p=0.5, min_p=0.0, typical_p=0.9),
        SamplingSettings(temperature=0.5, top_k=0, top_p=0.9, min_p=0.1),
    ):
        logits = torch.randn(49152, generator=gen) * 4
        full = logits / settings.temperature
        full = top_k(full, settings.top_k)
        full = typical_p(full, settings.typical_p)
        full = min_p(top_p(full, settings.top_p), settings.min_p).softmax(-1)
        ids, probs = candidates(logits, settings)
        fast = torch.zeros_like(full).index_put_((ids,), probs)
        assert sorted(ids[probs > 0].tolist()) == kept(full.log())
        torch.testing.assert_close(fast, full, atol=1e-6, rtol=1e-5)


def test_the_default_chain_on_top_rows_keeps_what_the_whole_vocabulary_keeps() -> None:
    """top_rows (penalty on the k + U largest, then the chain in Python) keeps the same
    tokens with the same probabilities as penalizing all 49,152 logits, then candidates()."""
    gen = torch.Generator().manual_seed(5)
    rng = torch.Generator().manual_seed(6)
    settings = [
        SamplingSettings(),  # the defaults: top-k 40, top-p 0.95, min-p 0.05, repeat 1.1
        SamplingSettings(temperature=1.3, top_k=200, top_p=0.5, min_p=0.0, repeat_penalty=1.5),
        SamplingSettings(temperature=0.4, top_k=5, top_p=1.0, min_p=0.2, repeat_penalty=1.0),
        SamplingSettings(temperature=2.0, top_k=40, top_p=0.99, min_p=0.0, repeat_last_n=0),
    ]
    for n, s in enumerate(settings * 5):
        assert chain_on_top_rows(s, 49152)
        logits = torch.randn(49152, generator=gen) * 4
        top = logits.topk(80).indices.tolist()
        # a window of recent tokens, many of them among the largest logits (as in a chat)
        picks = torch.randint(0, 80, (48,), generator=rng).tolist()
        window = [top[i] for i in picks] + torch.randint(0, 49152, (16,), generator=rng).tolist()
        window = window[-s.repeat_last_n :] if s.repeat_last_n else []
        ids, probs = candidates(apply_repeat_penalty(logits, window, s.repeat_penalty), s)
        expected = {i: p for i, p in zip(ids.tolist(), probs.tolist(), strict=True) if p > 0}
        rows, weights = top_rows(logits, s, window)
        total = sum(weights)
        got = {i: w / total for i, w in zip(rows, weights, strict=True) if w > 0}
        assert got.keys() == expected.keys(), n
        for i, p in expected.items():
            assert math.isclose(got[i], p, rel_tol=1e-5, abs_tol=1e-7), (n, i)
        assert weights[0] == 1.0 and weights == sorted(weights, reverse=True)


def test_draws_follow_the_weights_and_a_seed_repeats_them() -> None:
    weights = [8.0, 4.0, 2.0, 1.0, 0.0, 1.0]
    g = make_generator(1)
    counts = [0] * len(weights)
    for _ in range(4000):
        counts[draw(weights, g)] += 1
    assert counts[4] == 0  # a weight of zero is never drawn
    for c, w in zip(counts, weights, strict=True):
        assert abs(c / 4000 - w / 16) < 0.03
    # the uniforms are the seed's torch.rand stream, in order, across batch boundaries
    g1, g2 = make_generator(9), make_generator(9)
    stream = [uniform(g1) for _ in range(UNIFORM_BATCH + 10)]
    assert stream[:UNIFORM_BATCH] == torch.rand(UNIFORM_BATCH, generator=g2).tolist()
    assert stream[UNIFORM_BATCH:] == torch.rand(UNIFORM_BATCH, generator=g2).tolist()[:10]


def test_the_default_chain_samples_from_its_distribution() -> None:
    """sample() at the default settings draws each kept token as often as its probability."""
    s = SamplingSettings(top_k=3, top_p=1.0, min_p=0.0, repeat_penalty=1.0, temperature=1.0)
    logits = torch.full((1000,), -20.0)
    logits[[7, 70, 700]] = PROBS[:3].log()  # 0.5, 0.25, 0.125, renormalized over the three
    g = make_generator(2)
    counts = {7: 0, 70: 0, 700: 0}
    for _ in range(4000):
        counts[sample(logits, s, [], g)] += 1
    for token, p in zip((7, 70, 700), (4 / 7, 2 / 7, 1 / 7), strict=True):
        assert abs(counts[token] / 4000 - p) < 0.03


def test_greedy_picks_as_torch_argmax_does() -> None:
    """The first of tied maxima, a NaN over any number, any dtype and a strided view."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(49152, generator=gen)
    logits[[100, 200, 300]] = 9.0  # a three-way tie: the first wins
    cases = [logits, logits.double(), logits.bfloat16(), logits[::2], logits.clone()]
    cases[-1][4000] = math.nan
    for case in cases:
        assert greedy(case) == int(torch.argmax(case))
    assert greedy(logits) == 100 and greedy(cases[-1]) == 4000

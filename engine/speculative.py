"""Prompt-lookup decoding: draft tokens copied from the conversation itself, verified at once.

When a reply quotes, rewrites or summarizes text the prompt already holds, the next few tokens
often repeat a span seen before. ``PromptLookup`` finds the latest earlier occurrence of the
last few tokens (an n-gram, longest first) and proposes the tokens that followed it. The
generation loop (engine/generate.py) feeds the last token and the draft in one forward
(``generate.verify``), which returns one logits row per fed token. It samples from the rows in
order, exactly as plain decoding would, and goes on while each sampled token equals the draft's
next one. The first token that differs is still a correct sample; the rejected draft tokens are
dropped from the KV cache. So each emitted token is drawn from the same distribution, with the
same random draws, as one-token-at-a-time decoding, whatever the sampler settings. The
arithmetic is the same too: a short chunk attends one query row at a time (engine/model.py,
ROW_BY_ROW) and the int4 kernel's rows do not depend on their neighbours, so greedy output is
identical to eager decoding (tests/engine/test_speculative.py). Once the one-token step is
compiled, drafts are verified by a compiled verify step, whose rows are the compiled step's bit
for bit; until there is one, no drafts are made (generate.drafts_verified_alike).

A forward over 1 + k tokens costs more than a one-token step: on torch's CPU int4 kernel, 4
rows cost about 1.7 one-row calls and 9 rows 4.7 (it works through rows in fours), so a draft
is 3 tokens at most and a compiled verify step takes exactly ``VERIFY_TOKENS`` (a shorter draft
is padded; engine/compiled.py builds it for profiles with ``speculative`` on, and
tests/engine/test_compiled.py checks its rows). Drafting backs off after a draft rejected
outright (``judged``), longer after each one in a row: that keeps open chat, where little
repeats, near plain decoding's speed.
"""

from __future__ import annotations

from collections.abc import Sequence

MODES = ("off", "prompt-lookup")
DRAFT_TOKENS = 3  # tokens proposed per draft at most
VERIFY_TOKENS = DRAFT_TOKENS + 1  # a verify forward's tokens: the last one, then the draft
NGRAM_MAX = 4  # the longest suffix looked up
# the shortest: two tokens (", and", "of the") repeat too often to predict what follows them,
# and a verify forward costs 1.75 one-token steps; with 3, open chat drafted 3 times in 127
# tokens instead of 8 (6 rejected outright), and a rewrite took 84 drafted tokens, not 66
NGRAM_MIN = 3
BACKOFF = 4  # after a draft with nothing accepted, this many tokens decode without drafting,
BACKOFF_MAX = 64  # twice as many after each further one in a row, up to this


class PromptLookup:
    """N-gram drafts from the token ids so far (the prompt, then each accepted token)."""

    def __init__(self, ids: Sequence[int], draft_tokens: int = DRAFT_TOKENS) -> None:
        self.ids: list[int] = list(ids)
        self.draft_tokens = draft_tokens
        self._index: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest follower is
        self._indexed = 0  # n-grams ending before this position are in the index
        self._quiet = 0  # tokens left to decode without drafting (backoff)
        self._backoff = BACKOFF  # the quiet spell after the next draft rejected outright
        self.drafted = 0  # tokens proposed, in all
        self.accepted = 0  # of those, tokens the model agreed with

    def push(self, token: int) -> None:
        self.ids.append(token)

    def _extend_index(self) -> None:
        ids = self.ids
        stop = len(ids) - 1  # the last token has no follower yet
        for end in range(self._indexed, stop):  # the n-grams ending at ids[end]
            for n in range(NGRAM_MIN, NGRAM_MAX + 1):
                if end + 1 >= n:
                    self._index[tuple(ids[end + 1 - n : end + 1])] = end + 1
        self._indexed = max(self._indexed, stop)

    def draft(self, room: int) -> list[int]:
        """Up to ``min(room, draft_tokens)`` tokens that followed the current suffix before."""
        if self._quiet > 0:
            self._quiet -= 1
            return []
        limit = min(room, self.draft_tokens)
        if limit <= 0:
            return []
        self._extend_index()
        ids = self.ids
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if len(ids) < n:
                continue
            at = self._index.get(tuple(ids[-n:]))
            if at is not None:
                found = ids[at : at + limit]
                self.drafted += len(found)
                return found
        return []

    def judged(self, proposed: int, accepted: int) -> None:
        """How a draft of ``proposed`` tokens fared: nothing accepted starts a backoff, twice as
        long as the last one if that draft failed too; a token accepted ends the doubling."""
        self.accepted += accepted
        if not proposed:
            return
        if accepted:
            self._backoff = BACKOFF
        else:
            self._quiet = self._backoff
            self._backoff = min(2 * self._backoff, BACKOFF_MAX)

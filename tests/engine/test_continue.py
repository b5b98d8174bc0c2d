"""Continue and files through the controller: the real engine queue over the tiny model, a real
store. A continued reply reuses the KV cache and joins into the reply one longer run gives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from engine.chat_format import encode_raw
from engine.config import Profile, SamplingSettings
from engine.conversation import Conversation, Turn
from engine.errors import UserError
from engine.events import Done, Failed, TokenEvent
from engine.local import LocalBackend
from engine.queue import EngineQueue, LoadRequest, ModelReady, QueueEvent
from engine.store import ConversationStore


@pytest.fixture
def profile(tiny_profile: Profile) -> Profile:
    return replace(tiny_profile, context_length=256)


def run(chat: Conversation, turn: Turn) -> list[QueueEvent]:
    return list(chat.events(turn.ticket))


def done(events: list[QueueEvent]) -> Done:
    [end] = [e for e in events if isinstance(e, Done)]
    return end


def test_a_reply_cut_by_length_continues_from_the_cache(
    engine: EngineQueue, store: ConversationStore, profile: Profile
) -> None:
    chat = Conversation(engine, store, profile=replace(profile, max_new_tokens=12))
    whole = done(run(chat, chat.send("tell me a story")))
    assert whole.stop_reason == "length" and len(whole.token_ids) == 12

    chat.restart()
    chat.profile = replace(profile, max_new_tokens=5)
    first = done(run(chat, chat.send("tell me a story")))
    assert first.stop_reason == "length" and first.token_ids == whole.token_ids[:5]
    chat.profile = replace(profile, max_new_tokens=7)
    events = run(chat, chat.continue_reply())
    rest = done(events)
    assert rest.metrics.computed_tokens <= 1  # no re-prefill: the cache held prompt + reply
    assert rest.metrics.cached_tokens == rest.metrics.prompt_tokens - 1
    assert rest.metrics.generated_tokens == 7
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == whole.token_ids[5:]
    assert rest.token_ids == whole.token_ids and rest.text == whole.text  # the joined reply
    rows = store.messages(chat.conv or 0)
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", "tell me a story"),
        ("assistant", whole.text),
    ]  # the saved reply was extended, not added to
    assert chat.length == 2


def test_continue_needs_a_reply(engine: EngineQueue, profile: Profile) -> None:
    chat = Conversation(engine, profile=profile)
    [failed] = [e for e in run(chat, chat.continue_reply()) if isinstance(e, Failed)]
    assert failed.message == "there is no reply to continue: the last message is not a reply"


def test_a_resumed_reply_continues_after_rebuilding_its_cache(
    engine: EngineQueue, store: ConversationStore, profile: Profile
) -> None:
    chat = Conversation(engine, store, profile=replace(profile, max_new_tokens=4))
    first = done(run(chat, chat.send("count with me")))
    conv = chat.conv or 0
    other = Conversation(engine, store, profile=replace(profile, max_new_tokens=4))
    other.resume(store, conv)
    rest = done(run(other, other.continue_reply()))
    assert rest.text.startswith(first.text) and len(rest.token_ids) >= 4
    assert store.messages(conv)[-1]["content"] == rest.text


# Files into the context ----------------------------------------------------------------------


def test_a_file_goes_into_the_next_message_and_the_store(
    engine: EngineQueue, store: ConversationStore, profile: Profile, tmp_path: Path
) -> None:
    note = tmp_path / "notes.txt"
    note.write_text("line one\nline two\n")
    chat = Conversation(engine, store, profile=profile)
    file = chat.attach(note)
    backend = engine.backend
    assert isinstance(backend, LocalBackend) and backend.session is not None
    tok = backend.session.loaded.tokenizer
    assert file.tokens == len(encode_raw(tok, file.wrapped)) and file.tokens > 0
    assert file.describe() == f"notes.txt · 18 B · {file.tokens} tokens"
    done(run(chat, chat.send("what does it say?")))
    sent = backend.session.messages[0].content
    assert sent == '<file name="notes.txt">\nline one\nline two\n\n</file>\n\nwhat does it say?'
    assert chat.attachments == []  # one message only
    [row] = store.messages(chat.conv or 0)[:1]
    assert row["content"] == sent
    assert store.get(chat.conv or 0)["title"] == "what does it say?"
    [a] = store.attachments(row["id"])
    assert (a["path"], a["size"], a["tokens"], a["text"]) == (
        str(note.resolve()),
        18,
        file.tokens,
        "line one\nline two\n",
    )
    assert a["sha256"] == file.sha256 and len(a["sha256"]) == 64


def test_files_that_cannot_go_in_are_refused_with_one_line(
    engine: EngineQueue, profile: Profile, tmp_path: Path
) -> None:
    chat = Conversation(engine, profile=replace(profile, max_new_tokens=8))  # context 256
    big = tmp_path / "big.log"
    big.write_text("error at line 12 of the parser\n" * 60)
    with pytest.raises(UserError) as exc:
        chat.attach(big)
    message = str(exc.value)
    assert message.startswith("big.log needs ") and "but the context has 248 left" in message
    assert "(a 248-token prompt budget of context_length 256, 0 in use)" in message
    small = tmp_path / "small.log"
    small.write_text("error at line 12 of the parser\n" * 15)
    first = chat.attach(small)  # fits alone; a second copy does not fit beside it
    with pytest.raises(UserError, match=rf"but the context has {248 - first.tokens} left"):
        chat.attach(small)
    assert chat.attachments == [first]
    chat.attachments.clear()
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x7fELF\x00\x01\x02")
    with pytest.raises(UserError, match=r"blob.bin: a binary file; only text files"):
        chat.attach(binary)
    with pytest.raises(UserError, match=r"missing.txt: no such file"):
        chat.attach(tmp_path / "missing.txt")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.txt: not UTF-8 text"):
        chat.attach(latin)
    with pytest.raises(UserError, match=r"is a folder"):
        chat.attach(tmp_path)
    assert chat.attachments == []


def test_the_default_model_reads_the_secret_word_from_a_file(tmp_path: Path) -> None:
    # SmolLM2-135M-Instruct (the embedded model), float32 on the CPU, greedy without a repeat
    # penalty answers exactly: 'The secret word in the file is "pineapple".'
    greedy = SamplingSettings(temperature=0.0, seed=0, repeat_penalty=1.0)
    profile = Profile(
        "default",
        device="cpu",
        dtype="float32",
        context_length=1024,
        max_new_tokens=24,
        compile=False,
        sampling=greedy,
    )
    queue = EngineQueue(LocalBackend())
    try:
        assert isinstance(list(queue.submit(LoadRequest(profile)))[-1], ModelReady)
        secret = tmp_path / "secret.txt"
        secret.write_text(
            "The meeting is on Tuesday.\nThe secret word is pineapple.\nBring a pen.\n"
        )
        chat = Conversation(queue, profile=profile)
        file = chat.attach(secret)
        assert file.describe() == "secret.txt · 70 B · 32 tokens"
        reply = done(run(chat, chat.send("What is the secret word in the file?")))
        backend = queue.backend
        assert isinstance(backend, LocalBackend) and backend.session is not None
        assert "The secret word is pineapple." in backend.session.messages[0].content
        assert reply.text == 'The secret word in the file is "pineapple".'
        assert reply.stop_reason == "stop" and reply.metrics.prompt_tokens == 73
    finally:
        queue.close()

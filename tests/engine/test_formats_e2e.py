"""Meta and Hugging Face folders end to end: weights + tokenizer + chat format through one path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.args import ModelArgs
from engine.chat_format import Message
from engine.config import SamplingSettings
from engine.errors import ModelLoadError
from engine.events import Done
from engine.loaders import load_model
from engine.model import Transformer
from engine.placement import Placement
from engine.session import ChatSession
from tests.engine.test_tokenizers_more import train_spm

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def spm_model() -> bytes:
    return train_spm()


def n_pieces(proto: bytes) -> int:
    import sentencepiece

    return int(sentencepiece.SentencePieceProcessor(model_proto=proto).get_piece_size())


def write_meta_folder(folder: Path, proto: bytes, vocab: int) -> Path:
    params = {
        "dim": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "vocab_size": vocab,
        "multiple_of": 32,
        "norm_eps": 1e-5,
    }
    args = ModelArgs.from_params_json(params, vocab_size_hint=None, source="test")
    torch.manual_seed(0)
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    torch.save(model.state_dict(), folder / "consolidated.00.pth")
    (folder / "tokenizer.model").write_bytes(proto)
    return folder


def test_meta_folder_chats_with_llama2_format(tmp_path: Path, spm_model: bytes) -> None:
    folder = write_meta_folder(tmp_path / "llama2-tiny", spm_model, n_pieces(spm_model))
    loaded = load_model(folder, placement=Placement(CPU, torch.float32), context_length=256)
    assert loaded.chat_template is None and loaded.tokenizer.add_bos
    session = ChatSession(loaded, system_prompt="Be brief.")
    done = [e for e in session.send("hello world", GREEDY, 4) if isinstance(e, Done)][0]
    assert done.metrics.prompt_tokens > 0
    assert session.formatter is not None and session.formatter.name == "llama2"
    ids = session.prompt_ids(session.messages[:1])
    assert ids[0] == loaded.tokenizer.bos_id
    assert "[INST]" in loaded.tokenizer.decode(ids) and "<<SYS>>" in loaded.tokenizer.decode(ids)


def test_cli_loads_a_meta_folder_with_a_separate_tokenizer(
    tmp_path: Path, spm_model: bytes
) -> None:
    folder = write_meta_folder(tmp_path / "ckpt", spm_model, n_pieces(spm_model))
    tok = tmp_path / "elsewhere" / "spm.bin"
    tok.parent.mkdir()
    (folder / "tokenizer.model").rename(tok)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    cmd = [
        sys.executable,
        "-m",
        "tui.cli.main",
        "ask",
        "--model",
        str(folder),
        "--json",
        "--temperature",
        "0",
        "--max-new-tokens",
        "3",
        "--chat-format",
        "chatml",
    ]
    missing = subprocess.run([*cmd, "hi"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "no tokenizer found" in missing.stderr
    assert "Traceback" not in missing.stderr
    ok = subprocess.run(
        [*cmd, "--tokenizer", str(tok), "hi"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["prompt_tokens"] > 0


def test_tokenizer_that_does_not_fit_the_vocabulary(tmp_path: Path, spm_model: bytes) -> None:
    folder = write_meta_folder(tmp_path / "small", spm_model, 64)
    with pytest.raises(ModelLoadError, match="the tokenizer has .* tokens but the model's"):
        load_model(folder, placement=Placement(CPU, torch.float32), context_length=64)


def test_hf_folder_through_load_model_matches_transformers(
    tmp_path: Path, spm_model: bytes
) -> None:
    transformers = pytest.importorskip("transformers")
    vocab = n_pieces(spm_model)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path / "hf-tiny"
    hf.save_pretrained(folder, safe_serialization=True)
    (folder / "tokenizer.model").write_bytes(spm_model)
    loaded = load_model(folder, placement=Placement(CPU, torch.float32), context_length=128)
    session = ChatSession(loaded)
    ids = session.prompt_ids([Message("user", "hi")])
    with torch.inference_mode():
        ours = loaded.model(torch.tensor([ids]))
        theirs = hf(torch.tensor([ids])).logits
    assert (ours - theirs).abs().max().item() < 1e-4

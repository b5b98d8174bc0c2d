"""One tiny random Llama saved in every layout llama-tui loads; each must give the same logits.

Tolerances: the float32 layouts (Meta .pth, one or two shards; HF safetensors, one file or
sharded; GGUF F32) hold the very same float32 numbers, permuted at most, so logits must agree
to 1e-6 (measured: exactly equal). GGUF Q8_0 rounds each weight to 8 bits per block of 32;
measured 1.4e-2 on logits of magnitude ~2.1, allowed 0.1; bfloat16 measured 1.2e-2, allowed
0.05. transformers' LlamaForCausalLM on the HF copy is a different implementation
(rotate-half rope, its own attention): measured 4.8e-7, allowed 1e-4. That parity is what
proves the q/k un-permutation runs in the right direction: without it logits differ by 0.17.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from engine.args import ModelArgs, RopeScaling
from engine.errors import ModelLoadError
from engine.loaders import load_model
from engine.loaders.gguf import load_gguf_weights
from engine.loaders.gguf_file import GGUFFile
from engine.loaders.hf import load_hf_weights, unpermute_rope
from engine.loaders.meta import SPLIT_DIM, load_meta_weights
from engine.model import Transformer
from engine.offload import streamer_of
from engine.placement import Placement

CPU = torch.device("cpu")
F32 = torch.float32
EXACT = 1e-6
Q8_ATOL = 0.1
HF_ATOL = 1e-4
PARAMS = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 128,
    "multiple_of": 32,  # FFN width 4*64 -> 170 -> 192
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
}
TOKENS = torch.tensor([[1, 17, 99, 3, 64, 127, 0, 42, 42, 7, 88, 101]])


def logits_of(model: Transformer) -> torch.Tensor:
    model.init_rope(64, CPU)
    with torch.inference_mode():
        return model(TOKENS)


@pytest.fixture(scope="module")
def original() -> Transformer:
    args = ModelArgs.from_params_json(PARAMS, vocab_size_hint=None, source="test")
    torch.manual_seed(0)
    model = Transformer(args).eval()
    with torch.no_grad():  # norms away from 1 so a misplaced norm shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def reference(original: Transformer) -> torch.Tensor:
    return logits_of(original)


@pytest.fixture(scope="module")
def state(original: Transformer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in original.state_dict().items()}


def write_meta(folder: Path, shards: list[dict[str, torch.Tensor]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(PARAMS))
    for i, shard in enumerate(shards):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    return folder


def split_like_model_parallel(state: dict[str, torch.Tensor], n: int) -> list[dict[str, Any]]:
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for name, tensor in state.items():
        key = name.split(".", 2)[-1] if name.startswith("layers.") else name
        dim = SPLIT_DIM.get(key.removesuffix(".weight"))
        parts = [tensor] * n if dim is None else list(tensor.chunk(n, dim=dim))
        for shard, part in zip(shards, parts, strict=True):
            shard[name] = part.clone()
    for shard in shards:  # old Meta checkpoints carry the rotary table: ignored
        shard["rope.freqs"] = torch.ones(8)
    return shards


def permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """transformers' convert_llama_weights_to_hf permute: Meta interleaved -> rotate-half."""
    rows, dim = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


HF_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {
        "model.embed_tokens.weight": state["tok_embeddings.weight"],
        "model.norm.weight": state["norm.weight"],
        "lm_head.weight": state["output.weight"],
    }
    for i in range(PARAMS["n_layers"]):
        for ours, theirs in HF_NAMES.items():
            w = state[f"layers.{i}.{ours}.weight"]
            if ours == "attention.wq":
                w = permute_for_hf(w, PARAMS["n_heads"])
            elif ours == "attention.wk":
                w = permute_for_hf(w, PARAMS["n_kv_heads"])
            out[f"model.layers.{i}.{theirs}.weight"] = w
    return out


def hf_llama(tied: bool) -> Any:
    """transformers' LlamaForCausalLM with PARAMS' dimensions (random weights)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def hf_model(state: dict[str, torch.Tensor]) -> Any:
    model = hf_llama(tied=False)
    model.load_state_dict(to_hf_state(state), strict=True)
    return model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("formats")


def write_gguf(path: Path, state: dict[str, torch.Tensor], qtype: GGMLQuantizationType) -> Path:
    w = GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", PARAMS["n_layers"])
    w.add_uint32("llama.context_length", 256)
    w.add_uint32("llama.embedding_length", PARAMS["dim"])
    w.add_uint32("llama.feed_forward_length", 192)
    w.add_uint32("llama.attention.head_count", PARAMS["n_heads"])
    w.add_uint32("llama.attention.head_count_kv", PARAMS["n_kv_heads"])
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32("llama.vocab_size", PARAMS["vocab_size"])
    gguf_names = {
        "attention_norm": "attn_norm",
        "attention.wq": "attn_q",
        "attention.wk": "attn_k",
        "attention.wv": "attn_v",
        "attention.wo": "attn_output",
        "ffn_norm": "ffn_norm",
        "feed_forward.w1": "ffn_gate",
        "feed_forward.w2": "ffn_down",
        "feed_forward.w3": "ffn_up",
    }
    top = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
    for name, tensor in state.items():
        stem = name.removesuffix(".weight")
        if stem.startswith("layers."):
            _, i, rest = stem.split(".", 2)
            target = f"blk.{i}.{gguf_names[rest]}.weight"
        else:
            target = f"{top[stem]}.weight"
        data = tensor.numpy().astype(np.float32)
        if qtype == GGMLQuantizationType.F32 or data.ndim == 1:
            w.add_tensor(target, data)
        else:  # GGUF keeps Meta's q/k layout: no permutation
            w.add_tensor(target, quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- every layout gives the original's logits -----------------------------------------------


def test_meta_single_shard(models_dir: Path, state: Any, reference: torch.Tensor) -> None:
    folder = write_meta(models_dir / "meta1", [state])
    model, args = load_meta_weights(folder, placement=Placement(CPU, F32))
    assert args.ffn_dim == 192 and not args.tie_embeddings
    assert (logits_of(model) - reference).abs().max().item() <= EXACT


def test_meta_two_shards(models_dir: Path, state: Any, reference: torch.Tensor) -> None:
    folder = write_meta(models_dir / "meta2", split_like_model_parallel(state, 2))
    model, _ = load_meta_weights(folder, placement=Placement(CPU, F32))
    assert (logits_of(model) - reference).abs().max().item() <= EXACT


def test_meta_shards_in_numeric_order(models_dir: Path, state: Any, reference: Any) -> None:
    # shard 2 before shard 10, though "consolidated.10.pth" sorts first as a string
    folder = write_meta(models_dir / "meta-order", split_like_model_parallel(state, 2))
    (folder / "consolidated.00.pth").rename(folder / "consolidated.2.pth")
    (folder / "consolidated.01.pth").rename(folder / "consolidated.10.pth")
    model, _ = load_meta_weights(folder, placement=Placement(CPU, F32))
    assert (logits_of(model) - reference).abs().max().item() <= EXACT


def test_meta_bfloat16(models_dir: Path, state: Any, reference: torch.Tensor) -> None:
    folder = write_meta(models_dir / "meta1bf", [state])
    model, _ = load_meta_weights(folder, placement=Placement(CPU, torch.bfloat16))
    assert model.tok_embeddings.weight.dtype == torch.bfloat16
    assert (logits_of(model) - reference).abs().max().item() < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("shard_size", [None, "20KB"])
def test_hf_safetensors(
    models_dir: Path, hf_model: Any, reference: torch.Tensor, shard_size: str | None
) -> None:
    folder = models_dir / f"hf-{shard_size}"
    kwargs = {} if shard_size is None else {"max_shard_size": shard_size}
    hf_model.save_pretrained(folder, safe_serialization=True, **kwargs)
    sharded = (folder / "model.safetensors.index.json").is_file()
    assert sharded == (shard_size is not None)
    model, args = load_hf_weights(folder, placement=Placement(CPU, F32))
    assert args.ffn_dim == 192 and args.n_kv_heads == 2
    ours = logits_of(model)
    assert (ours - reference).abs().max().item() <= EXACT
    with torch.inference_mode():
        theirs = hf_model(TOKENS).logits.float()
    assert (ours - theirs).abs().max().item() < HF_ATOL


@pytest.mark.slow
def test_hf_weights_go_through_the_placement(models_dir: Path, hf_model: Any) -> None:
    """Folders are placed tensor by tensor like GGUF files: offload (CPU compute here) gives
    the resident model's logits exactly."""
    folder = models_dir / "hf-placed"
    hf_model.save_pretrained(folder, safe_serialization=True)
    resident, _ = load_hf_weights(folder, placement=Placement(CPU, F32))
    offloaded, _ = load_hf_weights(
        folder, placement=Placement(CPU, F32, offload=True, offload_exclusion=frozenset({"w1"}))
    )
    assert streamer_of(offloaded) is not None and streamer_of(resident) is None
    assert torch.equal(logits_of(offloaded), logits_of(resident))


@pytest.mark.slow
def test_hf_reference_is_the_same_model(hf_model: Any, reference: torch.Tensor) -> None:
    """transformers, on the permuted copy, computes what our model computes on the original."""
    with torch.inference_mode():
        theirs = hf_model(TOKENS).logits.float()
    assert (theirs - reference).abs().max().item() < HF_ATOL


@pytest.mark.slow
def test_hf_tied_embeddings(models_dir: Path, state: Any) -> None:
    hf = hf_llama(tied=True)
    hf_state = {k: v for k, v in to_hf_state(state).items() if k != "lm_head.weight"}
    hf.load_state_dict(hf_state, strict=False)
    hf.save_pretrained(models_dir / "hf-tied", safe_serialization=True)
    model, args = load_hf_weights(models_dir / "hf-tied", placement=Placement(CPU, F32))
    assert args.tie_embeddings and model.output is None
    with torch.inference_mode():
        theirs = hf(TOKENS).logits.float()
    assert (logits_of(model) - theirs).abs().max().item() < HF_ATOL


def test_unpermute_inverts_transformers_permute() -> None:
    w = torch.randn(4 * 16, 64)
    assert torch.equal(unpermute_rope(permute_for_hf(w, 4), 4), w)
    assert not torch.equal(permute_for_hf(w, 4), w)


@pytest.mark.parametrize(
    ("qtype", "atol"), [(GGMLQuantizationType.F32, EXACT), (GGMLQuantizationType.Q8_0, Q8_ATOL)]
)
def test_gguf(
    models_dir: Path,
    state: Any,
    reference: torch.Tensor,
    qtype: GGMLQuantizationType,
    atol: float,
) -> None:
    path = write_gguf(models_dir / f"tiny-{qtype.name}.gguf", state, qtype)
    model, _, _, _ = load_gguf_weights(GGUFFile(path), placement=Placement(CPU, F32))
    diff = (logits_of(model) - reference).abs().max().item()
    assert diff <= atol
    if qtype != GGMLQuantizationType.F32:
        assert diff > 0  # really quantized


# --- args from each format's config -------------------------------------------------------


def test_params_json_ffn_width_as_meta_computes_it() -> None:
    llama2 = {"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256, "vocab_size": -1}
    args = ModelArgs.from_params_json(llama2, vocab_size_hint=32000, source="params.json")
    assert (args.ffn_dim, args.vocab_size, args.n_kv_heads, args.rope_theta) == (
        11008,
        32000,
        32,
        10000.0,
    )
    llama31 = {
        "dim": 4096,
        "n_layers": 32,
        "n_heads": 32,
        "n_kv_heads": 8,
        "vocab_size": 128256,
        "multiple_of": 1024,
        "ffn_dim_multiplier": 1.3,
        "norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "use_scaled_rope": True,
    }
    args = ModelArgs.from_params_json(llama31, vocab_size_hint=None, source="params.json")
    assert args.ffn_dim == 14336 and args.rope_scaling == RopeScaling()
    assert args.rope_theta == 500000.0


def test_hf_config_llama3_rope_scaling() -> None:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
        "head_dim": 64,
    }
    args = ModelArgs.from_hf_config(cfg, source="config.json")
    assert args.rope_scaling == RopeScaling(factor=32.0)
    assert args.tie_embeddings and args.head_dim == 64 and args.max_seq_len == 131072
    linear = {**cfg, "rope_scaling": {"type": "linear", "factor": 4.0}}
    assert ModelArgs.from_hf_config(linear, source="config.json").rope_linear_factor == 4.0


# --- bad input: one line naming the file -----------------------------------------------------


def one_line_error(exc: pytest.ExceptionInfo[ModelLoadError], *names: str) -> str:
    text = str(exc.value)
    assert "\n" not in text
    for name in names:
        assert name in text, text
    return text


def test_missing_params_json(models_dir: Path, state: Any) -> None:
    folder = models_dir / "no-params"
    folder.mkdir()
    torch.save(state, folder / "consolidated.00.pth")
    with pytest.raises(ModelLoadError) as exc:
        load_meta_weights(folder, placement=Placement(CPU, F32))
    one_line_error(exc, "params.json", "no-params")
    with pytest.raises(ModelLoadError) as exc:  # the dispatcher says the same, before tokenizers
        load_model(folder, placement=Placement(CPU, F32), context_length=64)
    one_line_error(exc, "missing params.json", "no-params")


def test_folder_of_nothing_known(models_dir: Path) -> None:
    folder = models_dir / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError) as exc:
        load_model(folder, placement=Placement(CPU, F32), context_length=64)
    one_line_error(exc, "params.json", "config.json", "empty")


def test_shards_that_disagree(models_dir: Path, state: Any) -> None:
    shards = split_like_model_parallel(state, 2)
    shards[1]["layers.0.feed_forward.w1.weight"] = torch.zeros(96, 32)  # wrong input width
    folder = write_meta(models_dir / "bad-shards", shards)
    with pytest.raises(ModelLoadError) as exc:
        load_meta_weights(folder, placement=Placement(CPU, F32))
    one_line_error(exc, "consolidated.01.pth", "consolidated.00.pth", "feed_forward.w1")


def test_shards_with_different_tensors(models_dir: Path, state: Any) -> None:
    shards = split_like_model_parallel(state, 2)
    del shards[1]["norm.weight"]
    folder = write_meta(models_dir / "odd-shards", shards)
    with pytest.raises(ModelLoadError) as exc:
        load_meta_weights(folder, placement=Placement(CPU, F32))
    one_line_error(exc, "consolidated.01.pth", "norm.weight")


def test_other_architecture_refused(models_dir: Path) -> None:
    folder = models_dir / "mistral"
    folder.mkdir()
    cfg = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 64}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError) as exc:
        load_hf_weights(folder, placement=Placement(CPU, F32))
    one_line_error(exc, "config.json", "MistralForCausalLM")


class Payload:
    """Unpickling this would call print: code in a checkpoint, which weights_only refuses."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("pwned",))


def test_pickle_with_code_refused(
    models_dir: Path, state: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_meta(models_dir / "evil", [{**state, "extra": Payload()}])
    with pytest.raises(ModelLoadError) as exc:
        load_meta_weights(folder, placement=Placement(CPU, F32))
    one_line_error(exc, "consolidated.00.pth", "pickled Python objects")
    assert "pwned" not in capsys.readouterr().out


def test_hf_unknown_tensor_named(models_dir: Path, hf_model: Any) -> None:
    from safetensors.torch import save_file

    folder = models_dir / "hf-bias"
    hf_model.save_pretrained(folder, safe_serialization=True)
    tensors = dict(hf_model.state_dict())
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError) as exc:
        load_hf_weights(folder, placement=Placement(CPU, F32))
    one_line_error(exc, "model.safetensors", "q_proj.bias")

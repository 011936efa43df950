"""Writing a transformers llama folder as one GGUF file for llama.cpp, tensor by tensor
(memory: the largest tensor, not the model), with the ``gguf`` package of the llama.cpp
project: the hyperparameters, the SentencePiece vocabulary (plus the tokens training added),
the special tokens and the chat template. A library module of the ``export`` plugin, not a
plugin itself.

Quantization: ``f32``, ``f16``, ``bf16`` and ``q8_0`` (norms stay float32, as llama.cpp's own
converter keeps them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airo.core import ConfigError

QUANTS = ("f32", "f16", "bf16", "q8_0")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` ({} when missing or not an object); ConfigError when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


# -- the GGUF file -----------------------------------------------------------------------------

def _permute(weights, n_head: int):
    """q/k projection rows from transformers' rotary layout (halves) to llama.cpp's (pairs)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _qtype(quant: str, name: str, shape: tuple[int, ...]):
    import gguf

    if len(shape) == 1 or quant == "f32" or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    if quant == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.GGMLQuantizationType.Q8_0
    if quant == "bf16":
        return gguf.GGMLQuantizationType.BF16
    return gguf.GGMLQuantizationType.F16


def _file_type(quant: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]


def _convert(array, qtype):
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def _vocab(sp_file: Path, tokenizer, n_vocab: int):
    """(tokens, scores, types) for ``tokenizer.ggml``: the SentencePiece pieces, the tokens the
    training tokenizer added after them, padding up to the embedding's rows."""
    import gguf
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(sp_file))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        kind = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            kind = gguf.TokenType.BYTE
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(sp.GetScore(i))
        types.append(kind)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for text, token_id in sorted(tokenizer.get_added_vocab().items(), key=lambda item: item[1]):
        if token_id < len(tokens):
            continue
        if token_id != len(tokens):
            raise ConfigError(f"the tokenizer's added token {text!r} has id {token_id}, but the vocabulary has "
                              f"{len(tokens)} tokens before it: GGUF needs consecutive ids")
        tokens.append(text.encode("utf-8"))
        scores.append(-1000.0)
        types.append(gguf.TokenType.CONTROL if token_id in special else gguf.TokenType.USER_DEFINED)
    if len(tokens) > n_vocab:
        raise ConfigError(f"the tokenizer has {len(tokens)} tokens but the model's embedding only {n_vocab} rows")
    while len(tokens) < n_vocab:
        tokens.append(f"[PAD{len(tokens)}]".encode("utf-8"))
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    return tokens, scores, types


def _adds_dummy_prefix(sp_file: Path) -> bool:
    """SentencePiece's ``add_dummy_prefix`` (a space before the text), which llama.cpp must copy."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_file.read_bytes())
    return bool(proto.normalizer_spec.add_dummy_prefix)


def _hyperparameters(config: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        hidden, n_head = int(config["hidden_size"]), int(config["num_attention_heads"])
        params = {"hidden": hidden, "n_head": n_head, "n_kv": int(config.get("num_key_value_heads") or n_head),
                  "layers": int(config["num_hidden_layers"]), "ffn": int(config["intermediate_size"]),
                  "context": int(config.get("max_position_embeddings") or 2048),
                  "eps": float(config.get("rms_norm_eps") or 1e-5), "vocab": int(config["vocab_size"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a llama config ({type(exc).__name__}: {exc})") from None
    params["head_dim"] = int(config.get("head_dim") or hidden // n_head)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    params["rope_theta"] = float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ("default", "linear"):
        raise ConfigError(f"{path}: rope scaling {rope_type!r} is not supported by airo's GGUF export yet "
                          "(default and linear are); use llama.cpp's convert_hf_to_gguf.py on the merged model")
    params["rope_linear"] = float(rope.get("factor") or 1.0) if rope_type == "linear" else None
    if config.get("sliding_window") and config.get("use_sliding_window", True) \
            and int(config["sliding_window"]) < params["context"]:
        raise ConfigError(f"{path}: sliding-window attention is not part of llama.cpp's llama architecture")
    params["tied"] = bool(config.get("tie_word_embeddings"))
    return params


def _tensor_plan(model_dir: Path, params: dict[str, Any], quant: str):
    """[(gguf name, hf name, file, transform, shape, qtype)] for every tensor, in file order."""
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, params["layers"])
    plan = []
    for file in sorted(p for p in model_dir.iterdir() if p.suffix == ".safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for hf_name in handle.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ConfigError(f"{file.name}: no GGUF name for tensor {hf_name!r} (not a llama model?)")
                shape = tuple(handle.get_slice(hf_name).get_shape())
                heads = (params["n_head"] if hf_name.endswith("q_proj.weight")
                         else params["n_kv"] if hf_name.endswith("k_proj.weight") else None)
                plan.append((name, hf_name, file, heads, shape, _qtype(quant, name, shape)))
    present = {p[0] for p in plan}
    if "output.weight" not in present and not params["tied"]:
        raise ConfigError(f"{model_dir}: the model has no lm_head weights and does not tie them to the embeddings")
    return plan


def write_gguf(model_dir: Path, out_file: Path, quant: str, *, sp_file: Path, name: str,
               chat_template: str | None) -> None:
    """Write ``model_dir`` (a transformers llama folder) as a GGUF file, tensor by tensor."""
    import gguf
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoTokenizer

    if quant not in QUANTS:
        raise ConfigError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r} (smaller quants: run "
                          "llama.cpp's llama-quantize on the f16 file)")
    config_path = model_dir / "config.json"
    params = _hyperparameters(read_json(config_path), config_path)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    plan = _tensor_plan(model_dir, params, quant)

    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_context_length(params["context"])
    writer.add_embedding_length(params["hidden"])
    writer.add_block_count(params["layers"])
    writer.add_feed_forward_length(params["ffn"])
    writer.add_head_count(params["n_head"])
    writer.add_head_count_kv(params["n_kv"])
    writer.add_rope_dimension_count(params["head_dim"])
    writer.add_key_length(params["head_dim"])
    writer.add_value_length(params["head_dim"])
    writer.add_rope_freq_base(params["rope_theta"])
    if params["rope_linear"]:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(params["rope_linear"])
    writer.add_layer_norm_rms_eps(params["eps"])
    writer.add_vocab_size(params["vocab"])
    writer.add_file_type(_file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, scores, types = _vocab(sp_file, tokenizer, params["vocab"])
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(_adds_dummy_prefix(sp_file))
    special = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    special.chat_template = chat_template or special.chat_template
    special.add_to_gguf(writer, quiet=True)

    for gguf_name, _hf, _file, _heads, shape, qtype in plan:
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
            writer.add_tensor_info(gguf_name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
            writer.add_tensor_info(gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                                   raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    handles: dict[Path, Any] = {}
    try:
        for _name, hf_name, file, heads, _shape, qtype in plan:
            if file not in handles:
                handles[file] = safe_open(str(file), framework="pt")
            tensor = handles[file].get_tensor(hf_name).float()
            if heads is not None:
                tensor = _permute(tensor, heads)
            writer.write_tensor_data(_convert(tensor.numpy(), qtype))
    finally:
        handles.clear()
        writer.close()

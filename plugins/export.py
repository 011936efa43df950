"""The built-in ``export`` plugin: a trained model as one GGUF file for llama.cpp, with an
Ollama ``Modelfile`` beside it (``airo export gguf RUN``, or the ``gguf`` post-training
action with ``--export_gguf QUANT``).

A LoRA adapter is merged into its base first, by the merge plugin's one implementation
(QLoRA adapters through the 4-bit round trip they were trained against), into a temporary
folder. The weights are then converted one tensor at a time (memory: the largest tensor,
not the model) with the ``gguf`` package of the llama.cpp project: llama-architecture
models (Llama 1/2/3, Mistral without sliding window, TinyLlama, ...) with a SentencePiece
vocabulary (``tokenizer.model``, from the run or its base model). The tokenizer, its
special tokens and the run's chat template (the one airo checked against the training
prompts) are embedded, so ``llama-cli`` and Ollama prompt the model as it was trained.

Quantization: ``f32``, ``f16``, ``bf16`` and ``q8_0`` (norms stay float32, as llama.cpp's
own converter keeps them); smaller k-quants are made from the f16 file with llama.cpp's
``llama-quantize``, which the Modelfile's comment says.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from airo.core import hookimpl
from airo.core.atomic import (atomic_directory, check_inputs_outside, check_replaceable, check_separate,
                              register_kind)
from airo.core.errors import ConfigError
from airo.core.types import ActionOutput

QUANTS = ("f32", "f16", "bf16", "q8_0")
EXPORT_KIND = register_kind("gguf export", "a GGUF export")
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
WEIGHT_SUFFIXES = (".safetensors",)


@dataclass
class ExportResult:
    out: str
    gguf: str
    quant: str
    source: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"Exported {self.source} as GGUF ({self.quant}).",
                 f"  gguf file: {self.gguf}",
                 f"  Ollama:    ollama create NAME -f {Path(self.out) / 'Modelfile'}",
                 f"  llama.cpp: llama-cli -m {self.gguf} -cnv"]
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


# -- what is being exported --------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def training_info(run: Path) -> dict[str, Any]:
    """What airo recorded about the training: beside an adapter or a full model
    (``airo_training.json``), or inside a merged model's ``airo_merge.json``."""
    info = _read_json(run / "airo_training.json")
    return info or _read_json(run / "airo_merge.json").get("training", {}) or {}


def check_export_source(run: str | os.PathLike) -> str:
    """``adapter`` or ``model``: what ``run`` holds. ConfigError naming the problem otherwise."""
    path = Path(run)
    if not path.is_dir():
        raise ConfigError(f"{str(run)!r} is not a folder: pass a run's output dir (an adapter or a model)")
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        config = _read_json(path / "config.json")
        archs = config.get("architectures") or []
        if not any(a in ARCHITECTURES for a in archs):
            raise ConfigError(f"{path / 'config.json'}: GGUF export supports llama-architecture models "
                              f"({', '.join(ARCHITECTURES)}), this one is {', '.join(archs) or 'of no stated architecture'}")
        if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
            raise ConfigError(f"{path} has no .safetensors weights to export")
        return "model"
    raise ConfigError(f"{path} holds neither a LoRA adapter (adapter_config.json) nor a model (config.json)")


@contextlib.contextmanager
def model_folder(run: Path, *, log: Callable[[str], None]) -> Iterator[Path]:
    """A folder with the model's full weights: ``run`` itself, or the adapter merged into its
    base in a temporary folder (removed afterwards)."""
    if check_export_source(run) == "model":
        yield run
        return
    from airo.plugins.merging import merge_adapter

    scratch = Path(tempfile.mkdtemp(prefix="airo-export-"))
    try:
        merged = scratch / "merged"
        log("export: merging the adapter into its base first")
        merge_adapter(None, str(run), str(merged), dtype="float32", log=log)
        yield merged
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def sentencepiece_file(model_dir: Path, run: Path, info: dict[str, Any]) -> Path:
    """The SentencePiece model of the vocabulary: in the run, the merged folder or the base."""
    candidates = [run, model_dir]
    if info.get("base_model"):
        candidates.append(Path(info["base_model"]))
    adapter_base = _read_json(run / "adapter_config.json").get("base_model_name_or_path")
    if adapter_base:
        candidates.append(Path(adapter_base))
    for folder in candidates:
        if (folder / "tokenizer.model").is_file():
            return folder / "tokenizer.model"
    raise ConfigError("GGUF export needs the SentencePiece vocabulary (tokenizer.model) of a llama tokenizer; none "
                      f"in {', '.join(str(c) for c in dict.fromkeys(candidates))}")


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
    params = _hyperparameters(_read_json(config_path), config_path)
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


# -- Ollama ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OllamaTemplate:
    """The run's prompt template as Ollama's Go TEMPLATE over ``.System`` and ``.Messages``,
    read off the template's own rendering, and the strings that end a reply."""

    text: str
    stops: tuple[str, ...]


def ollama_template(template, bos: str, eos: str) -> OllamaTemplate | None:
    """The Go form of ``template``, or None when its rendering is not one text per turn
    (then Ollama falls back to the chat template embedded in the GGUF file).

    The pieces between the messages are cut out of renderings of probe conversations, and
    the result is accepted only if it rebuilds every prompt airo renders for one and two
    turns, with and without a system message, exactly (so for any number of turns: each
    turn adds the same text). llama.cpp adds the BOS token itself, so it is left out.
    """
    from airo.core.types import Conversation, Message

    S, U1, A1, U2, A2 = "\x00S\x00", "\x00U1\x00", "\x00A1\x00", "\x00U2\x00", "\x00A2\x00"

    def render(*messages) -> tuple[str, str]:
        """(the prompt before the last reply, the whole text), BOS left out."""
        conv = Conversation([Message(role, content) for role, content in messages])
        segments = template.render(conv, bos_token=bos, eos_token=eos)
        last = max((i for i, seg in enumerate(segments) if seg.reply), default=None)
        if last is None:
            raise ValueError("no reply segment")
        texts = ["".join(seg.text for seg in segments[:last]), "".join(seg.text for seg in segments)]
        return tuple(t[len(bos):] if bos and t.startswith(bos) else t for t in texts)  # type: ignore[return-value]

    def cut(text: str, marks: list[str]) -> list[str] | None:
        pieces, start = [], 0
        for mark in marks:
            pos = text.find(mark, start)
            if pos < 0:
                return None
            pieces.append(text[start:pos])
            start = pos + len(mark)
        return [*pieces, text[start:]]

    try:
        one_prompt, one = render(("user", U1), ("assistant", A1))
        one_s_prompt, _ = render(("system", S), ("user", U1), ("assistant", A1))
        two_prompt, _ = render(("user", U1), ("assistant", A1), ("user", U2), ("assistant", A2))
        two_s_prompt, _ = render(("system", S), ("user", U1), ("assistant", A1), ("user", U2), ("assistant", A2))
    except Exception:  # noqa: BLE001 - a template that cannot render the probe has no Go form
        return None
    first = cut(one_prompt, [U1])
    whole = cut(one, [U1, A1])
    with_system = cut(one_s_prompt, [S, U1])
    turns = cut(two_prompt, [U1, A1, U2])
    if None in (first, whole, with_system, turns):
        return None
    prefix, to_reply = first
    reply_lead, tail = whole[1][len(to_reply):], whole[2]
    head, system_to_user, _ = with_system
    between = turns[2]
    if not whole[1].startswith(to_reply):
        return None
    # every prompt up to a reply, rebuilt from the pieces, must be airo's
    for start, prompt in ((prefix, two_prompt), (head + S + system_to_user, two_s_prompt)):
        if prompt != start + U1 + to_reply + reply_lead + A1 + between + U2 + to_reply:
            return None
    if any("\x00" in piece for piece in (prefix, to_reply, reply_lead, head, system_to_user, between)):
        return None
    go = ("{{ if .System }}" + _go(head) + "{{ .System }}" + _go(system_to_user) + "{{ else }}" + _go(prefix)
          + "{{ end }}{{ $later := false }}{{ range .Messages }}"
          + '{{ if eq .Role "user" }}{{ if $later }}' + _go(between) + "{{ end }}{{ .Content }}" + _go(to_reply)
          + '{{ else if eq .Role "assistant" }}' + _go(reply_lead) + "{{ .Content }}{{ $later = true }}{{ end }}"
          + "{{ end }}")
    stops = tuple(dict.fromkeys(s for s in (tail.strip(), eos) if s))
    return OllamaTemplate(text=go, stops=stops)


def _go(text: str) -> str:
    """Literal text inside a Go template."""
    return text.replace("{{", '{{ "{{" }}')


def modelfile_text(gguf_name: str, *, template_name: str | None, ollama: OllamaTemplate | None,
                   eos: str | None) -> str:
    lines = ["# Ollama Modelfile written by airo: ollama create NAME -f Modelfile",
             f"# prompt template: {template_name or 'unknown'}"
             + ("" if ollama else " (no per-turn form: Ollama uses the chat template embedded in the GGUF file)"),
             "# smaller quantizations: llama.cpp's llama-quantize on the f16 file, e.g. q4_k_m",
             f"FROM ./{gguf_name}"]
    if ollama is not None:
        lines.append(f'TEMPLATE """{ollama.text}"""')
    for stop in (ollama.stops if ollama is not None else ((eos,) if eos else ())):
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


# -- the command and the action ----------------------------------------------------------------

def default_out(run: str | os.PathLike) -> Path:
    return Path(str(run).rstrip("/\\") + "-gguf")


def check_export_folders(run: str | os.PathLike, out: str | os.PathLike) -> None:
    """In seconds, nothing loaded: the run is exportable; the output folder is apart from it and
    new, empty or a GGUF export airo wrote."""
    check_export_source(run)
    check_separate([("--out", out), ("RUN", run)])
    check_inputs_outside([("--out", out)], [("RUN", run)])
    check_replaceable(out, kind=EXPORT_KIND, what="GGUF export folder")


def export_gguf(run: str | os.PathLike, out: str | os.PathLike | None = None, quant: str = "f16", *,
                name: str | None = None, log: Callable[[str], None] | None = None) -> ExportResult:
    """``run`` (an adapter or a model airo wrote) as ``out/NAME-QUANT.gguf`` plus ``out/Modelfile``."""
    from airo.core.training import dist

    say = log or dist.say
    run_path = Path(run)
    if quant not in QUANTS:
        raise ConfigError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    out_path = Path(out) if out else default_out(run_path)
    check_export_folders(run_path, out_path)
    info = training_info(run_path)
    name = name or run_path.resolve().name
    gguf_name = f"{name}-{quant}.gguf"
    notes: list[str] = []
    with model_folder(run_path, log=say) as model_dir:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        sp_file = sentencepiece_file(model_dir, run_path, info)
        template, template_name = _run_template(info)
        with atomic_directory(out_path, kind=EXPORT_KIND, what="GGUF export folder") as tmp:
            say(f"export: writing {gguf_name} ({quant})")
            write_gguf(model_dir, tmp / gguf_name, quant, sp_file=sp_file, name=name, chat_template=chat_template)
            ollama = (ollama_template(template, tokenizer.bos_token or "", tokenizer.eos_token or "")
                      if template is not None else None)
            (tmp / "Modelfile").write_text(modelfile_text(gguf_name, template_name=template_name, ollama=ollama,
                                                          eos=tokenizer.eos_token), encoding="utf-8")
            if ollama is None:
                notes.append("the Modelfile has no TEMPLATE: Ollama uses the chat template embedded in the GGUF file")
    return ExportResult(out=str(out_path), gguf=str(out_path / gguf_name), quant=quant, source=str(run_path),
                        notes=notes)


def _run_template(info: dict[str, Any]):
    from airo.core.plugins import get_registry

    name = info.get("prompt_template")
    if not name:
        return None, None
    entry = get_registry().templates.get(name)
    return (entry.template if entry is not None else None), name


@dataclass
class ExportOptions:
    export_gguf: str | None = field(default=None, metadata={
        "help": "After training, export the model as GGUF for llama.cpp/Ollama in this quantization "
                f"({', '.join(QUANTS)}); off by default.", "choices": QUANTS})
    gguf_output_dir: str | None = field(default=None, metadata={
        "help": "Where the GGUF file and Modelfile go (default: OUTPUT_DIR-gguf)."})


def _export_dir(config) -> str:
    return config.get("gguf_output_dir", None) or str(default_out(config.run.output_dir))


def export_outputs(config) -> list[ActionOutput]:
    return [ActionOutput(option="--gguf_output_dir", path=_export_dir(config))]


def export_action(ctx) -> None:
    from airo.core.training import dist

    source = ctx.outputs.get("merged") or ctx.outputs.get("adapter") or ctx.outputs.get("model") or ctx.output_dir
    result = export_gguf(source, _export_dir(ctx.config), ctx.config.get("export_gguf"), log=dist.say)
    ctx.outputs["gguf"] = result.gguf
    for line in result.summary().splitlines():
        dist.say(line)


@hookimpl
def register_options(register):
    register("export", ExportOptions, description="GGUF export for llama.cpp and Ollama (the gguf action)")


@hookimpl
def register_post_train_actions(register):
    register("gguf", export_action, order=300, auto=lambda config: bool(config.get("export_gguf", None)),
             outputs=export_outputs,
             description="export the trained model as GGUF with an Ollama Modelfile (--export_gguf QUANT)")


@hookimpl
def register_commands(cli):
    import click

    @cli.group("export")
    def export_group():
        """Export a trained model for local inference engines."""

    @export_group.command("gguf")
    @click.argument("run", type=click.Path(exists=True, file_okay=False))
    @click.option("--quant", type=click.Choice(QUANTS), default="f16", show_default=True,
                  help="Weight type (norms stay f32). Smaller quants: llama.cpp's llama-quantize on the f16 file.")
    @click.option("--out", type=click.Path(file_okay=False), default=None,
                  help="Folder for the .gguf file and the Modelfile (default: RUN-gguf).")
    @click.option("--name", default=None, help="Model name in the file (default: the run folder's name).")
    def gguf_command(run, quant, out, name):
        """Write RUN (an adapter, merged into its base first, or a full model) as GGUF with an Ollama Modelfile."""
        click.echo(export_gguf(run, out, quant, name=name).summary())

"""The model card (``README.md``) written into every output folder: adapter, merged or full.

:func:`render_model_card` is pure: it turns the training record (the dict saved as
``airo_training.json``) into a Hugging Face model card, YAML metadata between ``---``
lines then Markdown. Keys of ``info`` it reads, each optional (a missing or malformed one
leaves its line out, never fails):

- ``base_model``, ``airo_version``, ``loader``, ``peft``, ``global_step``
- ``bits``, ``quant_type``, ``double_quant``, ``quantized_modules`` (names; only counted),
  ``compute_dtype``, ``weights_dtype``
- ``lora``: ``{"r", "alpha", "dropout", "modules"}`` (modules: a list or a comma string)
- ``dataset_format``, ``prompt_template``
- ``data``: ``{"dataset", "content_hash", "train_examples", "eval_examples"}``
- ``chat_template_parity``: ``{"matched", "total", "variant", "not_covered", "first_mismatch", "note"}``
- ``merge``: ``{"method", "dtype"}`` (merged folders: how the adapter was merged)

The metadata follows the Hub's model card spec (``huggingface_hub.ModelCardData``):
``base_model`` and ``datasets`` only when they are Hub names, since the Hub rejects a card
whose ``base_model`` is not a model id, and a local path says nothing to anyone else.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from airo.core import ConfigError

from .card_sources import saved_sources, sources_table

KINDS = ("adapter", "merged", "full")
CARD_FILE = "README.md"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow", ".txt")


# -- small helpers --------------------------------------------------------------------------

def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _code(text: str) -> str:
    """Inline code that survives backticks inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (one line, pipes escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _block(text: str, lang: str = "") -> str:
    """A fenced code block longer than any backtick run inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{lang}\n{text.rstrip(chr(10))}\n{fence}"


def is_hub_name(name: str) -> bool:
    """Whether ``name`` reads as a Hub repository id rather than a local file or folder."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or Path(name).suffix.lower() in DATA_SUFFIXES or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _dataset_parts(info: dict[str, Any]) -> list[str]:
    spec = _text(_dict(info.get("data")).get("dataset"))
    return [part.strip() for part in spec.split(",") if part.strip()] if spec else []


def _dataset_label(part: str) -> str:
    if is_hub_name(part):
        return f"[{part}](https://huggingface.co/datasets/{part})"
    return _code(Path(part).name or part)  # the file name: the path belonged to the training machine


# -- what the card says ---------------------------------------------------------------------

def _is_full(info: dict[str, Any], kind: str) -> bool:
    return kind == "full" or info.get("peft") is False


def _method_tag(info: dict[str, Any], kind: str) -> str:
    if _is_full(info, kind):
        return "full-fine-tune"
    return "qlora" if _int(info.get("bits")) == 4 else "lora"


def _method(info: dict[str, Any], kind: str) -> str:
    if _is_full(info, kind):
        weights = _text(info.get("weights_dtype"))
        return "full fine-tune (every weight trained" + (f", {weights} weights)" if weights else ")")
    bits = _int(info.get("bits"))
    if bits == 4:
        quant = _text(info.get("quant_type"))
        double = " (double quantization)" if info.get("double_quant") is True else ""
        text = f"QLoRA: a LoRA adapter on a 4-bit{' ' + quant if quant else ''} base{double}"
    elif bits == 8:
        text = "LoRA: an adapter on an 8-bit (LLM.int8) base"
    elif bits in (16, 32):
        text = f"LoRA: an adapter on a {bits}-bit base"
    else:
        text = "LoRA: an adapter"
    compute = _text(info.get("compute_dtype"))
    if compute:
        text += f", compute dtype {compute}"
    if kind == "merged":
        merge = _dict(info.get("merge"))
        how = ", ".join(x for x in (f"{merge['method']} merge" if _text(merge.get("method")) else None,
                                     f"{merge['dtype']} weights" if _text(merge.get("dtype")) else None) if x)
        text += "; merged into the base" + (f" ({how})" if how else "")
    return text


def _lora(info: dict[str, Any]) -> str | None:
    lora = _dict(info.get("lora"))
    parts = []
    for key, label in (("r", "r"), ("alpha", "alpha"), ("dropout", "dropout")):
        value = _num(lora.get(key))
        if value is not None:
            parts.append(f"{label} {value:g}")
    modules = lora.get("modules")
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",") if m.strip()]
    if isinstance(modules, list) and modules:
        parts.append("on " + ", ".join(_code(str(m)) for m in modules))
    return ", ".join(parts) or None


def _training_rows(info: dict[str, Any], kind: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    base = _text(info.get("base_model"))
    if base:
        rows.append(("Base model", f"[{base}](https://huggingface.co/{base})" if is_hub_name(base) else _code(base)))
    rows.append(("Method", _method(info, kind)))
    objective = _text(info.get("objective"))
    if objective and objective != "sft":  # a preference objective: its options are in the options table
        rows.append(("Objective", _code(objective) + " (examples are preference records: pairs, or labelled replies "
                                                     "for kto)"))
    lora = None if _is_full(info, kind) else _lora(info)
    if lora:
        rows.append(("LoRA", lora))
    quantized = info.get("quantized_modules")
    if isinstance(quantized, list) and quantized and not _is_full(info, kind):
        rows.append(("4-bit layers", f"{len(quantized):,}"))
    loader = _text(info.get("loader"))
    if loader:
        rows.append(("airo loader", _code(loader)))
    data = _dict(info.get("data"))
    parts = _dataset_parts(info)
    if parts:
        digest = _text(data.get("content_hash"))
        rows.append(("Dataset", ", ".join(_dataset_label(p) for p in parts)
                     + (f" (content sha256 {_code(digest)})" if digest else "")))
    counts = [f"{n:,} {label}" for key, label in (("train_examples", "train"), ("eval_examples", "eval"))
              if (n := _int(data.get(key))) is not None]
    if counts:
        rows.append(("Examples", ", ".join(counts)))
    fmt, template = _text(info.get("dataset_format")), _text(info.get("prompt_template"))
    if fmt or template:
        rows.append(("Format / template", " / ".join(_code(x) if x else "?" for x in (fmt, template))))
    steps = _int(info.get("global_step"))
    if steps is not None:
        rows.append(("Steps", f"{steps:,}"))
    version = _text(info.get("airo_version"))
    if version:
        rows.append(("airo version", _code(version)))
    return rows


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {_cell(a)} | {_cell(b)} |" for a, b in rows]
    return "\n".join(lines)


def _parity(info: dict[str, Any]) -> str | None:
    parity = info.get("chat_template_parity")
    if not isinstance(parity, dict):
        return None
    matched, total = _int(parity.get("matched")), _int(parity.get("total"))
    if not total or matched is None:
        note = _text(parity.get("note")) or "no conversation could be compared"
        return f"The saved `chat_template` was **not checked** against the training prompts: {note}."
    extra = ""
    not_covered = _int(parity.get("not_covered"))
    if not_covered:
        extra = f" ({not_covered} conversation(s) the template cannot express were not compared.)"
    if matched == total:
        variant = _text(parity.get("variant"))
        rendering = f" (rendering `{variant}`)" if variant and variant != "default" else ""
        return (f"The saved `chat_template`{rendering} reproduces the training prompt tokens of all {total} "
                f"conversations checked.{extra}")
    text = (f"> **Warning:** the saved `chat_template` reproduces the training prompt tokens of only {matched} of "
            f"{total} conversations checked: prompts built with it at inference differ from training for the "
            f"other {total - matched}.")
    mismatch = _text(parity.get("first_mismatch"))
    if mismatch:
        text += f" First difference: {_cell(mismatch)}."
    return text + extra


def _option_value(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return _code(text if len(text) <= 80 else text[:77] + "...")


def _how_to_load(info: dict[str, Any], kind: str, name: str) -> str:
    shell = shlex.quote(name)
    generate = (
        'messages = [{"role": "user", "content": "Hello!"}]\n'
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",\n"
        "                                       return_dict=True)\n"
        "output = model.generate(**inputs.to(model.device), max_new_tokens=256)\n"
        'print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))'
    )
    if kind == "adapter":
        python = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                  f"path = {json.dumps(name)}  # this folder, or its Hub repository id\n"
                  "model = AutoPeftModelForCausalLM.from_pretrained(path)  # loads the base model too\n"
                  "tokenizer = AutoTokenizer.from_pretrained(path)\n" + generate)
        intro = "With transformers and peft (the base model is loaded from where the adapter says):"
    else:
        python = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                  f"path = {json.dumps(name)}  # this folder, or its Hub repository id\n"
                  "model = AutoModelForCausalLM.from_pretrained(path)\n"
                  "tokenizer = AutoTokenizer.from_pretrained(path)\n" + generate)
        intro = "With transformers:"
    base = _text(info.get("base_model"))
    base_arg = shlex.quote(base) if base else "BASE_MODEL"
    chat = f"airo chat {shell}"
    if kind == "adapter":
        chat += f"\n# when the base model is no longer where the adapter says:\nairo chat {shell} --base {base_arg}"
    parts = [intro, _block(python, "python"), "With airo (the tokenizer's `chat_template` formats the prompts):",
             _block(chat, "bash")]
    if kind == "adapter":
        merge = f"airo merge --adapter {shell} --base {base_arg} --out {shlex.quote(name + '-merged')}"
        why = ("its default dequantize path merges into the base as the 4-bit training saw it"
               if _int(info.get("bits")) == 4 else "a plain transformers model, no peft needed")
        parts += [f"To merge the adapter into its base ({why}):", _block(merge, "bash")]
    return "\n\n".join(parts)


def _front_matter(info: dict[str, Any], kind: str) -> str:
    from huggingface_hub import ModelCardData

    base = _text(info.get("base_model"))
    datasets = [p for p in _dataset_parts(info) if is_hub_name(p)]
    tags = ["airo", _method_tag(info, kind)] + (["merged"] if kind == "merged" else [])
    data = ModelCardData(base_model=base if base and is_hub_name(base) else None,
                         library_name="peft" if kind == "adapter" else "transformers",
                         pipeline_tag="text-generation", tags=tags, datasets=datasets or None)
    return data.to_yaml()


def render_model_card(info: dict, *, kind: str, chat_template: str | None, example_prompt: str | None,
                      changed_options: dict[str, Any], final_loss: float | None, eval_loss: float | None,
                      name: str | None = None, sources: list[dict[str, Any]] | None = None) -> str:
    """The model card of an output folder (``kind``: adapter, merged or full) as text.

    ``example_prompt`` is a conversation rendered by the prompt template (what the model
    sees before its reply); ``changed_options`` comes from :func:`changed_options`;
    ``name`` (e.g. the folder's name) is used in the loading examples.
    """
    from huggingface_hub import ModelCard

    if kind not in KINDS:
        raise ValueError(f"model card kind must be one of {', '.join(KINDS)}, got {kind!r}")
    info = _dict(info)
    title = name or "A model trained with airo"
    name = name or "path/to/this/folder"
    base = _text(info.get("base_model"))
    what = {"adapter": "LoRA adapter", "merged": "model (LoRA adapter merged into its base)",
            "full": "fully fine-tuned model"}[kind]
    if kind == "adapter" and _int(info.get("bits")) == 4:
        what = "QLoRA adapter"
    version = _text(info.get("airo_version"))
    intro = (f"A {what}" + (f" for {_code(base)}" if base else "") + " trained with airo"
             + (f" {version}" if version else "") + ".")
    sections = [f"# {title}", intro, "## Training", _table(("", ""), _training_rows(info, kind))]

    results = [(label, f"{value:.4f}") for label, value in (("Final train loss", _num(final_loss)),
                                                            ("Final eval loss", _num(eval_loss)))
               if value is not None]
    if results:
        sections += ["## Results", _table(("", ""), results)]

    prompt_parts = []
    fmt, template = _text(info.get("dataset_format")), _text(info.get("prompt_template"))
    if template:
        prompt_parts.append(f"Prompts use the {_code(template)} template"
                            + (f" (dataset format {_code(fmt)})" if fmt else "") + ".")
    parity = _parity(info)
    if parity:
        prompt_parts.append(parity)
    if _text(example_prompt):
        prompt_parts += ["A conversation as the model sees it, up to its reply:", _block(example_prompt)]
    if _text(chat_template):
        prompt_parts.append("<details><summary>The saved <code>chat_template</code></summary>\n\n"
                            + _block(chat_template, "jinja") + "\n\n</details>")
    if prompt_parts:
        sections += ["## Prompt format", *prompt_parts]
    if sources:  # a mix: what each source gave, in list order
        sections += ["## Data", sources_table(sources)]

    options = [(_code(key), _option_value(value)) for key, value in sorted(_dict(changed_options).items())]
    if options:
        sections += ["## Options that differ from airo's defaults", _table(("option", "value"), options)]

    sections += ["## How to use", _how_to_load(info, kind, name)]
    text = f"---\n{_front_matter(info, kind)}\n---\n\n" + "\n\n".join(sections) + "\n"
    return str(ModelCard(text))  # parses the metadata back: a card the Hub library cannot read is a bug here


def write_model_card(folder: str | os.PathLike, **kwargs: Any) -> Path:
    """Render the card (arguments as :func:`render_model_card`; ``name`` defaults to the
    folder's name) and write it as ``folder/README.md``, replacing the one peft writes."""
    from airo.core import write_text

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"cannot write the model card: {folder} is not a folder (save the model there first)")
    kwargs.setdefault("name", folder.resolve().name)
    path = folder / CARD_FILE
    write_text(path, render_model_card(**kwargs))
    return path


# -- options worth telling -------------------------------------------------------------------

# Where things were on the training machine, secrets, and what the card says elsewhere.
_NOT_IN_CARD = frozenset({
    "output_dir", "working_dir", "merged_output_dir", "dataset_cache_dir", "tokenizer_name_or_path",
    "resume_from_checkpoint", "logging_dir", "deepspeed", "model_name_or_path", "dataset",
    "datasets", "decontaminate", "preprocessing_num_workers",  # the sources are the card's Data section
})
# Of the options a resume may change (bookkeeping: logging, saving, reporting), these do
# describe the training and stay in.
_DESCRIBE_THE_TRAINING = frozenset({"num_train_epochs", "max_steps", "max_eval_samples"})


def changed_options(config) -> dict[str, Any]:
    """The run's options whose value differs from airo's default, for the model card:
    machine paths, secrets and bookkeeping (logging, saving, reporting) left out."""
    import dataclasses

    from airo.core import RESUMABLE_CHANGES, SECRET_OPTIONS, all_flags, options_snapshot

    skip = _NOT_IN_CARD | frozenset(SECRET_OPTIONS) | (RESUMABLE_CHANGES - _DESCRIBE_THE_TRAINING)
    flags = all_flags()
    # compared as stored: the snapshot went through JSON, so the defaults do too
    defaults = json.loads(json.dumps({name: flag.default for name, flag in flags.items()
                                      if flag.default is not dataclasses.MISSING}, default=str))
    changed = {}
    for key, value in options_snapshot(config).items():
        if key in skip:
            continue
        if key in defaults:
            if value != defaults[key]:
                changed[key] = value
        elif value not in (None, "", [], {}):  # no plain default (a factory): any value is a choice
            changed[key] = value
    return changed


def write_card(folder: str | os.PathLike, info: dict[str, Any], *, kind: str, name: str,
               chat_template: str | None) -> Path:
    """The card for ``folder`` from a training record alone (the save action records the
    outcome keys ``final_loss``, ``eval_loss``, ``changed_options`` and ``example_prompt``;
    the sources of a mix from the data report saved beside it)."""
    return write_model_card(folder, info=info, kind=kind, name=name, chat_template=chat_template,
                            sources=saved_sources(folder),
                            example_prompt=info.get("example_prompt"),
                            changed_options=info.get("changed_options") or {},
                            final_loss=info.get("final_loss"), eval_loss=info.get("eval_loss"))

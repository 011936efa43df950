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
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from airo.core import (ActionOutput, ConfigError, atomic_directory, check_inputs_outside, check_replaceable,
                       check_separate, hookimpl, register_kind)
from airo.plugins.gguf_file import QUANTS, read_json, write_gguf
from airo.plugins.ollama import OllamaTemplate, modelfile_text, ollama_template

__all__ = ["QUANTS", "ExportResult", "OllamaTemplate", "export_gguf", "modelfile_text", "ollama_template",
           "write_gguf"]

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

def training_info(run: Path) -> dict[str, Any]:
    """What airo recorded about the training: beside an adapter or a full model
    (``airo_training.json``), or inside a merged model's ``airo_merge.json``."""
    info = read_json(run / "airo_training.json")
    return info or read_json(run / "airo_merge.json").get("training", {}) or {}


def check_export_source(run: str | os.PathLike) -> str:
    """``adapter`` or ``model``: what ``run`` holds. ConfigError naming the problem otherwise."""
    path = Path(run)
    if not path.is_dir():
        raise ConfigError(f"{str(run)!r} is not a folder: pass a run's output dir (an adapter or a model)")
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        config = read_json(path / "config.json")
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
    adapter_base = read_json(run / "adapter_config.json").get("base_model_name_or_path")
    if adapter_base:
        candidates.append(Path(adapter_base))
    for folder in candidates:
        if (folder / "tokenizer.model").is_file():
            return folder / "tokenizer.model"
    raise ConfigError("GGUF export needs the SentencePiece vocabulary (tokenizer.model) of a llama tokenizer; none "
                      f"in {', '.join(str(c) for c in dict.fromkeys(candidates))}")


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
    from airo.core import say as print_line

    say = log or print_line
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
    from airo.core import get_registry

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
    from airo.core import say

    source = ctx.output_dir  # what the save action wrote: an adapter (merged into its base first) or a model
    result = export_gguf(source, _export_dir(ctx.config), ctx.config.get("export_gguf"), log=say)
    ctx.outputs["gguf"] = result.gguf
    for line in result.summary().splitlines():
        say(line)


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

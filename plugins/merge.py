"""The built-in ``merge`` plugin: merge a LoRA adapter into its base, after training (the
``merge`` action, ``--merged_output_dir``) or on its own (``airo merge``).

QLoRA adapters learned corrections to the *4-bit* base. The default ``dequantize`` path
merges them into the base as training saw it (each layer through the same 4-bit round
trip), which is what the adapter was trained against; ``direct`` merges into the stored
16-bit weights. The one implementation is :func:`airo.plugins.merging.merge_adapter` (the GGUF
export merges through it too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from airo.core import ActionOutput, AiroError, KIND_MERGED, hookimpl
from airo.plugins.merging import MergeResult, check_merge_folders, merge_adapter, read_training_info

__all__ = ["MergeResult", "check_merge_folders", "merge_adapter", "read_training_info"]


def merge(ctx) -> None:
    """Merge the saved adapter into a 16-bit copy of the base (``--merged_output_dir``).

    For QLoRA adapters the default is the dequantize path (see
    ``merge_adapter``); ``--merge_method`` overrides it.
    """
    config = ctx.config
    out = config.get("merged_output_dir")
    if not out:
        raise AiroError("the merge action needs --merged_output_dir")
    if not ctx.is_peft:
        ctx.log("merge: --merged_output_dir is set but nothing will be merged: a full fine-tune has no adapter "
                "to merge (the model is saved in --output_dir)")
        return
    adapter = ctx.adapter_dir
    if not adapter or not (Path(adapter) / "adapter_config.json").is_file():
        raise AiroError(f"merge needs the saved adapter in {adapter!r}; keep the `save` action in "
                        "--post_train_actions (it runs first)")
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
    result = merge_adapter(config.model.model_name_or_path, adapter, out, method=config.get("merge_method"),
                           max_shard_size=ctx.info.get("max_shard_size") or "5GB", dtype=None,
                           chat_template=ctx.tokenizer.chat_template, log=ctx.log)
    ctx.outputs["merged model"] = result.out
    ctx.log(f"merged model ({result.method} merge, {result.dtype}) saved to {result.out}")


@dataclass
class MergeOptions:
    merged_output_dir: str | None = field(default=None, metadata={
        "help": "Also merge the adapter into the base and save it here.", "resumable": True})
    merge_method: str = field(default="auto", metadata={
        "help": "auto (dequantize for 4-bit runs), dequantize, or direct.", "resumable": True,
        "choices": ["auto", "dequantize", "direct"]})


def _merges(config) -> bool:
    """An adapter to merge: the loader does not say it produces a whole model."""
    from airo.core import planned_output

    planned = planned_output(config)
    return planned is None or planned.is_adapter


def merge_outputs(config) -> list[ActionOutput]:
    """``--merged_output_dir``: a 16-bit copy of the base (its size on disk, when local);
    nothing when the run's loader produces a whole model (no adapter to merge)."""
    from airo.core import weights_bytes

    out = config.get("merged_output_dir")
    return [ActionOutput("--merged_output_dir", out, weights_bytes(config.model.model_name_or_path),
                         kind=KIND_MERGED)] if out and _merges(config) else []


def _merges_by_default(config) -> bool:
    """With --merged_output_dir; a full fine-tune's run says there is nothing to merge."""
    return bool(config.get("merged_output_dir"))


@hookimpl
def register_options(register):
    register("merge", MergeOptions, description="merging the adapter into its base (the merge action)")


@hookimpl
def register_post_train_actions(register):
    register("merge", merge, order=200, auto=_merges_by_default, outputs=merge_outputs,
             description="merge the adapter into a 16-bit base (dequantize path for QLoRA) into --merged_output_dir")


@hookimpl
def register_commands(cli):
    import click

    methods = click.Choice(["auto", "dequantize", "direct"])

    @cli.command("merge")
    @click.option("--base", required=True, help="Base model folder or name.")
    @click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False), help="LoRA adapter folder.")
    @click.option("--out", required=True, help="Where to save the merged model.")  # checked by airo: one line
    # --merge_method, as `airo train` spells it; --method, this command's old spelling, still works
    @click.option("--merge_method", "--merge-method", "method", type=methods, default="auto", show_default=True,
                  help="dequantize: merge into the base as the 4-bit training saw it (default for QLoRA adapters).")
    @click.option("--method", "old_method", type=methods, default=None, hidden=True)
    @click.option("--max_shard_size", "--max-shard-size", default="5GB", show_default=True)
    @click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default=None,
                  help="Dtype of the merged weights (default: the adapter's training dtype, else float32 on CPU).")
    def merge_command(base, adapter, out, method, old_method, max_shard_size, dtype):
        """Merge a LoRA adapter into its base and save a plain transformers model."""
        if old_method is not None:
            click.secho("warning: --method is now --merge_method (as airo train spells it)", fg="yellow", err=True)
            method = old_method
        result = merge_adapter(base=base, adapter=adapter, out=out, method=method, max_shard_size=max_shard_size,
                               dtype=dtype)
        click.echo(result.summary())

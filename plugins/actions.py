"""The built-in ``save`` post-training action (order 100); ``merge`` is a plugin of its own.

An action is ``run(ctx: airo.core.training.TrainContext)``; it runs on the main process
after training, in ascending ``order``. ``auto(config)`` says whether it runs by default.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from airo.core import ActionOutput, hookimpl

SMALL_OUTPUT = 64 * 1024 ** 2  # an adapter, a tokenizer and reports: a lower bound for the space check


@dataclass
class SaveOptions:
    max_shard_size: str = field(default="5GB", metadata={"help": "Largest safetensors shard of a saved model.",
                                                         "resumable": True, "pattern": r"[1-9][0-9]*\s*[KMG]i?B",
                                                         "accepted": "a size such as 500MB, 5GB or 2GiB"})


def save_outputs(config) -> list[ActionOutput]:
    """``--output_dir``: a whole model is as big as its loader says (the base's size); an
    adapter, the tokenizer and the reports fit in :data:`SMALL_OUTPUT`."""
    from airo.core import KIND_OUTPUT, planned_output

    planned = planned_output(config)
    size = planned.min_bytes if planned is not None and not planned.is_adapter else SMALL_OUTPUT
    return [ActionOutput("--output_dir", config.run.output_dir, size, kind=KIND_OUTPUT)]


def set_chat_template(ctx) -> None:
    """Give the tokenizer the prompt template's ``chat_template`` rendering that reproduces
    the training prompt ids of the run's first conversations with the tokenizer as saved
    (see ``airo.core.chat_parity``); record the counts in ``ctx.info`` and warn when
    inference prompts will differ from training."""
    from airo.core import ParityResult, choose_chat_template, reload_as_saved

    template = ctx.template
    if not getattr(template, "chat_template", None):
        return
    try:
        saved = reload_as_saved(ctx.tokenizer, trust_remote_code=ctx.config.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any loader failure: check with the tokenizer in memory
        saved = None
        ctx.log(f"warning: could not load the tokenizer back as saved ({type(exc).__name__}: {exc}); "
                "checking the chat_template with the training tokenizer")
    try:
        result = choose_chat_template(ctx.config, ctx.tokenizer, template, inference_tokenizer=saved)
    except Exception as exc:  # noqa: BLE001 - the check is advice; it must never cost the trained model
        result = ParityResult(note=f"the check failed: {type(exc).__name__}: {exc}")
    ctx.tokenizer.chat_template = result.chat_template or template.chat_template
    ctx.info["chat_template_parity"] = result.to_dict()
    ctx.log(result.message())


def record_outcome(ctx) -> None:
    """What the model card and ``airo_training.json`` say about the run beyond its setup:
    the last train and eval loss, the options that differ from the defaults, and an example
    prompt rendered with the saved chat_template."""
    from airo.core import last_logged_loss
    from airo.plugins.model_card import changed_options

    history = ctx.trainer.state.log_history if ctx.trainer is not None else []
    ctx.info["final_loss"] = last_logged_loss(history, {})
    ctx.info["eval_loss"] = next((e["eval_loss"] for e in reversed(history) if "eval_loss" in e), None)
    ctx.info["changed_options"] = changed_options(ctx.config)
    try:
        ctx.info["example_prompt"] = ctx.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001 - no chat template, or one that needs a system message: no example
        ctx.info["example_prompt"] = None


def _absolute_base_paths(model) -> None:
    """A base model given as a relative local path is recorded absolute in adapter_config.json:
    relative, the adapter loaded only from the folder training ran in (from anywhere else peft
    took it for a Hub id and waited for the network)."""
    for peft_config in getattr(model, "peft_config", {}).values():
        base = getattr(peft_config, "base_model_name_or_path", None)
        if base and not Path(base).is_absolute() and Path(base).is_dir():
            peft_config.base_model_name_or_path = str(Path(base).resolve())


def save(ctx) -> None:
    """The adapter (LoRA/QLoRA) or the full model (safetensors, --max_shard_size), with the
    tokenizer (its ``chat_template`` the prompt template's rendering that reproduces the
    training prompts, see :func:`set_chat_template`; ``legacy`` kept), the data report and
    ``airo_training.json``, written atomically into ``output_dir`` (an existing folder is
    replaced only when airo stamped it)."""
    from airo.core import (DATA_REPORT_FILE, KIND_OUTPUT, PLOT_FILE, TRAINING_INFO_FILE, atomic_directory,
                           output_holds_working_dir, save_tokenizer)
    from airo.plugins.model_card import write_card

    config = ctx.config
    set_chat_template(ctx)
    record_outcome(ctx)
    # how this run writes weights, for the actions after it (merge) and airo_training.json
    ctx.info["max_shard_size"] = config.get("max_shard_size")
    holds = output_holds_working_dir(config)
    # only the files the previous save listed are replaced; the working dir inside it stays
    with atomic_directory(ctx.output_dir, kind=KIND_OUTPUT, keep_existing=holds, preserve=(config.working_dir,),
                          nest_in=(), what="output dir") as tmp:
        if ctx.is_peft:
            _absolute_base_paths(ctx.model)
            # a sharded run (FSDP) gathered the weights on every rank: peft picks the adapter's from them
            ctx.model.save_pretrained(str(tmp), **({} if ctx.state_dict is None else {"state_dict": ctx.state_dict}))
        else:
            model = ctx.model
            use_cache = getattr(model.config, "use_cache", None)
            model.config.use_cache = True
            try:
                kwargs = {"max_shard_size": config.get("max_shard_size")}
                if ctx.state_dict is not None:
                    kwargs["state_dict"] = ctx.state_dict
                model.save_pretrained(str(tmp), **kwargs)
            finally:
                model.config.use_cache = use_cache
        save_tokenizer(ctx.tokenizer, tmp)
        if ctx.report is not None:
            (tmp / DATA_REPORT_FILE).write_text(json.dumps(ctx.report.to_dict(), indent=2, default=str),
                                                encoding="utf-8")
        (tmp / TRAINING_INFO_FILE).write_text(json.dumps(ctx.info, indent=2, default=str), encoding="utf-8")
        write_card(tmp, ctx.info, kind="adapter" if ctx.is_peft else "full", name=Path(ctx.output_dir).name,
                   chat_template=ctx.tokenizer.chat_template)
        plot = Path(ctx.working_dir) / PLOT_FILE
        if plot.is_file():
            shutil.copyfile(plot, tmp / PLOT_FILE)
    kind = "adapter" if ctx.is_peft else "model"
    ctx.outputs[kind] = ctx.output_dir
    ctx.log(f"saved the {kind}, tokenizer and chat template to {ctx.output_dir}")


@hookimpl
def register_options(register):
    register("save", SaveOptions, description="saving the adapter or model (the save action)")


@hookimpl
def register_post_train_actions(register):
    register("save", save, order=100, auto=lambda config: True, outputs=save_outputs,
             description="save the adapter or full model with the tokenizer and chat_template into --output_dir")

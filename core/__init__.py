"""airo.core: hook specs, plugin registry, config, data pipeline, training run and API.

What plugin authors and embedders use is importable from here: the hook marker, the types
plugins exchange with the core, the template toolkit (more in :mod:`airo.core.templating`;
record helpers for formats in :mod:`airo.core.records`), the run's configuration, context
and result, and the tokenizer helpers.

Importing this package is cheap: nothing here imports torch or transformers until a
function that needs them runs, and the run-related names are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .contract import (ActionContext, ActionOutputs, ActionRun, CallbackContextLike, CallbackFactory, CommandGroup,
                       ConfigPredicate, EvaluationContextLike, EvaluationRun, FormatConverter, ModelLoad, ModelProduces,
                       NextSteps, OptionsArgs, PatchApply, RegisterAction, RegisterCallback, RegisterEvaluation,
                       RegisterFormat, RegisterLoader, RegisterNextSteps, RegisterObjective, RegisterOptions,
                       RegisterPatch, RegisterTemplate)
from .errors import AiroError, ConfigError, DataError, PluginError
from .hookspecs import hookimpl
from .records import (check_record, exchange_messages, is_truthy, make_conversation, message_objects, optional_str,
                      record_metadata, require_keys, require_str, text_content, type_name)
from .templating import (ALPACA_INPUT_MARKER, JINJA_ROLE_CHECK, BaseTemplate, MarkerTemplate, ReferenceTemplate,
                         SegmentBuilder, jinja_literal, jinja_split_system, leading_bos)
from .types import (
    ActionOutput,
    Conversation,
    LoadedModel,
    Message,
    ModelOutput,
    PreferencePair,
    PromptTemplate,
    Segment,
    UnpairedExample,
)

if TYPE_CHECKING:
    from .atomic import (KIND_MERGED, KIND_OUTPUT, atomic_directory, check_inputs_outside, check_replaceable,
                         check_separate, read_json_dict, register_kind, write_json, write_text)
    from .chat_parity import ParityResult, choose_chat_template, inference_prompt_ids, reload_as_saved, tokenizer_source
    from .config import TrainConfig
    from .data.cache import cache_home
    from .training.batches import training_data
    from .data.pipeline import prepare_datasets
    from .flags import all_flags
    from .model_output import planned_output
    from .options import suggest
    from .plugins import get_registry
    from .template_sandbox import render_chat_template, tokenizer_template_variables
    from .tokenizer import load_tokenizer, save_tokenizer, sync_special_tokens
    from .training.checkpoints import RESUMABLE_CHANGES, SECRET_OPTIONS, options_snapshot
    from .training.context import DATA_REPORT_FILE, TRAINING_INFO_FILE, TrainContext, TrainResult
    from .training.dist import say
    from .training.evaluation import CallbackContext, EvaluationContext
    from .training.folders import output_holds_working_dir, weights_bytes
    from .training.metrics import METRICS_FILE, PLOT_FILE, MetricsLog, loss_points, plot_metrics
    from .training.summary import base_model_path, last_logged_loss
    from .launchers import describe_distributed, distributed_state
    from .wandb_login import wandb_state

from .version import __version__

# name -> module, imported on first access: the training package pulls in the whole run
# recipe, which `airo --help` and a plugin's import have no use for. Grouped by what a
# plugin does with them (CONTRIBUTING.md, "What a plugin needs from the core").
_LAZY = {
    # the run: its configuration, what actions receive and return, the training contexts
    "TrainConfig": ".config",
    "TrainContext": ".training.context",
    "TrainResult": ".training.context",
    "CallbackContext": ".training.evaluation",
    "EvaluationContext": ".training.evaluation",
    "planned_output": ".model_output",
    "say": ".training.dist",
    # where a loader's model goes: it says whether the model can be sharded, the run's backend decides
    "model_placement": ".training.distributed",
    "quant_storage_dtype": ".training.distributed",  # a 4-bit base stored so that the backend can shard it
    "model_checkpointing": ".training.distributed",  # the model's activation checkpointing, unless the backend's
    # the tokenizer, as the run loads and saves it
    "load_tokenizer": ".tokenizer",
    "save_tokenizer": ".tokenizer",
    "sync_special_tokens": ".tokenizer",
    # objectives: the base class of preference objectives (register_objectives)
    "PreferenceObjective": ".training.preference_trainer",
    # folders airo owns: checked, written at once, stamped with their kind
    "KIND_MERGED": ".atomic",
    "KIND_OUTPUT": ".atomic",
    "atomic_directory": ".atomic",
    "check_inputs_outside": ".atomic",
    "check_replaceable": ".atomic",
    "check_separate": ".atomic",
    "read_json_dict": ".atomic",
    "register_kind": ".atomic",
    "write_json": ".atomic",
    "write_text": ".atomic",
    "cache_home": ".data.cache",
    "weights_bytes": ".training.folders",
    "output_holds_working_dir": ".training.folders",
    # what a run leaves in its folders
    "DATA_REPORT_FILE": ".training.context",
    "TRAINING_INFO_FILE": ".training.context",
    "METRICS_FILE": ".training.metrics",
    "PLOT_FILE": ".training.metrics",
    "MetricsLog": ".training.metrics",
    "loss_points": ".training.metrics",
    "plot_metrics": ".training.metrics",
    "base_model_path": ".training.summary",
    "last_logged_loss": ".training.summary",
    # the options, as recorded by a run
    "all_flags": ".flags",
    "options_snapshot": ".training.checkpoints",
    "RESUMABLE_CHANGES": ".training.checkpoints",
    "SECRET_OPTIONS": ".training.checkpoints",
    "suggest": ".options",
    # chat templates: the parity check of the save action, the bounded renderer
    "ParityResult": ".chat_parity",
    "choose_chat_template": ".chat_parity",
    "inference_prompt_ids": ".chat_parity",
    "reload_as_saved": ".chat_parity",
    "tokenizer_source": ".chat_parity",
    "render_chat_template": ".template_sandbox",
    "tokenizer_template_variables": ".template_sandbox",
    # objectives: the conversation data pipeline and batching the sft objective runs
    "prepare_datasets": ".data.pipeline",
    "training_data": ".training.batches",
    # what the installed plugins registered
    "get_registry": ".plugins",
    # the login state of the experiment trackers (doctor, preflight)
    "wandb_state": ".wandb_login",
    "distributed_state": ".launchers",
    "describe_distributed": ".launchers",
}

_EAGER = [
    # the hook marker and the errors
    "hookimpl", "AiroError", "ConfigError", "DataError", "PluginError",
    # the types exchanged with the core
    "ActionOutput", "Conversation", "LoadedModel", "Message", "ModelOutput", "PromptTemplate", "Segment",
    "PreferencePair", "UnpairedExample",
    # the typed contract (airo.core.contract)
    "ActionContext", "ActionOutputs", "ActionRun", "CallbackContextLike", "CallbackFactory", "CommandGroup",
    "ConfigPredicate", "EvaluationContextLike", "EvaluationRun", "FormatConverter", "ModelLoad", "ModelProduces",
    "NextSteps", "OptionsArgs", "PatchApply", "RegisterAction", "RegisterCallback", "RegisterEvaluation",
    "RegisterFormat", "RegisterLoader", "RegisterNextSteps", "RegisterObjective", "RegisterOptions", "RegisterPatch", "RegisterTemplate",
    # reading records (dataset formats)
    "check_record", "exchange_messages", "is_truthy", "make_conversation", "message_objects", "optional_str",
    "record_metadata", "require_keys", "require_str", "text_content", "type_name",
    # building templates
    "ALPACA_INPUT_MARKER", "JINJA_ROLE_CHECK", "BaseTemplate", "MarkerTemplate", "ReferenceTemplate",
    "SegmentBuilder", "jinja_literal", "jinja_split_system", "leading_bos",
]

__all__ = sorted({*_EAGER, *_LAZY, "__version__"})


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

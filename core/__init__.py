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

from .errors import AiroError, ConfigError, DataError, PluginError
from .hookspecs import hookimpl
from .templating import BaseTemplate, MarkerTemplate, ReferenceTemplate, SegmentBuilder
from .types import (
    Conversation,
    LoadedModel,
    Message,
    PreferencePair,
    PromptTemplate,
    Segment,
    UnpairedExample,
)

if TYPE_CHECKING:
    from .config import TrainConfig
    from .tokenizer import load_tokenizer, save_tokenizer
    from .training.context import TrainContext, TrainResult

__version__ = "0.1.0"

# name -> module, imported on first access: the training package pulls in the whole run
# recipe, which `airo --help` and a plugin's import have no use for.
_LAZY = {
    "TrainConfig": ".config",
    "TrainContext": ".training.context",
    "TrainResult": ".training.context",
    "load_tokenizer": ".tokenizer",
    "save_tokenizer": ".tokenizer",
    # where a loader's model goes: it says whether the model can be sharded, the run's backend decides
    "model_placement": ".training.distributed",
    "PreferenceObjective": ".training.preference_trainer",
    "wandb_state": ".wandb_login",
}

__all__ = [
    "AiroError",
    "BaseTemplate",
    "ConfigError",
    "Conversation",
    "DataError",
    "LoadedModel",
    "MarkerTemplate",
    "Message",
    "PluginError",
    "PreferenceObjective",
    "PreferencePair",
    "PromptTemplate",
    "ReferenceTemplate",
    "Segment",
    "SegmentBuilder",
    "TrainConfig",
    "TrainContext",
    "TrainResult",
    "UnpairedExample",
    "__version__",
    "hookimpl",
    "load_tokenizer",
    "model_placement",
    "save_tokenizer",
    "wandb_state",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

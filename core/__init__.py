"""airo.core: hook specs, plugin registry, config, data pipeline, training run and API.

Importing this package is cheap: nothing here imports torch or transformers until a
function that needs them runs.
"""

from __future__ import annotations

from .errors import AiroError, ConfigError, DataError, PluginError
from .hookspecs import hookimpl
from .types import (
    Conversation,
    LoadedModel,
    Message,
    PromptTemplate,
    Segment,
)

__version__ = "0.1.0"

__all__ = [
    "AiroError",
    "ConfigError",
    "Conversation",
    "DataError",
    "LoadedModel",
    "Message",
    "PluginError",
    "PromptTemplate",
    "Segment",
    "__version__",
    "hookimpl",
]

"""The loader a config selects, and what its run will save as the loader declares it
(``register(..., produces=...)``), for the actions that size, check or skip their work on it
before any model loads. Below the training run: the recipe, the run identity and the actions
ask here."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .types import ModelOutput


def select_loader(config: Any):
    """``--loader NAME``, or with ``auto`` the one loader whose ``auto(config)`` says it applies."""
    from .plugins import get_registry

    registry = get_registry()
    if config.model.loader != "auto":
        return registry.get("loaders", config.model.loader)
    applies = [loader for loader in registry.loaders.values() if loader.auto is not None and loader.auto(config)]
    if len(applies) == 1:
        return applies[0]
    known = ", ".join(sorted(registry.loaders)) or "none (is a loader plugin installed?)"
    if not applies:
        raise ConfigError(f"no model loader applies to this config; pass --loader NAME. Loaders: {known}")
    raise ConfigError(f"several model loaders apply to this config ({', '.join(sorted(a.name for a in applies))}); "
                      "pass --loader NAME")


def planned_output(config: Any) -> ModelOutput | None:
    """The :class:`~airo.core.ModelOutput` the loader ``config`` selects will produce (an
    adapter or a whole model, its size), or None when that loader does not declare it.
    Raises ConfigError like ``--loader`` when no loader (or several) applies."""
    loader = select_loader(config)
    produces = getattr(loader, "produces", None)
    if produces is None:
        return None
    output = produces(config)
    if not isinstance(output, ModelOutput):
        from .errors import PluginError

        raise PluginError(f"model loader {loader.name!r} produces() returned {type(output).__name__}, "
                          "expected airo.core.ModelOutput")
    return output

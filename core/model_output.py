"""What a run will save, as its loader declares it (``register(..., produces=...)``), for
the actions that size, check or skip their work on it before any model loads."""

from __future__ import annotations

from typing import Any

from .types import ModelOutput


def planned_output(config: Any) -> ModelOutput | None:
    """The :class:`~airo.core.ModelOutput` the loader ``config`` selects will produce (an
    adapter or a whole model, its size), or None when that loader does not declare it.
    Raises ConfigError like ``--loader`` when no loader (or several) applies."""
    from .training import select_loader

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

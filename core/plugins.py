"""Plugin discovery and the registry of what plugins provide.

Plugins are found through the ``airo`` entry-point group, the built-ins included.
Loading is lazy and happens once. A plugin that fails to import or register costs a
warning, not the CLI (``AIRO_STRICT_PLUGINS=1`` makes it an error).
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError
from .types import DatasetFormat, ModelLoader, PostTrainAction, TemplateEntry, TokenizerPatch

ENTRY_POINT_GROUP = "airo"
# The core cannot train without a model loader and a save step: these built-ins are
# listed like every plugin but AIRO_DISABLE_PLUGINS cannot block them.
REQUIRED_PLUGINS = ("loaders", "actions")
KINDS = ("formats", "templates", "loaders", "actions", "patches")


class DuplicateName(PluginError):
    """Two registrations of one name: always an error, since either choice would be a guess."""


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the rest of airo goes on without it."""


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    blocked: bool = False


@dataclass
class Registry:
    formats: dict[str, DatasetFormat] = field(default_factory=dict)
    templates: dict[str, TemplateEntry] = field(default_factory=dict)
    loaders: dict[str, ModelLoader] = field(default_factory=dict)
    actions: dict[str, PostTrainAction] = field(default_factory=dict)
    patches: dict[str, TokenizerPatch] = field(default_factory=dict)
    plugins: dict[str, PluginInfo] = field(default_factory=dict)

    def kind(self, kind: str) -> dict[str, Any]:
        if kind not in KINDS:
            raise PluginError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        return getattr(self, kind)

    def get(self, kind: str, name: str):
        table = self.kind(kind)
        if name not in table:
            from .config import suggest

            hint = suggest(name, table)
            known = ", ".join(sorted(table)) or "none"
            singular = {"formats": "dataset format", "templates": "prompt template", "loaders": "model loader",
                        "actions": "post-training action", "patches": "tokenizer patch"}[kind]
            raise PluginError(f"unknown {singular} {name!r}.{hint} Known: {known}. "
                              f"(`airo list {kind}` shows them; a plugin may provide more.)")
        return table[name]


def _env_list(var: str) -> list[str]:
    return [x.strip() for x in os.environ.get(var, "").split(",") if x.strip()]


def _strict() -> bool:
    return os.environ.get("AIRO_STRICT_PLUGINS", "").lower() in ("1", "true", "yes")


class PluginManager:
    """Owns the pluggy manager and builds the registry from the hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("airo")
        self.pm.add_hookspecs(hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self._loaded = False
        self._registry: Registry | None = None
        self._lock = threading.RLock()

    # -- discovery -----------------------------------------------------------------
    def load_entry_points(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            blocked = set(_env_list("AIRO_DISABLE_PLUGINS"))
            eps = list(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP))
            seen: dict[str, str] = {}
            for ep in eps:
                dist = getattr(ep, "dist", None)
                dist_name = dist.metadata["Name"] if dist is not None else "?"
                version = dist.version if dist is not None else "?"
                if ep.name in seen and seen[ep.name] != dist_name:
                    # pluggy would silently keep only one of the two.
                    self._fail(f"two installed packages declare the airo plugin {ep.name!r}: "
                               f"{seen[ep.name]} and {dist_name}; uninstall one of them", hard=True)
                if ep.name in seen:
                    continue  # the same distribution seen twice on sys.path
                seen[ep.name] = dist_name
                info = PluginInfo(ep.name, dist_name, version, ep.value)
                self._info[ep.name] = info
                if ep.name in blocked:
                    if ep.name in REQUIRED_PLUGINS:
                        warnings.warn(f"AIRO_DISABLE_PLUGINS: the core needs the built-in plugin {ep.name!r}; "
                                      "it stays loaded", PluginWarning, stacklevel=2)
                    else:
                        info.blocked = True
                        continue
                try:
                    module = ep.load()
                except Exception as exc:  # noqa: BLE001 - any failure is reported, never fatal unless strict
                    info.error = f"{type(exc).__name__}: {exc}"
                    self._fail(f"plugin {ep.name!r} from {dist_name} {version} ({ep.value}) failed to import: "
                               f"{info.error}")
                    continue
                self._register_plugin(module, ep.name, info)

    def _register_plugin(self, plugin: Any, name: str, info: PluginInfo) -> None:
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(f"plugin {name!r} from {info.distribution} implements a hook airo does not "
                              f"define: {exc}. Hooks: {', '.join(_hook_names())}") from None

    def _fail(self, message: str, *, hard: bool = False) -> None:
        if hard or _strict():
            raise PluginError(message)
        warnings.warn(message, PluginWarning, stacklevel=3)

    # -- programmatic registration (embedding, tests) -------------------------------
    def register(self, plugin: Any, name: str | None = None, distribution: str = "<registered in code>") -> str:
        with self._lock:
            self.load_entry_points()
            existing = self.pm.get_name(plugin)
            if existing is not None:
                where = self._info[existing].distribution if existing in self._info else "?"
                raise PluginError(f"this plugin is already registered as {existing!r} (from {where})")
            name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin)}"
            if name in self._info and self.pm.get_plugin(name) is not None:
                raise PluginError(f"a plugin named {name!r} is already registered "
                                  f"(from {self._info[name].distribution})")
            info = PluginInfo(name, distribution, "", getattr(plugin, "__name__", repr(plugin)))
            self._register_plugin(plugin, name, info)
            self._info[name] = info
            self._registry = None
            return name

    def unregister(self, name: str) -> None:
        with self._lock:
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                self.pm.unregister(plugin)
            self._info.pop(name, None)
            self._registry = None

    # -- registry ------------------------------------------------------------------
    def registry(self) -> Registry:
        with self._lock:
            self.load_entry_points()
            if self._registry is None:
                self._registry = self._build_registry()
            return self._registry

    def _build_registry(self) -> Registry:
        reg = Registry(plugins=self._info)
        for info in self._info.values():
            info.provides = {}
        specs: list[tuple[str, str, Callable[..., Any]]] = [
            ("register_dataset_formats", "formats", _format_entry),
            ("register_prompt_templates", "templates", _template_entry),
            ("register_model_loaders", "loaders", _loader_entry),
            ("register_post_train_actions", "actions", _action_entry),
            ("register_tokenizer_patches", "patches", _patch_entry),
        ]
        # Each plugin registers in isolation, so a failure can be attributed and undone.
        for plugin_name, plugin in list(self.pm.list_name_plugin()):
            info = self._info.get(plugin_name) or PluginInfo(plugin_name, "?", "?", repr(plugin))
            staged: dict[str, dict[str, Any]] = {kind: {} for _, kind, _ in specs}
            try:
                for hook_name, kind, make in specs:
                    for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                        if impl.plugin_name != plugin_name:
                            continue

                        def register(name, *args, _kind=kind, _make=make, **kwargs):
                            if not isinstance(name, str) or not name:
                                raise PluginError(f"a {_kind} name must be a non-empty string, got {name!r}")
                            if name in staged[_kind]:
                                raise DuplicateName(f"plugin {plugin_name!r} registers {_kind[:-1]} {name!r} twice")
                            staged[_kind][name] = _make(name, *args, plugin=plugin_name, **kwargs)

                        impl.function(register=register)
            except PluginError as exc:
                if isinstance(exc, DuplicateName) or _strict():
                    raise
                info.error = str(exc)
                self._fail(f"plugin {plugin_name!r} from {info.distribution} failed to register: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001
                info.error = f"{type(exc).__name__}: {exc}"
                self._fail(f"plugin {plugin_name!r} from {info.distribution} failed to register: {info.error}")
                continue
            for kind, entries in staged.items():
                table = reg.kind(kind)
                for name, entry in entries.items():
                    if name in table:
                        other = self._info.get(table[name].plugin)
                        raise DuplicateName(
                            f"{kind[:-1]} {name!r} is registered twice: by plugin {table[name].plugin!r} "
                            f"(distribution {other.distribution if other else '?'}) and by plugin "
                            f"{plugin_name!r} (distribution {info.distribution}); uninstall or block one "
                            f"(AIRO_DISABLE_PLUGINS={plugin_name})")
                    table[name] = entry
                if entries:
                    info.provides[kind] = sorted(entries)
        return reg

    def cli_hooks(self):
        self.load_entry_points()
        return self.pm.hook.register_commands

    def add_commands(self, cli) -> None:
        """Call each plugin's ``register_commands(cli)`` on its own, so a failure is attributed:
        a warning naming the plugin and its distribution (AIRO_STRICT_PLUGINS: an error)."""
        self.load_entry_points()
        for impl in self.pm.hook.register_commands.get_hookimpls():
            info = self._info.get(impl.plugin_name)
            try:
                impl.function(cli=cli)
            except Exception as exc:  # noqa: BLE001 - a broken plugin command must not take the CLI down
                error = f"{type(exc).__name__}: {exc}"
                if info is not None and info.error is None:
                    info.error = error
                self._fail(f"plugin {impl.plugin_name!r} from {info.distribution if info else '?'} failed to add "
                           f"its commands: {error}")


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("register_"))


def _format_entry(name, converter, *, default_template=None, description="", plugin=""):
    if not callable(converter):
        raise PluginError(f"dataset format {name!r}: converter must be callable")
    return DatasetFormat(name, converter, default_template, description, plugin)


def _template_entry(name, template, *, description="", plugin=""):
    if not callable(getattr(template, "render", None)) or not isinstance(getattr(template, "chat_template", None), str):
        raise PluginError(f"prompt template {name!r} must have a render() method and a chat_template string")
    return TemplateEntry(name, template, description, plugin)


def _loader_entry(name, load, *, description="", plugin=""):
    if not callable(load):
        raise PluginError(f"model loader {name!r}: load must be callable")
    return ModelLoader(name, load, description, plugin)


def _action_entry(name, run, *, order=100, auto=None, description="", plugin=""):
    if not callable(run):
        raise PluginError(f"post-training action {name!r}: run must be callable")
    return PostTrainAction(name, run, order, auto, description, plugin)


def _patch_entry(name, apply, *, detect=None, description="", plugin=""):
    if not callable(apply):
        raise PluginError(f"tokenizer patch {name!r}: apply must be callable")
    return TokenizerPatch(name, apply, detect, description, plugin)


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = PluginManager()
        return _manager


def reset_plugin_manager() -> None:
    """Forget every loaded plugin (tests; embedding tools that change the environment)."""
    global _manager
    with _manager_lock:
        _manager = None


def get_registry() -> Registry:
    return get_plugin_manager().registry()

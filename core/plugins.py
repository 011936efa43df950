"""Plugin discovery and the registry of what plugins provide.

Plugins are found through the ``airo`` entry-point group, the built-ins included.
Loading is lazy and happens once. A plugin that fails to import, implements a hook airo
does not define, fails in a hook or claims a name another plugin has costs a warning
naming it, and is skipped; every command still works (``AIRO_STRICT_PLUGINS=1`` makes
each of these an error). The callables plugins register are wrapped so that a failure at
run time names the plugin. A plugin's import and its hooks run with stdout sent to stderr
(:func:`stdout_to_stderr`): what a plugin prints never mixes into a command's output, so
``airo plugins --json`` stays JSON whatever is installed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as importlib_metadata
import threading
import warnings

from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import _KIND, KIND_TABLE, KINDS, Kind, PluginInfo, Registry

ENTRY_POINT_GROUP = "airo"
# The built-in plugins come from airo's own distribution; on a name clash they keep the name.
BUILTIN_DISTRIBUTION = "airo"


from .plugin_failures import (DuplicateName, PluginCallError, PluginWarning, _bad_arguments_problem, _block_hint,
                              _env_list, _guarded, _strict, _unknown_hook_problem, _who,
                              describe_exception, out_of_memory, stdout_to_stderr)

# what the manager's users import from here (the failures are told by airo.core.plugin_failures)
__all__ = ["BUILTIN_DISTRIBUTION", "ENTRY_POINT_GROUP", "KINDS", "DuplicateName", "PluginCallError", "PluginManager",
           "PluginWarning", "_guarded", "_who", "describe_exception", "get_plugin_manager", "get_registry",
           "out_of_memory", "reset_plugin_manager", "stdout_to_stderr"]


# -- the manager ------------------------------------------------------------------------------

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
            with stdout_to_stderr():  # a plugin printing at import must not corrupt a command's output
                self._load_entry_points()

    def _load_entry_points(self) -> None:
        blocked = set(_env_list("AIRO_DISABLE_PLUGINS"))
        for name, candidates in _entry_points_by_name().items():
            if name in blocked:
                self._info[name] = candidates[0][1]
                candidates[0][1].blocked = True
                continue
            chosen = self._one_of(name, candidates)
            if chosen is not None:
                self._load(*chosen)

    def _one_of(self, name: str, candidates: list[tuple[Any, PluginInfo]]):
        """The entry point to load when several distributions declare ``name`` (pluggy would
        silently keep one): the built-in's, or none of them."""
        if len(candidates) == 1:
            return candidates[0]
        dists = " and ".join(f"{i.distribution} {i.version}" for _, i in candidates)
        builtin = [c for c in candidates if c[1].distribution == BUILTIN_DISTRIBUTION]
        if len(builtin) == 1:
            others = ", ".join(f"{i.distribution} {i.version}" for _, i in candidates
                               if i.distribution != BUILTIN_DISTRIBUTION)
            self._fail(f"{others} declares the airo plugin {name!r}, which is built into airo",
                       "airo's own is loaded, not this one: uninstall it or ask its author to rename the entry point")
            return builtin[0]
        first = candidates[0][1]
        first.error = f"the entry point name {name!r} is declared by {dists}"
        self._info[name] = first
        self._fail(f"two installed packages declare the airo plugin {name!r}: {dists}",
                   f"neither is loaded: uninstall one of them (AIRO_DISABLE_PLUGINS={name} blocks both)")
        return None

    def _load(self, ep, info: PluginInfo) -> None:
        self._info[info.name] = info
        try:
            module = ep.load()
        except (Exception, SystemExit) as exc:  # KeyboardInterrupt propagates: the user stopped airo
            info.error = describe_exception(exc)
            self._fail(f"{_who(info)} failed to import {ep.value}: {info.error}", "the plugin is skipped", info,
                       cause=exc)
            return
        try:
            self._register_plugin(module, info.name)
        except PluginError as exc:
            info.error = str(exc)
            self._fail(f"{_who(info)} {exc}", "the plugin is skipped", info)

    def _register_plugin(self, plugin: Any, name: str) -> None:
        """Register with pluggy; a hook airo does not define, or a hook argument it does not
        pass, is a PluginError (describing the problem) and leaves nothing registered."""
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(_bad_arguments_problem(exc)) from None
        unknown = sorted(hc.name for hc in self.pm.get_hookcallers(plugin) or []
                         if not hc.has_spec() and not all(i.optionalhook for i in hc.get_hookimpls()
                                                          if i.plugin is plugin))
        try:
            if unknown:
                raise PluginError(_unknown_hook_problem(unknown))
            self.pm.check_pending()  # what the check above missed, pluggy still catches
        except (PluginError, pluggy.PluginValidationError) as exc:
            self.pm.unregister(plugin)
            if isinstance(exc, PluginError):
                raise
            raise PluginError(" ".join(str(exc).split())) from None

    def _fail(self, problem: str, consequence: str, info: PluginInfo | None = None, *,
              error: type[PluginError] = PluginError, cause: BaseException | None = None) -> None:
        """Report a plugin problem: under AIRO_STRICT_PLUGINS an error; otherwise a warning
        saying what airo does about it and which AIRO_DISABLE_PLUGINS value silences it."""
        if _strict():
            raise error(f"{problem} (an error because AIRO_STRICT_PLUGINS is set)") from cause
        hint = _block_hint(info) if info is not None else ""
        warnings.warn(f"{problem}; {consequence}" + (f" ({hint} silences this)" if hint else ""),
                      PluginWarning, stacklevel=3)

    # -- programmatic registration (embedding, tests) -------------------------------
    def register(self, plugin: Any, name: str | None = None, distribution: str = "<registered in code>") -> str:
        """Register ``plugin`` now. Unlike an installed plugin, a bad one is an error here:
        the caller asked for it explicitly."""
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
            try:
                self._register_plugin(plugin, name)
            except PluginError as exc:
                raise PluginError(f"{_who(info)} {exc}") from None
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
                with stdout_to_stderr():  # the register hooks are plugin code
                    self._registry = self._build_registry()
            return self._registry

    def _build_registry(self) -> Registry:
        reg = Registry(plugins=self._info)
        claims: dict[tuple[str, str], list[tuple[PluginInfo, Any]]] = {}
        for info in self._info.values():
            info.provides = {}
        for plugin_name, _plugin in list(self.pm.list_name_plugin()):
            info = self._info.setdefault(plugin_name, PluginInfo(plugin_name, "?", "?", repr(_plugin)))
            for key, entry in self._collect(info).items():
                claims.setdefault(key, []).append((info, entry))
        for (kind, name), claimants in claims.items():
            winner = self._settle(_KIND[kind], name, claimants)
            if winner is not None:
                reg.kind(kind)[name] = winner[1]
                winner[0].provides.setdefault(kind, []).append(name)
        for info in self._info.values():
            info.provides = {k: sorted(info.provides[k]) for k in KINDS if k in info.provides}
        return reg

    def _collect(self, info: PluginInfo) -> dict[tuple[str, str], Any]:
        """What one plugin registers, or nothing when any of its hooks fails, so a failure
        is attributed and leaves no half-registered plugin behind."""
        staged: dict[tuple[str, str], Any] = {}

        def entry(kind: Kind, name: Any, args: tuple, kwargs: dict) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"a {kind.singular} name must be a non-empty string, got {name!r}")
            if (kind.name, name) in staged:
                raise DuplicateName(f"it registers the {kind.singular} {name!r} twice")
            made = kind.make(name, *args, **kwargs)
            wrapped = {f: _guarded(getattr(made, f), info, f"{kind.singular} {name!r} {f}()")
                       for f in kind.guarded if getattr(made, f) is not None}
            staged[(kind.name, name)] = dataclasses.replace(made, plugin=info.name, **wrapped)

        def registrar(kind: Kind) -> Callable[..., None]:
            def register(name, *args, **kwargs):
                entry(kind, name, args, kwargs)
            return register

        try:
            for kind in KIND_TABLE:
                for impl in getattr(self.pm.hook, kind.hook).get_hookimpls():
                    if impl.plugin_name == info.name:
                        impl.function(register=registrar(kind))
        except (Exception, SystemExit) as exc:  # KeyboardInterrupt propagates: the user stopped airo
            info.error = str(exc) if isinstance(exc, PluginError) else describe_exception(exc)
            self._fail(f"{_who(info)} failed to register: {info.error}", "the plugin is skipped", info,
                       error=DuplicateName if isinstance(exc, DuplicateName) else PluginError, cause=exc)
            return {}
        return staged

    def _settle(self, kind: Kind, name: str, claimants: list[tuple[PluginInfo, Any]]):
        """The (info, entry) that keeps ``name``, if any. A built-in keeps its names; between
        other plugins neither wins silently: the name is dropped from all of them."""
        if len(claimants) == 1:
            return claimants[0]
        builtin = [c for c in claimants if c[0].distribution == BUILTIN_DISTRIBUTION]
        if len(builtin) == 1:
            keeper = builtin[0][0]
            for info, _ in claimants:
                if info is not keeper:
                    self._fail(f"{_who(info)} registers the {kind.singular} {name!r}, which the built-in plugin "
                               f"{keeper.name!r} has", "the built-in keeps it and this one is dropped: rename it",
                               info, error=DuplicateName)
            return builtin[0]
        sides = " and by ".join(_who(info, block=True) for info, _ in claimants)
        self._fail(f"the {kind.singular} {name!r} is registered by {sides}",
                   "neither is used: block or uninstall one of them", error=DuplicateName)
        return None

    def settle_options(self) -> None:
        """Refuse the options sections (``register_options``) that would shadow a flag: an
        option named like one of airo's own options, a ``TrainingArguments`` field, an alias or
        obsolete seed flag airo reads, a core section, or another plugin's option. A built-in
        keeps its options; between other plugins neither wins. A refused section is dropped
        from the registry, with a warning naming the plugin, its distribution, the flag and who
        has it (AIRO_STRICT_PLUGINS: an error); every other plugin and command goes on."""
        with self._lock:
            registry = self.registry()
            reserved = _reserved_option_names()
            claims: dict[str, list[Any]] = {}
            for section in registry.options.values():
                for f in dataclasses.fields(section.args):
                    claims.setdefault(f.name, []).append(section)
            refused: dict[str, tuple[Any, str, str]] = {}  # section -> (entry, problem, consequence)
            for section in registry.options.values():
                if section.name in reserved:
                    refused.setdefault(section.name, (section, f"names its options section {section.name!r}, "
                                                      f"which is {reserved[section.name]}", "rename the section"))
            for name, sections in claims.items():
                if name in reserved:
                    for section in sections:
                        refused.setdefault(section.name, (
                            section, f"registers the option --{name} (options section {section.name!r}), which is "
                                     f"{reserved[name]}", "rename the option"))
                    continue
                if len(sections) == 1:
                    continue
                builtin = [s for s in sections if self._is_builtin(s.plugin)]
                if len(builtin) == 1:
                    keeper = builtin[0]
                    for section in sections:
                        if section is not keeper:
                            refused.setdefault(section.name, (
                                section, f"registers the option --{name} (options section {section.name!r}), which "
                                         f"the built-in plugin {keeper.plugin!r} has (section {keeper.name!r})",
                                "rename the option"))
                    continue
                for section in sections:
                    others = " and ".join(f"{self._describe(o.plugin)} (section {o.name!r})"
                                          for o in sections if o is not section)
                    refused.setdefault(section.name, (
                        section, f"registers the option --{name} (options section {section.name!r}), which {others} "
                                 "registers too", "neither plugin's is used: rename the option in one of them"))
            for name, (section, problem, fix) in refused.items():
                registry.options.pop(name, None)
                info = self._info.get(section.plugin)
                if info is not None and name in info.provides.get("options", []):
                    info.provides["options"] = [n for n in info.provides["options"] if n != name]
                    if not info.provides["options"]:
                        del info.provides["options"]
                who = _who(info) if info is not None else f"plugin {section.plugin!r}"
                self._fail(f"{who} {problem}", f"its options section {name!r} is not used, the rest of airo goes on: "
                           f"{fix}", info, error=DuplicateName)

    def _is_builtin(self, plugin: str) -> bool:
        info = self._info.get(plugin)
        return info is not None and info.distribution == BUILTIN_DISTRIBUTION

    def _describe(self, plugin: str) -> str:
        info = self._info.get(plugin)
        return _who(info) if info is not None else f"plugin {plugin!r}"

    def add_commands(self, cli) -> None:
        """Call each plugin's ``register_commands(cli)`` on its own, so a failure is attributed.
        A command may not replace airo's own (airo keeps it) or another plugin's (both go)."""
        self.load_entry_points()
        owners: dict[str, PluginInfo] = {}
        contested: set[str] = set()  # dropped after a clash: a later plugin does not win them either
        for impl in self.pm.hook.register_commands.get_hookimpls():
            info = self._info.setdefault(impl.plugin_name, PluginInfo(impl.plugin_name, "?", "?", repr(impl.plugin)))
            before = dict(cli.commands)
            try:
                with stdout_to_stderr():
                    impl.function(cli=cli)
            except (Exception, SystemExit) as exc:  # a broken plugin command must not take the CLI down
                info.error = info.error or describe_exception(exc)
                self._fail(f"{_who(info)} failed to add its commands: {describe_exception(exc)}",
                           "its commands may be missing", info, cause=exc)
            for command in [c for c in cli.commands if c in contested or cli.commands[c] is not before.get(c)]:
                if command in before and owners.get(command) is None:
                    cli.commands[command] = before[command]
                    self._fail(f"{_who(info)} adds the command {command!r}, which airo has",
                               "airo keeps its own and this one is dropped: rename it", info, error=DuplicateName)
                elif command in before or command in contested:
                    del cli.commands[command]
                    contested.add(command)
                    sides = " and by ".join(_who(i, block=True) for i in (owners[command], info))
                    self._fail(f"the command {command!r} is added by {sides}",
                               "neither is used: block or uninstall one of them", error=DuplicateName)
                else:
                    owners[command] = info


def _reserved_option_names() -> dict[str, str]:
    """The names a plugin's option may not take, each with who has it."""
    from .flag_tables import _own_flags, training_flags
    from .options import ALIASES, OBSOLETE, SECTIONS

    reserved = {name: f"airo's section {name!r}" for name in (*SECTIONS, "training")}
    reserved.update({name: "a transformers.TrainingArguments option (section 'training')"
                     for name in training_flags()})
    reserved.update({name: "an obsolete seed flag airo accepts" for name in OBSOLETE})
    reserved.update({name: f"a spelling airo reads as --{target}" for name, target in ALIASES.items()})
    reserved.update({name: f"airo's own option (section {flag.section!r})" for name, flag in _own_flags().items()})
    return reserved


def _entry_points_by_name() -> dict[str, list[tuple[Any, PluginInfo]]]:
    by_name: dict[str, list[tuple[Any, PluginInfo]]] = {}
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        same = by_name.setdefault(ep.name, [])
        if all(info.distribution != dist_name for _, info in same):  # else: one distribution seen twice on sys.path
            same.append((ep, PluginInfo(ep.name, dist_name, version, ep.value)))
    return by_name


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

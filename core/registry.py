"""What plugins register, kind by kind: one row of :data:`KIND_TABLE` per registration hook
(its name, hook, singular noun, entry factory and the callables whose failures are the
plugin's), and the :class:`Registry` of everything registered. Discovery and loading are
:mod:`airo.core.plugins`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ConfigError, PluginError
from .types import (RECORD_KINDS, DatasetFormat, Evaluation, ModelLoader, NextStepsEntry, Objective, OptionsSection,
                    PostTrainAction, TemplateEntry, TokenizerPatch, TrainerCallbackEntry)


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    blocked: bool = False


# -- what each hook registers ------------------------------------------------------------

def _require_callables(what: str, optional: tuple[str, ...] = (), **callables: Any) -> None:
    """Each named value is callable; those in ``optional`` may also be None (left out)."""
    for field_name, value in callables.items():
        if not (value is None and field_name in optional) and not callable(value):
            raise PluginError(f"{what}: {field_name} must be callable, got {type(value).__name__}")


def _record_kind(what: str, record_kind) -> str:
    if record_kind not in RECORD_KINDS:
        raise PluginError(f"{what}: record_kind must be one of {', '.join(RECORD_KINDS)}, got {record_kind!r}")
    return record_kind


def _format_entry(name, converter, *, default_template=None, description="", record_kind="conversation"):
    _require_callables(f"dataset format {name!r}", converter=converter)
    return DatasetFormat(name, converter, default_template, description,
                         record_kind=_record_kind(f"dataset format {name!r}", record_kind))


def _objective_entry(name, objective, *, record_kind, description=""):
    for method in ("prepare", "training_data"):
        if not callable(getattr(objective, method, None)):
            raise PluginError(f"objective {name!r} must have a {method}() method")
    return Objective(name, objective, _record_kind(f"objective {name!r}", record_kind), description)


def _template_entry(name, template, *, description=""):
    if not callable(getattr(template, "render", None)) or not isinstance(getattr(template, "chat_template", None), str):
        raise PluginError(f"prompt template {name!r} must have a render() method and a chat_template string")
    return TemplateEntry(name, template, description)


def _loader_entry(name, load, *, auto=None, produces=None, description=""):
    _require_callables(f"model loader {name!r}", ("auto", "produces"), load=load, auto=auto, produces=produces)
    return ModelLoader(name, load, auto, description, produces=produces)


def _action_entry(name, run, *, order=100, auto=None, outputs=None, description=""):
    _require_callables(f"post-training action {name!r}", ("auto", "outputs"), run=run, auto=auto, outputs=outputs)
    return PostTrainAction(name, run, order, auto, outputs, description)


def _options_entry(name, args, *, description=""):
    if not (isinstance(args, type) and dataclasses.is_dataclass(args)):
        raise PluginError(f"options section {name!r}: args must be a dataclass class, got {args!r}")
    for f in dataclasses.fields(args):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PluginError(f"options section {name!r}: field {f.name!r} needs a default")
    return OptionsSection(name, args, description)


def _patch_entry(name, apply, *, detect=None, description=""):
    _require_callables(f"tokenizer patch {name!r}", ("detect",), apply=apply, detect=detect)
    return TokenizerPatch(name, apply, detect, description)


def _evaluation_entry(name, run, *, description=""):
    _require_callables(f"evaluation {name!r}", run=run)
    return Evaluation(name, run, description)


def _callback_entry(name, factory, *, description=""):
    _require_callables(f"trainer callback {name!r}", factory=factory)
    return TrainerCallbackEntry(name, factory, description)


def _next_steps_entry(name, lines, *, order=100, description=""):
    _require_callables(f"next steps {name!r}", lines=lines)
    return NextStepsEntry(name, lines, order, description)


@dataclass(frozen=True)
class Kind:
    """One kind of registration. ``guarded`` names the entry's callables whose failures are
    reported as the plugin's; converters and templates are left out because the data
    pipeline turns their errors into located bad records."""

    name: str
    hook: str
    singular: str
    make: Callable[..., Any]
    guarded: tuple[str, ...] = ()


KIND_TABLE = (
    Kind("formats", "register_dataset_formats", "dataset format", _format_entry),
    Kind("templates", "register_prompt_templates", "prompt template", _template_entry),
    Kind("loaders", "register_model_loaders", "model loader", _loader_entry, ("load", "auto", "produces")),
    Kind("actions", "register_post_train_actions", "post-training action", _action_entry, ("run", "auto", "outputs")),
    Kind("patches", "register_tokenizer_patches", "tokenizer patch", _patch_entry, ("apply", "detect")),
    Kind("options", "register_options", "options section", _options_entry),
    Kind("evaluations", "register_evaluations", "evaluation", _evaluation_entry, ("run",)),
    Kind("callbacks", "register_callbacks", "trainer callback", _callback_entry, ("factory",)),
    Kind("next_steps", "register_next_steps", "next steps", _next_steps_entry, ("lines",)),
    Kind("objectives", "register_objectives", "objective", _objective_entry),
)
KINDS = tuple(kind.name for kind in KIND_TABLE)
_KIND = {kind.name: kind for kind in KIND_TABLE}


@dataclass
class Registry:
    formats: dict[str, DatasetFormat] = field(default_factory=dict)
    templates: dict[str, TemplateEntry] = field(default_factory=dict)
    loaders: dict[str, ModelLoader] = field(default_factory=dict)
    actions: dict[str, PostTrainAction] = field(default_factory=dict)
    patches: dict[str, TokenizerPatch] = field(default_factory=dict)
    options: dict[str, OptionsSection] = field(default_factory=dict)
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    callbacks: dict[str, TrainerCallbackEntry] = field(default_factory=dict)
    next_steps: dict[str, NextStepsEntry] = field(default_factory=dict)
    objectives: dict[str, Objective] = field(default_factory=dict)
    plugins: dict[str, PluginInfo] = field(default_factory=dict)

    def kind(self, kind: str) -> dict[str, Any]:
        if kind not in _KIND:
            raise PluginError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        return getattr(self, kind)

    def select(self, kind: str, spec: str | None, config, *, option: str) -> list:
        """The entries a user option names: ``auto`` (those whose ``auto``/``detect`` says
        yes for ``config``), ``none``, or a comma list; ``auto,NAME`` adds NAME to them."""
        names = [s.strip() for s in (spec or "auto").split(",") if s.strip()]
        if "none" in names:
            if len(names) > 1:
                raise ConfigError(f"{option} none cannot be combined with other names")
            return []
        chosen: dict[str, Any] = {}
        for name in names:
            if name != "auto":
                chosen[name] = self.get(kind, name)
                continue
            for entry in self.kind(kind).values():
                applies = getattr(entry, "auto", None) or getattr(entry, "detect", None)
                if applies is not None and applies(config):
                    chosen[entry.name] = entry
        return list(chosen.values())

    def get(self, kind: str, name: str):
        table = self.kind(kind)
        if name not in table:
            from .options import suggest

            hint = suggest(name, table)
            known = ", ".join(sorted(table)) or "none"
            raise PluginError(f"unknown {_KIND[kind].singular} {name!r}.{hint} Known: {known}. "
                              f"(`airo list {kind}` shows them; a plugin may provide more.)")
        return table[name]

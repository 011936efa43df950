"""The one typed configuration of a run: defaults < YAML file < command-line flags.

Flags use the seed script's underscore spelling (``--model_name_or_path``); the dash
spelling works too. Every field of ``transformers.TrainingArguments`` is accepted as a
flag, as the seed passed them through, and every option a plugin registers. Unknown flags
and keys are errors with a suggestion, never ignored. The option table is
:mod:`airo.core.flags`, airo's own options :mod:`airo.core.options`, YAML reading
:mod:`airo.core.yaml_config`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .flags import (Flag, all_flags, check_path, check_value, convert, normalise_name, parse_flag_tokens,
                    section_names)
from .options import (ALIASES, OBSOLETE, REPORT_PACKAGES, SEED_TRAINING_DEFAULTS, DataArgs, ModelArgs, RunArgs,
                      suggest)
from .yaml_config import load_yaml

__all__ = ["TrainConfig", "build_config", "describe_flags", "resumable_options"]


@dataclass
class TrainConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    run: RunArgs = field(default_factory=RunArgs)
    # TrainingArguments values set by the user or the seed defaults (output_dir excluded:
    # the trainer's output_dir is the working dir).
    training: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    explicit: set[str] = field(default_factory=set)  # options the user set (YAML or flags)
    config_file: str | None = None
    origins: dict[str, str] = field(default_factory=dict)  # option -> where it was set ("FILE, line N: key", "--flag")
    # Plugin option sections (register_options): section name -> the plugin's dataclass instance.
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def working_dir(self) -> str:
        if self.run.working_dir:
            return self.run.working_dir
        if not self.run.output_dir:
            raise ConfigError("--output_dir is required")
        return self.run.output_dir.rstrip("/\\") + "-checkpoints"

    @property
    def gradient_checkpointing(self) -> bool:
        """--gradient_checkpointing (the seed's name) or --activation_checkpointing (transformers 5's)."""
        return bool(self.training.get("activation_checkpointing") or self.training.get("gradient_checkpointing"))

    @property
    def seed(self) -> int:
        return int(self.training.get("seed", 42))

    def get(self, name: str, default: Any = dataclasses.MISSING) -> Any:
        """An option's value by name, wherever it lives: airo's, a plugin section's, or a
        TrainingArguments field. Unknown names raise KeyError unless ``default`` is given."""
        for section in (self.model, self.data, self.run, *self.sections.values()):
            if name in {f.name for f in dataclasses.fields(section)}:
                return getattr(section, name)
        if name in self.training:
            return self.training[name]
        if default is not dataclasses.MISSING:
            return default
        raise KeyError(name)

    def section(self, name: str) -> Any:
        """A plugin's options as its dataclass instance (``register_options``)."""
        if name not in self.sections:
            raise ConfigError(f"no options section {name!r}.{suggest(name, self.sections)} "
                              f"Sections: {', '.join(sorted(self.sections)) or 'none'}")
        return self.sections[name]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section in (self.model, self.data, self.run, *self.sections.values()):
            out.update(dataclasses.asdict(section))
        out.update(self.training)
        return out

    def training_arguments(self, **overrides):
        """Build ``transformers.TrainingArguments`` (imports transformers)."""
        from transformers import TrainingArguments

        kwargs = dict(self.training)
        kwargs.update(overrides)
        kwargs["output_dir"] = self.working_dir
        if kwargs.get("optim", "auto") == "auto":
            kwargs["optim"] = "adamw_torch"  # the run resolves `auto` once the model is loaded
        try:
            return TrainingArguments(**kwargs)
        except (ValueError, TypeError) as exc:  # transformers' own checks of combinations: still before the model
            raise ConfigError(f"the training options do not go together: {' '.join(str(exc).split())}") from None


def build_config(config_file: str | None = None, argv: list[str] | None = None, *,
                 include_training: bool = True, values: dict[str, Any] | None = None) -> TrainConfig:
    """Assemble and validate a TrainConfig: defaults < YAML file < ``values`` < flags."""
    flags = all_flags(include_training)
    cfg = TrainConfig(config_file=config_file)
    # (option name, raw value, how the user spelt it, where it was set: "FILE, line N" or None)
    layers: list[tuple[str, Any, str, str | None]] = []
    if config_file:
        options = load_yaml(config_file)
        for key, value in options.items():
            line = options.lines.get(key)
            where = f"{config_file}, line {line}" if line else str(config_file)
            layers.append((ALIASES.get(normalise_name(str(key)), normalise_name(str(key))), value, str(key), where))
    for key, value in (values or {}).items():
        layers.append((ALIASES.get(normalise_name(key), normalise_name(key)), value, key, None))
    layers.extend((name, raw, origin, None)
                  for name, raw, origin in _repeated_datasets(parse_flag_tokens(list(argv or []), flags)))
    plugin_values: dict[str, dict[str, tuple[Any, str]]] = {}
    given: dict[str, tuple[Flag, Any, str]] = {}  # option -> (flag, value, where), the last layer's

    for name, raw, origin, where in layers:
        label = f"{where}: {origin}" if where else origin
        # Obsolete seed flags win over TrainingArguments fields of the same name (do_train).
        if name in OBSOLETE and (name not in flags or flags[name].section == "training"):
            cfg.warnings.append(f"{label} is accepted for compatibility and ignored: {OBSOLETE[name]}")
            continue
        flag = flags.get(name)
        if flag is None and isinstance(raw, dict):
            raise ConfigError(f"{where + ': ' if where else ''}unknown section {origin!r}."
                              f"{suggest(name, section_names())} Sections: {', '.join(section_names())}.")
        if flag is None:
            raise ConfigError(f"{where + ': ' if where else ''}unknown option {origin!r}."
                              f"{suggest(name, list(flags) + list(OBSOLETE), flag=origin.startswith('--'))} "
                              "(`airo train --help-all` lists every option.)")
        value = convert(flag, raw, label)
        if "warmup_ratio" in origin and value is not None and not 0 <= value < 1:
            raise ConfigError(f"{label}: a warmup ratio must be in [0, 1), got {value}")
        cfg.explicit.add(name)
        cfg.origins[name] = label
        given[name] = (flag, value, label)
        if flag.section == "training":
            cfg.training[name] = value
        elif flag.plugin:
            plugin_values.setdefault(flag.section, {})[name] = (value, label)
        else:
            setattr(getattr(cfg, flag.section), name, value)
    if include_training:
        for name, default in SEED_TRAINING_DEFAULTS.items():
            cfg.training.setdefault(name, default)
    validate_values(given)
    _build_sections(cfg, plugin_values)
    validate(cfg)
    return cfg


def _repeated_datasets(tokens: list[tuple[str, Any, str]]) -> list[tuple[str, Any, str]]:
    """``--dataset`` given several times: the ``datasets:`` list of those paths (each with the
    run's format and options); given once it stays the single --dataset."""
    given = [raw for name, raw, _ in tokens if name == "dataset"]
    if len(given) < 2:
        return tokens
    rest = [t for t in tokens if t[0] != "dataset"]
    return rest + [("datasets", [{"path": str(raw)} for raw in given], "--dataset")]


def _check_datasets(cfg: TrainConfig) -> None:
    """The ``datasets:`` entries, each field checked (errors name the entry and field), before
    anything loads; ``--dataset`` then names their paths (what is hashed, checked and shown)."""
    d = cfg.data
    if d.datasets is None:
        return
    from .data.sources import check_entries
    from .plugins import get_registry

    registry = get_registry()
    d.datasets = check_entries(d.datasets, cfg.origins.get("datasets"), formats=registry.formats,
                               templates=registry.templates)
    _check_record_kinds(cfg, registry)
    joined = ",".join(e["path"] for e in d.datasets)
    if d.dataset and d.dataset != joined:
        raise ConfigError(f"{cfg.origins.get('dataset', '--dataset')} and {cfg.origins.get('datasets', 'datasets')} "
                          "both name the data; give one (a single --dataset is a list of one)")
    d.dataset = joined


def _check_record_kinds(cfg: TrainConfig, registry) -> None:
    """Every source of a mix gives the records the objective trains on; a mix is of
    conversation sources (a preference objective reads one --dataset)."""
    objective = registry.objectives.get(getattr(cfg.run, "objective", "sft"))
    if objective is None:
        return  # an unknown objective fails with its own message
    if objective.record_kind != "conversation":
        raise ConfigError(f"{cfg.origins.get('datasets', 'datasets')}: --objective {objective.name} trains on "
                          f"{objective.record_kind} records from one --dataset; a mix of datasets is for "
                          "conversation sources (--objective sft)")
    for i, entry in enumerate(cfg.data.datasets):
        fmt = registry.formats.get(entry.get("format", cfg.data.dataset_format))
        if fmt is not None and getattr(fmt, "record_kind", "conversation") != "conversation":
            raise ConfigError(f"{cfg.origins.get('datasets', 'datasets')}: datasets[{i}] has format {fmt.name}, "
                              f"which gives {fmt.record_kind} records; --objective {objective.name} trains on "
                              "conversations. Give it its own run with a preference objective")


def _build_sections(cfg: TrainConfig, values: dict[str, dict[str, tuple[Any, str]]]) -> None:
    """Each plugin section's dataclass from its values; its own checks (``__post_init__``,
    ``validate(config)``) turn ValueError into a ConfigError naming the section."""
    from .plugins import get_registry

    for name, entry in get_registry().options.items():
        given = values.get(name, {})
        try:
            cfg.sections[name] = entry.args(**{k: v for k, (v, _) in given.items()})
        except (ValueError, TypeError) as exc:
            raise ConfigError(_section_error(name, given, exc)) from None
    for name, instance in cfg.sections.items():
        check = getattr(instance, "validate", None)
        if callable(check):
            try:
                check(cfg)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


def validate_values(given: dict[str, tuple[Flag, Any, str]]) -> None:
    """Every value the user set (YAML, Python, flags: the one that wins) against its
    option's declared constraint (``flags.Constraint``): the one check of ranges, names and
    paths, before any plugin's own checks and long before the model loads."""
    for flag, value, where in given.values():
        check_value(flag, value, where)


def check_option_paths(cfg: TrainConfig) -> None:
    """What options name outside the config, checked by preflight before anything loads: the
    files (``--deepspeed``, ``--fsdp_config``...: ``path="file"``) exist, and each
    ``--report_to`` target's package is installed."""
    import importlib.util

    for name, flag in all_flags(bool(cfg.training)).items():
        if flag.constraint is not None and flag.constraint.path:
            check_path(flag, cfg.get(name, None), cfg.origins.get(name, f"--{name}"))
    targets = cfg.training.get("report_to")
    for target in targets if isinstance(targets, list) else [targets] if targets else []:
        packages = REPORT_PACKAGES.get(str(target), ())
        if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
            raise ConfigError(f"{cfg.origins.get('report_to', '--report_to')}: {target} is not installed "
                              f"(pip install {packages[0]}), or report elsewhere (--report_to none)")
        if str(target) == "wandb":
            from .wandb_login import check_wandb_login

            check_wandb_login(cfg.origins.get("report_to", "--report_to"))


def _section_error(section: str, given: dict[str, tuple[Any, str]], exc: Exception) -> str:
    """A section's own check failed: say where the values it names came from (YAML file and
    line; a value from a flag is never blamed on a YAML line), or which options they were
    when the message does not name them."""
    text = str(exc)
    named = {k: v for k, v in given.items() if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", text)}
    given = named or given
    if named and not any(", line " in label for _, label in named.values()):
        return text
    locations = [label.rsplit(": ", 1)[0] for _, label in given.values() if ", line " in label]
    if locations:
        return f"{', '.join(dict.fromkeys(locations))}: {text}"
    if any(option in text for option in given):
        return text
    return f"{', '.join(label for _, label in given.values()) or section}: {text}"


def resumable_options() -> frozenset[str]:
    """Plugin options marked as not changing the numbers (``metadata={"resumable": True}``)."""
    return frozenset(name for name, flag in all_flags().items() if flag.resumable)


def validate(cfg: TrainConfig) -> None:
    """Checks across options (each value alone was checked by ``validate_values``)."""
    m, d = cfg.model, cfg.data
    if d.truncate_excess and d.skip_excess_length and "skip_excess_length" in cfg.explicit:
        raise ConfigError(f"{cfg.origins['skip_excess_length']} drops long examples and --truncate_excess keeps "
                          "their start; drop one of the two")
    # one rule, two spellings: everything downstream reads skip_excess_length
    d.skip_excess_length = d.skip_excess_length and not d.truncate_excess
    d.truncate_excess = not d.skip_excess_length
    _check_datasets(cfg)
    if m.use_flash_attention_2 and not m.attn_implementation:
        m.attn_implementation = "flash_attention_2"


def describe_flags(include_training: bool) -> list[Flag]:
    return list(all_flags(include_training).values())

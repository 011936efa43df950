"""The one typed configuration of a run: defaults < YAML file < command-line flags.

Flags use the seed script's underscore spelling (``--model_name_or_path``); the dash
spelling works too. Every field of ``transformers.TrainingArguments`` is accepted as a
flag, as the seed passed them through. Unknown flags and keys are errors with a
suggestion, never ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, PluginError


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArgs:
    model_name_or_path: str | None = _f(None, "Base model: a local folder or a Hub name.")
    tokenizer_name_or_path: str | None = _f(None, "Tokenizer folder, when it differs from the model.")
    trust_remote_code: bool = _f(False, "Allow model code from the checkpoint's repository.")
    loader: str = _f("auto", "Model loader plugin (`airo list loaders`); auto: the one whose plugin says it "
                             "applies to this config.")
    attn_implementation: str | None = _f(None, "eager, sdpa or flash_attention_2 (default: sdpa).")
    use_flash_attention_2: bool = _f(False, "Seed flag: same as --attn_implementation flash_attention_2.")
    tokenizer_patches: str = _f("auto", "Tokenizer patches to apply: auto (those that detect their model), "
                                        "none, or a comma list (e.g. llama1).")
    pad_token: str | None = _f(None, "Override the pad token (llama default: the unk token).")
    eos_token: str | None = _f(None, "Override the EOS token.")
    bos_token: str | None = _f(None, "Override the BOS token.")
    unk_token: str | None = _f(None, "Override the unk token.")


@dataclass
class DataArgs:
    dataset: str | None = _f(None, "Data file (.jsonl .json .parquet .csv .tsv), a saved `datasets` folder, "
                                   "an `airo preprocess` output folder, or a Hub dataset name.")
    dataset_format: str = _f("airoboros", "Dataset format plugin (`airo list formats`).")
    prompt_template: str | None = _f(None, "Prompt template plugin (`airo list templates`); default: the format's.")
    model_max_len: int = _f(2048, "Longest training example in tokens.")
    eval_dataset_size: float = _f(0.02, "Eval split: below 1 a fraction, 1 or more a count, 0 none.")
    train_on: str = _f("auto", "Which tokens are trained: last_reply, all_replies (every assistant turn in one "
                               "example), or auto (last_reply with the reference tokenization for templates that "
                               "offer it, else all_replies).")
    train_on_source: bool = _f(False, "Train on every token, prompts included.")
    expand_conversations: bool = _f(False, "Emit one example per assistant turn (the seed's expansion).")
    include_sources: str = _f("ALL", "Comma list of record `source` values to keep; ALL keeps everything.")
    skip_excess_length: bool = _f(True, "Drop (and report) examples longer than the model allows.")
    on_bad_record: str = _f("error", "error: stop at the first bad record; skip: count it, write it to "
                                     "rejects.jsonl and go on.")
    max_train_samples: int | None = _f(None, "Keep only the first N training examples.")
    max_eval_samples: int | None = _f(None, "Keep only the first N eval examples.")
    dataset_cache_dir: str | None = _f(None, "Where tokenized datasets are cached (default: "
                                             "$AIRO_CACHE or ~/.cache/airo).")


@dataclass
class RunArgs:
    output_dir: str | None = _f(None, "Final artifacts: the adapter, or the model of a full fine-tune.")
    working_dir: str | None = _f(None, "Checkpoints and logs (default: OUTPUT_DIR-checkpoints).")
    post_train_actions: str = _f("auto", "auto, none, or a comma list; `auto,NAME` adds to the defaults.")


# The seed's defaults (upstream QLoRA's) where they differ from TrainingArguments'.
SEED_TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "max_grad_norm": 0.3,
    "lr_scheduler_type": "constant",
    # transformers 5 folded warmup_ratio into warmup_steps: a float below 1 is a ratio.
    "warmup_steps": 0.03,
    "weight_decay": 0.0,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 16,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 250,
    "save_total_limit": 40,
    "neftune_noise_alpha": 5.0,
    "remove_unused_columns": False,
    "report_to": "none",
    "optim": "auto",
}

# Seed flags renamed since.
ALIASES = {"evaluation_strategy": "eval_strategy", "warmup_ratio": "warmup_steps"}

# Seed flags that no longer do anything: accepted, with the reason, so old command lines run.
OBSOLETE = {
    "max_new_tokens": "airo does not generate during evaluation",
    "min_new_tokens": "airo does not generate during evaluation",
    "do_sample": "airo does not generate during evaluation",
    "num_beams": "airo does not generate during evaluation",
    "num_beam_groups": "airo does not generate during evaluation",
    "penalty_alpha": "airo does not generate during evaluation",
    "temperature": "airo does not generate during evaluation",
    "top_k": "airo does not generate during evaluation",
    "top_p": "airo does not generate during evaluation",
    "typical_p": "airo does not generate during evaluation",
    "diversity_penalty": "airo does not generate during evaluation",
    "repetition_penalty": "airo does not generate during evaluation",
    "length_penalty": "airo does not generate during evaluation",
    "no_repeat_ngram_size": "airo does not generate during evaluation",
    "predict_with_generate": "airo does not generate during evaluation",
    "sample_generate": "airo does not generate during evaluation",
    "use_cache": "the KV cache is off while training anyway",
    "do_mmlu_eval": "the MMLU evaluation was removed; run an eval harness on the output",
    "mmlu_split": "the MMLU evaluation was removed",
    "mmlu_dataset": "the MMLU evaluation was removed",
    "max_mmlu_samples": "the MMLU evaluation was removed",
    "mmlu_source_max_len": "the MMLU evaluation was removed",
    "source_max_len": "lengths are governed by --model_max_len",
    "target_max_len": "lengths are governed by --model_max_len",
    "use_auth_token": "use `hf auth login` or HF_TOKEN",
    "max_memory_MB": "accelerate places the model",
    "do_train": "airo train always trains",
    "max_steps_per_epoch": "not supported",
}

SECTIONS = {"model": ModelArgs, "data": DataArgs, "run": RunArgs}


def suggest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""


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
        return TrainingArguments(**kwargs)


# -- flag table --------------------------------------------------------------------------

@dataclass(frozen=True)
class Flag:
    name: str
    section: str  # model | data | run | training | a plugin's section
    type: Any
    default: Any
    help: str
    plugin: str = ""  # the plugin that registered the section ("" for airo's own options)
    resumable: bool = False  # may change when a run resumes (plugin options say so in metadata)


def _own_flags() -> dict[str, Flag]:
    flags: dict[str, Flag] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flags[f.name] = Flag(f.name, section, hints[f.name], f.default, f.metadata.get("help", ""))
    return flags


_TRAINING_FLAGS: dict[str, Flag] | None = None


def training_flags() -> dict[str, Flag]:
    """TrainingArguments fields as flags (imports transformers once)."""
    global _TRAINING_FLAGS
    if _TRAINING_FLAGS is None:
        from transformers import TrainingArguments

        hints = typing.get_type_hints(TrainingArguments)
        flags = {}
        for f in dataclasses.fields(TrainingArguments):
            if not f.init or f.name.startswith("_") or f.name == "output_dir":
                continue
            default = SEED_TRAINING_DEFAULTS.get(f.name, f.default)
            flags[f.name] = Flag(f.name, "training", hints.get(f.name, str), default,
                                 f.metadata.get("help", "") if f.metadata else "")
        _TRAINING_FLAGS = flags
    return _TRAINING_FLAGS


def _default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def plugin_flags(core: dict[str, Flag]) -> dict[str, Flag]:
    """The options plugins registered (``register_options``), as flags. A name another
    section already has is an error naming both plugins and their distributions."""
    from .plugins import get_registry

    registry = get_registry()
    flags: dict[str, Flag] = {}
    for section in registry.options.values():
        hints = typing.get_type_hints(section.args)
        for f in dataclasses.fields(section.args):
            other = flags.get(f.name) or core.get(f.name)
            if other is not None:
                def who(plugin: str) -> str:
                    info = registry.plugins.get(plugin)
                    return f"plugin {plugin!r} ({info.distribution if info else '?'})" if plugin else "airo itself"
                raise PluginError(f"the option --{f.name} is registered twice: by {who(section.plugin)} in section "
                                  f"{section.name!r} and by {who(other.plugin)} in section {other.section!r}; "
                                  "block or uninstall one of them (AIRO_DISABLE_PLUGINS)")
            flags[f.name] = Flag(f.name, section.name, hints.get(f.name, str), _default_of(f),
                                 f.metadata.get("help", ""), plugin=section.plugin,
                                 resumable=bool(f.metadata.get("resumable")))
    return flags


def all_flags(include_training: bool = True) -> dict[str, Flag]:
    flags = dict(training_flags()) if include_training else {}
    flags.update(_own_flags())  # airo's own win where names overlap
    flags.update(plugin_flags(flags))
    return flags


def section_names() -> list[str]:
    """YAML sections: airo's own, ``training``, and every plugin's."""
    from .plugins import get_registry

    return [*SECTIONS, "training", *get_registry().options]


# -- value conversion ----------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


def _strip_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        # Union[str, SomeEnum] and friends: the string form is what TrainingArguments accepts.
        if len(args) == 1:
            return _strip_optional(args[0])
        for preferred in (bool, int, float):
            if preferred in args and all(a in (bool, int, float) for a in args):
                return preferred
        if any(typing.get_origin(a) in (list, dict) or a in (list, dict) for a in args):
            return next(a for a in args if typing.get_origin(a) in (list, dict) or a in (list, dict))
        return str
    return tp


def is_bool_flag(flag: Flag) -> bool:
    return _strip_optional(flag.type) is bool


_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "text", list: "a list",
          dict: "a mapping"}


def _described(value: Any) -> str:
    """``a list [4]``: what a wrong value is, for messages."""
    if value is None:
        return "nothing (null)"
    kind = next((name for tp, name in _KINDS.items() if isinstance(value, tp)), type(value).__name__)
    text = json.dumps(value, default=str) if isinstance(value, (list, dict, bool)) else repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _expected(tp) -> str:
    if tp is bool:
        return "true or false"
    origin = typing.get_origin(tp) or tp
    return {int: "an integer", float: "a number", list: "a list", dict: "a mapping"}.get(origin, "text")


def convert(flag: Flag, value: Any, where: str) -> Any:
    """``value`` (a flag's text, or a YAML or Python value) as ``flag``'s type; ConfigError
    naming ``where`` (``--bits`` or ``train.yaml, line 7: bits``) for a value of the wrong
    shape, an unparsable string, or a number that is not finite."""
    tp = _strip_optional(flag.type)
    origin = typing.get_origin(tp) or tp
    optional = flag.default is None or type(None) in typing.get_args(flag.type)
    if value is None:
        wrong_shape = not optional and origin in (bool, int, float, str, list, dict)
    else:  # shapes no conversion can make sense of (`bits: [4]`, `learning_rate: true`)
        wrong_shape = (isinstance(value, dict) and origin in (bool, int, float, str, list)
                       or isinstance(value, list) and origin in (bool, int, float, dict)
                       or isinstance(value, list) and origin is str and any(isinstance(v, (list, dict)) for v in value)
                       or isinstance(value, bool) and origin in (int, float))
    if wrong_shape:
        raise ConfigError(f"{where}: expected {_expected(tp)}, got {_described(value)}")
    if value is None:
        return None
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected true or false")
        # "None" unsets an optional number (--neftune_noise_alpha None); for text options
        # such as --report_to, "none" is a value of its own.
        if isinstance(value, str) and value.strip().lower() in ("none", "null") and optional \
                and tp in (int, float, bool):
            return None
        if tp is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError("expected an integer")
                return int(value)
            return int(value)
        if tp is float:
            number = float(value)
            if not math.isfinite(number):  # nan or inf: accepted here, it would fail after the model loaded
                raise ValueError("expected a finite number")
            return number
        if origin is list:
            if isinstance(value, list):
                return value
            text = str(value).strip()
            if text.startswith("["):
                return json.loads(text)
            return [v for v in text.replace(",", " ").split() if v]
        if origin is dict:
            if isinstance(value, dict):
                return value
            text = str(value).strip()
            if text.startswith("{"):
                return json.loads(text)
            return text  # e.g. a path to a JSON file (--deepspeed)
        if isinstance(value, list) and tp is str:
            return ",".join(str(v) for v in value)  # YAML `include_sources: [a, b]`
        if isinstance(value, (dict, list)):
            return value
        return str(value) if not isinstance(value, str) else value
    except (ValueError, TypeError, OverflowError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: invalid value {value!r} for {flag.name}: {exc}") from None


# -- parsing -------------------------------------------------------------------------------

def _normalise(name: str) -> str:
    return name.replace("-", "_")


def parse_flag_tokens(tokens: list[str], flags: dict[str, Flag]) -> list[tuple[str, Any, str]]:
    """``--name value`` / ``--name=value`` / bare boolean ``--name`` -> (name, raw value, origin)."""
    out = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected argument {tok!r}: flags look like --name value")
        body = tok[2:]
        raw: Any
        if "=" in body:
            body, raw = body.split("=", 1)
            i += 1
        else:
            name = ALIASES.get(_normalise(body), _normalise(body))
            flag = flags.get(name)
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            takes_value = nxt is not None and not (nxt.startswith("--") and len(nxt) > 2)
            if flag is not None and is_bool_flag(flag):
                if takes_value and nxt.strip().lower() in _TRUE | _FALSE:
                    raw, i = nxt, i + 2
                else:
                    raw, i = True, i + 1
            elif takes_value:
                raw, i = nxt, i + 2
            elif flag is None and _normalise(body) in OBSOLETE:
                raw, i = True, i + 1
            else:
                raise ConfigError(f"flag --{body} needs a value")
        out.append((ALIASES.get(_normalise(body), _normalise(body)), raw, f"--{body}"))
    return out


class YamlOptions(dict):
    """A YAML config's option: value pairs, sections flattened; ``lines[option]`` is the
    1-based line each was set on."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.lines: dict[Any, int] = {}


class _LinedDict(dict):
    """A YAML mapping with the 1-based line of each key."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int):
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader whose mappings remember the line of each key (``.lines``) and refuse
        a key given twice (YAML itself would keep the last one silently)."""

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

        def construct_lined_map(self, node):
            data = _LinedDict()
            yield data
            data.update(self.construct_mapping(node))
            data.lines = {self.construct_object(k): k.start_mark.line + 1
                          for k, _ in node.value if isinstance(k, yaml.ScalarNode)}

    Loader.add_constructor("tag:yaml.org,2002:map", Loader.construct_lined_map)
    return Loader


def _yaml_error(path: Path, exc) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None)
    text = ", ".join(p for p in (getattr(exc, "context", None), problem) if p) if problem else str(exc)
    return ConfigError(f"{where}: not valid YAML: {' '.join(text.split())}")


def load_yaml(path: str | os.PathLike) -> YamlOptions:
    """A YAML config as option: value, with ``model:``/``data:``/``run:``/``training:``
    sections flattened. Every error names the file and the line."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}, line {line}: not valid UTF-8 ({exc.reason}); save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(f"{p}, line {dup.again}: {dup.key} is set twice (first on line {dup.first}); "
                          "keep one") from None
    except yaml.YAMLError as exc:
        raise _yaml_error(p, exc) from None
    if data is None:
        data = _LinedDict()
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of option: value")
    flat = YamlOptions(str(p))
    names: dict[str, Any] = {}
    sections = section_names()

    def add(key: Any, value: Any, line: int | None) -> None:
        name = ALIASES.get(_normalise(str(key)), _normalise(str(key)))
        if name in names:  # `lora_r` twice across sections, or `lora-r` and `lora_r`
            first = names[name]
            raise ConfigError(f"{p}, line {line}: {key} is set twice (first on line {flat.lines.get(first)} "
                              f"as {first}); keep one")
        names[name] = key
        flat[key] = value
        flat.lines[key] = line

    for key, value in data.items():
        line = data.lines.get(key)
        if key in sections:
            if value is None:  # an empty `model:` section
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{p}, line {line}: {key}: expected a section of option: value lines "
                                  f"indented under it, got {_described(value)}")
            for inner, inner_value in value.items():
                add(inner, inner_value, value.lines.get(inner))
        else:
            add(key, value, line)
    return flat


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
            layers.append((ALIASES.get(_normalise(str(key)), _normalise(str(key))), value, str(key), where))
    for key, value in (values or {}).items():
        layers.append((ALIASES.get(_normalise(key), _normalise(key)), value, key, None))
    layers.extend((name, raw, origin, None) for name, raw, origin in parse_flag_tokens(list(argv or []), flags))
    plugin_values: dict[str, dict[str, tuple[Any, str]]] = {}

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
                              f"{suggest(name, list(flags) + list(OBSOLETE))} "
                              "(`airo train --help-all` lists every option.)")
        value = convert(flag, raw, label)
        if "warmup_ratio" in origin and value is not None and not 0 <= value < 1:
            raise ConfigError(f"{label}: a warmup ratio must be in [0, 1), got {value}")
        cfg.explicit.add(name)
        if flag.section == "training":
            cfg.training[name] = value
        elif flag.plugin:
            plugin_values.setdefault(flag.section, {})[name] = (value, label)
        else:
            setattr(getattr(cfg, flag.section), name, value)
    if include_training:
        for name, default in SEED_TRAINING_DEFAULTS.items():
            cfg.training.setdefault(name, default)
    _build_sections(cfg, plugin_values)
    validate(cfg)
    return cfg


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


def _section_error(section: str, given: dict[str, tuple[Any, str]], exc: Exception) -> str:
    """A section's own check failed: say where the values came from (YAML file and line), or
    which options they were when the message does not name them."""
    text = str(exc)
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
    m, d = cfg.model, cfg.data
    if d.on_bad_record not in ("error", "skip"):
        raise ConfigError(f"--on_bad_record must be error or skip, got {d.on_bad_record!r}")
    if d.train_on not in ("auto", "last_reply", "all_replies"):
        raise ConfigError(f"--train_on must be auto, last_reply or all_replies, got {d.train_on!r}."
                          f"{suggest(d.train_on, ['last_reply', 'all_replies'])}")
    if not math.isfinite(d.eval_dataset_size) or d.eval_dataset_size < 0:
        raise ConfigError(f"--eval_dataset_size must be a fraction below 1, a count, or 0; got {d.eval_dataset_size}")
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(d, name) is not None and getattr(d, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(d, name)}")
    if d.model_max_len < 16:
        raise ConfigError("--model_max_len must be at least 16")
    if m.use_flash_attention_2 and not m.attn_implementation:
        m.attn_implementation = "flash_attention_2"


def describe_flags(include_training: bool) -> list[Flag]:
    return list(all_flags(include_training).values())

"""The sources of a run: the ``datasets:`` list (or ``--dataset`` given once or several
times), each entry checked before anything loads, and the state one source carries
through the stages (:class:`SourceState`).

Imports nothing above the data layer's bottom: the config checks its ``datasets:`` entries
with :func:`check_entries` while it is built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

SHARES = ("weight", "records", "epochs")
CHOICES = ("random", "every")
TRAIN_ON = ("auto", "last_reply", "all_replies", "everything")
FIELDS = ("path", "format", "template", "template_choice", "train_on", "split", "eval_size", "max_records",
          *SHARES)
DEDUP = ("none", "prompt", "conversation")


@dataclass
class SourceState:
    """One source of the mix, from its entry to what it contributed. The spec (the entry's
    values, resolved against the run's options) is fixed before anything is read; the
    counts are filled in as the stages run."""

    index: int
    path: str
    format: str
    templates: list[str] | None  # None: the format's default (or --prompt_template)
    template_choice: str = "random"
    train_on: str = "auto"
    train_on_source: bool = False
    split: str | None = None
    eval_size: float = 0.0
    max_records: int | None = None
    share: str = "weight"  # weight | records | epochs
    amount: float = 1.0
    # filled in by the stages
    cache_key: str | None = None
    from_cache: bool = False
    report: Any = None  # its DataReport
    train_examples: int = 0  # examples built (before dedup and mixing)
    eval_examples: int = 0
    duplicates_removed: int = 0
    mixed: int = 0  # training examples it gives the mix (repeats included)
    mixed_eval: int = 0
    mixed_tokens: int = 0
    mixed_trained: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"datasets[{self.index}]"

    def source_config(self, config, *, alone: bool):
        """``config`` as the pipeline sees it for this source alone: its path, format,
        template and split options. ``alone`` (a single source): the run's example limits
        apply to it; in a mix they apply to the mix."""
        data = dataclasses.replace(
            config.data, dataset=self.path, dataset_format=self.format,
            prompt_template=self.templates[0] if self.templates else config.data.prompt_template,
            train_on="auto" if self.train_on == "everything" else self.train_on,
            train_on_source=self.train_on_source, eval_dataset_size=self.eval_size,
            max_train_samples=config.data.max_train_samples if alone else None,
            max_eval_samples=config.data.max_eval_samples if alone else None)
        return dataclasses.replace(config, data=data)

    def summary(self) -> dict[str, Any]:
        """The counts the data report, `airo preview` and the model card show for it."""
        r = self.report
        dropped = dict(r.dropped) if r is not None else {}
        return {
            "index": self.index, "path": self.path, "format": self.format,
            "template": ",".join(self.templates) if self.templates else (r.template if r is not None else ""),
            "share": self.share, "amount": self.amount,
            "records_read": r.records_read if r is not None else 0,
            "skipped": {k: v for k, v in dropped.items() if k != "decontaminated"},
            "duplicates_removed": self.duplicates_removed,
            "decontaminated": dropped.get("decontaminated", 0),
            "examples_built": {"train": self.train_examples, "eval": self.eval_examples},
            "train_examples": self.mixed, "eval_examples": self.mixed_eval,
            "tokens": self.mixed_tokens, "trained_tokens": self.mixed_trained,
            "from_cache": self.from_cache,
        }


def _where(origin: str | None, entry: Any, index: int, key: str | None = None) -> str:
    """``train.yaml, line 9: datasets[1].weight`` (the field's own line when the YAML has it)."""
    base = origin.rsplit(": ", 1)[0] if origin and ", line " in origin else (origin or "datasets")
    lines = getattr(entry, "lines", None) or {}
    if key is not None and key in lines and ", line " in base:
        base = base.rsplit(", line ", 1)[0] + f", line {lines[key]}"
    elif origin and ", line " not in origin and origin.startswith("--"):
        base = origin
    name = f"datasets[{index}]" + (f".{key}" if key else "")
    return f"{base}: {name}" if base != "datasets" else name


def _number(value: Any, where: str, *, whole: bool = False, minimum: float | None = None,
            above: float | None = None) -> float | int:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if not bad and whole and not float(value).is_integer():
        bad = True
    if not bad and ((minimum is not None and value < minimum) or (above is not None and value <= above)):
        bad = True
    if bad:
        want = "a whole number" if whole else "a number"
        bound = f" of at least {minimum:g}" if minimum is not None else f" above {above:g}" if above is not None else ""
        raise ConfigError(f"{where} must be {want}{bound}, got {value!r}")
    return int(value) if whole else value


def check_entries(entries: Any, origin: str | None, *, formats=None, templates=None) -> list[dict[str, Any]]:
    """The ``datasets:`` entries as plain dicts, every field checked: a ConfigError names the
    entry (its index, from 0), the field and, from a YAML file, the line. ``formats`` and
    ``templates``: the registered names (checked when given)."""
    from ..options import suggest

    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{origin or 'datasets'}: expected a list of datasets (each a path, or a mapping with "
                          f"path: and its options), got {entries!r}")
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{_where(origin, entry, i)}: expected a path or a mapping of "
                              f"{', '.join(FIELDS)}, got {entry!r}")
        for key in entry:
            if key not in FIELDS:
                raise ConfigError(f"{_where(origin, entry, i, key)}: unknown field.{suggest(str(key), FIELDS)} "
                                  f"Fields: {', '.join(FIELDS)}")
        path = entry.get("path")
        if "path" not in entry:
            raise ConfigError(f"{_where(origin, entry, i)}: path is required (a file, folder or Hub name)")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"{_where(origin, entry, i, 'path')}: expected a file, folder or Hub name, got {path!r}")
        shares = [k for k in SHARES if k in entry]
        if len(shares) > 1:
            raise ConfigError(f"{_where(origin, entry, i, shares[1])}: give exactly one of weight, records or epochs "
                              f"(this entry sets {' and '.join(shares)})")
        if "weight" in entry:
            _number(entry["weight"], _where(origin, entry, i, "weight"), above=0)
        if "records" in entry:
            _number(entry["records"], _where(origin, entry, i, "records"), whole=True, minimum=1)
        if "epochs" in entry:
            _number(entry["epochs"], _where(origin, entry, i, "epochs"), above=0)
        if "max_records" in entry:
            _number(entry["max_records"], _where(origin, entry, i, "max_records"), whole=True, minimum=1)
        if "eval_size" in entry:
            size = _number(entry["eval_size"], _where(origin, entry, i, "eval_size"), minimum=0)
            if size >= 1 and not float(size).is_integer():
                raise ConfigError(f"{_where(origin, entry, i, 'eval_size')} must be a fraction below 1, a count, "
                                  f"or 0, got {size!r}")
        for key, choices in (("template_choice", CHOICES), ("train_on", TRAIN_ON)):
            if key in entry and entry[key] not in choices:
                raise ConfigError(f"{_where(origin, entry, i, key)} must be one of {', '.join(choices)}, "
                                  f"got {entry[key]!r}.{suggest(str(entry[key]), choices)}")
        for key in ("format", "split"):
            if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
                raise ConfigError(f"{_where(origin, entry, i, key)}: expected a name, got {entry[key]!r}")
        template = entry.get("template")
        if "template" in entry:
            names = template if isinstance(template, list) else [template]
            if not names or not all(isinstance(n, str) and n.strip() for n in names):
                raise ConfigError(f"{_where(origin, entry, i, 'template')}: expected a template name or a list of "
                                  f"them, got {template!r}")
            if templates is not None:
                for name in names:
                    if name not in templates:
                        raise ConfigError(f"{_where(origin, entry, i, 'template')}: unknown prompt template "
                                          f"{name!r}.{suggest(name, list(templates))} (`airo list templates`)")
        if formats is not None and "format" in entry and entry["format"] not in formats:
            raise ConfigError(f"{_where(origin, entry, i, 'format')}: unknown dataset format "
                              f"{entry['format']!r}.{suggest(entry['format'], list(formats))} (`airo list formats`)")
        out.append({k: (list(v) if isinstance(v, list) else v) for k, v in entry.items()})
    return out


def resolve_sources(config) -> list[SourceState]:
    """The run's sources in list order: the ``datasets:`` entries, each field it leaves out
    taken from the run's options (--dataset_format, --prompt_template, --train_on,
    --eval_dataset_size); without ``datasets:``, --dataset as a list of one."""
    d = config.data
    entries = d.datasets or [{"path": d.dataset}]
    out = []
    for i, entry in enumerate(entries):
        template = entry.get("template")
        templates = template if isinstance(template, list) else [template] if template else None
        train_on = entry.get("train_on", d.train_on)
        share = next((k for k in SHARES if k in entry), "weight")
        out.append(SourceState(
            index=i, path=entry["path"], format=entry.get("format", d.dataset_format), templates=templates,
            template_choice=entry.get("template_choice", "random"), train_on=train_on,
            train_on_source=d.train_on_source or train_on == "everything", split=entry.get("split"),
            eval_size=entry.get("eval_size", d.eval_dataset_size), max_records=entry.get("max_records"),
            share=share, amount=float(entry.get(share, 1.0))))
    return out

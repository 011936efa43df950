"""What a config resolves to before any data is read (:class:`Plan`), and what the pipeline
hands the training run (:class:`PreparedData`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError
from ..types import DatasetFormat, TemplateEntry
from .report import DataReport


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset
    eval: Any | None
    report: DataReport
    format_name: str
    template_name: str
    template: Any
    train_on: str
    from_cache: bool = False
    data_fingerprint: str | None = None  # SHA-256 of --dataset's content (None for a Hub dataset)
    # one entry per source of a mix (``datasets:``), in list order: what each contributed
    sources: list[dict[str, Any]] = field(default_factory=list)
    source_of: Any = None  # numpy: the source (its index in ``sources``) of each training example


@dataclass
class Plan:
    """What the config resolves to, before any data is read."""

    fmt: DatasetFormat
    template: TemplateEntry
    train_on: str  # last_reply | all_replies
    tokenization: str  # reference | whole
    train_on_source: bool = False
    # decontamination: a conversation -> why it must not be trained on, or None (convert.Screen)
    screen: Any = field(default=None, repr=False, compare=False)
    choice: str = "random"  # a source with several templates: one per conversation (random) or every one
    split: str | None = None  # the split of a saved or Hub dataset to train on (default: train)
    max_records: int | None = None  # read at most this many records of the source

    @property
    def trained(self) -> str:
        """What the report and the run summary call the training signal."""
        return "everything" if self.train_on_source else self.train_on


def resolve_plans(config: TrainConfig, templates: list[str] | None = None) -> list[Plan]:
    """One Plan per template (``templates``, default: the config's one), in order."""
    if not templates:
        return [resolve_plan(config)]
    return [resolve_plan(config, name) for name in templates]


def resolve_plan(config: TrainConfig, template: str | None = None) -> Plan:
    from ..plugins import get_registry

    registry = get_registry()
    fmt = registry.get("formats", config.data.dataset_format)
    template_name = template or config.data.prompt_template or fmt.default_template
    if not template_name:
        raise ConfigError(f"dataset format {fmt.name!r} has no default prompt template; pass --prompt_template")
    template = registry.get("templates", template_name)
    has_reference = callable(getattr(template.template, "source_target", None))
    train_on = config.data.train_on
    if train_on == "auto":
        train_on = "last_reply" if has_reference else "all_replies"
    tokenization = "reference" if (has_reference and train_on == "last_reply") else "whole"
    return Plan(fmt, template, train_on, tokenization, config.data.train_on_source)

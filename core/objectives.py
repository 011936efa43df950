"""The training objective of a run (``--objective NAME``, ``register_objectives``).

The recipe asks the selected objective for two things: the tokenized datasets
(``prepare``) and how they are trained (``training_data``: the train dataset, the collator,
the Trainer class and packing stats). ``sft`` (the built-in ``objectives`` plugin) answers
with airo's supervised pipeline, unchanged; preference objectives read preference records
(:mod:`airo.core.preference`) and bring their loss (:mod:`airo.core.training.preference_trainer`).
"""

from __future__ import annotations

from .errors import ConfigError
from .types import Objective

# what an objective's record kind calls the records, for messages
_RECORDS = {"conversation": "conversations", "preference": "preference pairs",
            "unpaired": "labelled single replies"}


def select_objective(config, registry=None) -> Objective:
    """The objective ``--objective`` names, checked against ``--dataset_format``: a format
    must give the records the objective reads (a preference format under ``sft``, or a
    conversation format under ``dpo``, is refused before anything is read)."""
    if registry is None:
        from .plugins import get_registry

        registry = get_registry()
    entry = registry.get("objectives", config.run.objective)
    fmt = registry.get("formats", config.data.dataset_format)
    if fmt.record_kind != entry.record_kind:
        matching = sorted(name for name, f in registry.formats.items() if f.record_kind == entry.record_kind)
        objectives = sorted(name for name, o in registry.objectives.items() if o.record_kind == fmt.record_kind)
        raise ConfigError(
            f"--objective {entry.name} trains on {_RECORDS[entry.record_kind]}, but --dataset_format {fmt.name} "
            f"gives {_RECORDS[fmt.record_kind]}. Formats for {entry.name}: {', '.join(matching) or 'none'}; "
            f"objectives for {fmt.name}: {', '.join(objectives) or 'none'}")
    return entry


def prepare(config, tokenizer, *, rejects_dir=None):
    """The selected objective's tokenized datasets (a ``PreparedData``)."""
    return select_objective(config).objective.prepare(config, tokenizer, rejects_dir=rejects_dir)


def training_data(config, train, tokenizer, model, args, trainer_cls):
    """The selected objective's (train dataset, collator, Trainer class, packing stats or None)."""
    return select_objective(config).objective.training_data(config, train, tokenizer, model, args, trainer_cls)

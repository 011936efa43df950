"""The built-in ``sft`` objective: supervised fine-tuning on conversations, airo's default.

It is airo's data pipeline and batching as they were before objectives became plugins:
``prepare`` is the tokenized (and cached) conversation data, ``training_data`` the padded or
packed rows and the Trainer's own causal-LM loss on the labelled tokens.
"""

from __future__ import annotations

from airo.core import hookimpl


class SupervisedObjective:
    """Next-token cross-entropy on the trained tokens (``--train_on``)."""

    causal_lm_loss = True  # the model's own loss on the labels: the core may compute it in chunks

    def prepare(self, config, tokenizer, *, rejects_dir=None):
        from airo.core import prepare_datasets

        return prepare_datasets(config, tokenizer, rejects_dir=rejects_dir)

    def training_data(self, config, train, tokenizer, model, args, trainer_cls):
        from airo.core import training_data

        return training_data(config, train, tokenizer, model, args, trainer_cls)


@hookimpl
def register_objectives(register):
    register("sft", SupervisedObjective(), record_kind="conversation",
             description="supervised fine-tuning: cross-entropy on the trained replies (the default)")

"""Training on preference data: batches of pairs, sequence log-probabilities, the reference
model, and a Trainer whose loss is the objective's.

:class:`PreferenceObjective` is the base of the preference objectives (``register_objectives``):
a subclass writes ``loss(batch, config) -> (loss, metrics)`` on the log-probabilities of a
batch (:class:`PairBatch` or :class:`UnpairedBatch`) and gets the data pipeline
(:mod:`airo.core.preference`), the batching, the reference and the logging.

The reference model, without a second copy of the base where one is avoidable:

- a LoRA/QLoRA policy: the same model with its adapter disabled (the base);
- a policy started from another adapter (``set_reference_weights``, e.g. ``--init_adapter``):
  that adapter's weights, swapped into the trainable tensors for the reference pass and
  swapped back before the policy's (a copy of the adapter, not of the base);
- a full fine-tune: a frozen copy of the model as it was when training started.

Metrics (``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``,
``logps/chosen``, ``logps/rejected`` and the objective's own) are averaged over the examples
of every step since the last log (and over the processes) and go through the Trainer's
``log``, so ``metrics.jsonl``, wandb and tensorboard get them; at evaluation as ``eval_*``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..preference import prepare_preferences
from .dist import say
from .preference_batches import IGNORE_INDEX, PreferenceCollator  # noqa: F401 - part of this module's API



@dataclass
class PairBatch:
    """Summed log-probabilities of the scored tokens of each pair's replies (shape ``(B,)``),
    their token counts, and the reference's (None for a reference-free objective)."""

    chosen_logps: Any
    rejected_logps: Any
    chosen_lengths: Any
    rejected_lengths: Any
    ref_chosen_logps: Any = None
    ref_rejected_logps: Any = None


@dataclass
class UnpairedBatch:
    """One reply per example (``desirable``: a bool tensor), and the replies of other
    examples of the batch after each prompt (``kl_*``: KTO's estimate of the KL term)."""

    logps: Any
    lengths: Any
    desirable: Any
    ref_logps: Any = None
    kl_logps: Any = None
    ref_kl_logps: Any = None
    # the mean of a tensor over the processes (the identity in one process): KTO's z0 is the batch's, all ranks'
    mean_over_processes: Any = None


def sequence_logps(logits, labels):
    """(summed log-probability of each row's labelled tokens, their count): the model
    predicts ``labels[t]`` from position ``t - 1``."""
    import torch

    labels = labels[:, 1:]
    logits = logits[:, :-1].float()
    mask = labels != IGNORE_INDEX
    picked = torch.gather(logits, 2, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    per_token = picked - torch.logsumexp(logits, dim=-1)
    return (per_token * mask).sum(-1), mask.sum(-1)


def _logps(model, batch: dict[str, Any], rows: slice | None = None):
    inputs = {k: batch[k] if rows is None else batch[k][rows] for k in ("input_ids", "attention_mask")}
    out = model(**inputs, use_cache=False)
    labels = batch["labels"] if rows is None else batch["labels"][rows]
    return sequence_logps(out.logits, labels)


class Reference:
    """How the reference log-probabilities are computed (see the module's docstring)."""

    def __init__(self, kind: str, model=None, weights: dict[str, Any] | None = None):
        self.kind, self.model, self.weights = kind, model, weights

    @contextlib.contextmanager
    def active(self, policy):
        """The model to run for the reference, as a context."""
        if self.kind == "copy":
            yield self.model
        elif self.kind == "adapter_off":
            with policy.disable_adapter():
                yield policy
        else:  # "weights": the reference's values in the trainable tensors for the pass
            params = dict(policy.named_parameters())
            saved = {name: params[name].detach().clone() for name in self.weights}
            for name, value in self.weights.items():
                params[name].data.copy_(value.to(params[name].device, params[name].dtype))
            try:
                yield policy
            finally:
                for name, value in saved.items():
                    params[name].data.copy_(value)

    def describe(self) -> str:
        return {"copy": "a frozen copy of the model at the start",
                "precomputed": "the model as loaded, its log-probs computed in one pass before training",
                "adapter_off": "the base model (the adapter disabled)",
                "weights": "the adapter the run started from, frozen"}[self.kind]


def default_reference(model) -> Reference:
    """The base with the adapter disabled for a PEFT model; else a frozen copy."""
    import copy

    if callable(getattr(model, "disable_adapter", None)) and getattr(model, "peft_config", None):
        return Reference("adapter_off")
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return Reference("copy", model=frozen)


def reference_from_current(model) -> Reference:
    """The trainable weights as they are now, frozen: the reference of a policy that starts
    from another adapter (loaded into the model just before)."""
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    if not weights:
        raise ConfigError("the model has no trainable weights to take the reference from")
    return Reference("weights", weights=weights)


class PreferenceObjective:
    """Base of the preference objectives: subclasses set ``record_kind`` (``"preference"`` or
    ``"unpaired"``), ``needs_reference`` and ``metrics`` (the names ``loss`` returns) and
    write ``loss(batch, config) -> (loss, {name: per-example values})``."""

    record_kind = "preference"
    needs_reference = True
    metrics: tuple[str, ...] = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                                "logps/chosen", "logps/rejected")

    def loss(self, batch, config):
        raise NotImplementedError(f"{type(self).__name__} must define loss(batch, config)")

    def prepare(self, config, tokenizer, *, rejects_dir=None):
        return prepare_preferences(config, tokenizer, record_kind=self.record_kind, rejects_dir=rejects_dir)

    def reference(self, config, model) -> Reference:
        """The reference model (override to start from another adapter, see the module)."""
        return default_reference(model)

    @staticmethod
    def frozen_weights(model) -> Reference:
        """The trainable weights as they are now as the reference (after loading a start adapter)."""
        return reference_from_current(model)

    def training_data(self, config, train, tokenizer, model, args, trainer_cls):
        main = args.process_index == 0
        if config.data.sample_packing and self.record_kind != "preference":
            raise ConfigError(f"--sample_packing does not apply to --objective {config.run.objective} (it packs "
                              "preference pairs); leave it out")
        if config.data.group_by_length:
            raise ConfigError(f"--group_by_length does not apply to --objective {config.run.objective}; leave it out")
        if args.neftune_noise_alpha:
            # the noise differs between the policy's and the reference's passes: their log-ratio would be noise
            say("note: NEFTune is off for preference objectives (the reference must see the inputs the policy sees)",
                main=main)
            args.neftune_noise_alpha = None
        collator, packing = PreferenceCollator(tokenizer.pad_token_id), None
        if config.data.sample_packing:  # before the reference: a frozen copy must attend as the policy does
            from ..data.packing import packed_trainer_class
            from .preference_packing import packed_training_data

            train, collator, packing = packed_training_data(config, train, tokenizer, model, args)
            trainer_cls = packed_trainer_class(trainer_cls)
        if self.needs_reference and config.get("precompute_ref_log_probs", False):
            if getattr(model, "peft_config", None) or self.record_kind != "preference" or config.data.sample_packing:
                raise ConfigError("--precompute_ref_log_probs is for full fine-tunes on pairs, unpacked (a LoRA run's "
                                  "reference is its base with the adapter disabled: no copy to save)")
            reference = Reference("precomputed")
        else:
            reference = self.reference(config, model) if self.needs_reference else None
        if reference is not None:
            say(f"reference model: {reference.describe()}", main=main)
        return train, collator, preference_trainer_class(trainer_cls, self, config, reference), packing


def preference_trainer_class(trainer_cls, objective: PreferenceObjective, config, reference: Reference | None):
    """``trainer_cls`` with ``objective``'s loss, evaluation step and metrics."""
    import torch

    names = tuple(objective.metrics)

    class PreferenceTrainer(trainer_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_is_scaled_for_ga = False  # a mean over pairs: the Trainer divides by the accumulation
            self.model_accepts_loss_kwargs = False
            self.preference_reference = reference
            self._sums = {split: torch.zeros(len(names), 2, dtype=torch.float64) for split in ("train", "eval")}
            if reference is not None and reference.model is not None:
                reference.model.to(self.args.device)
            if reference is not None and reference.kind == "precomputed":  # the model as loaded: the reference
                self.train_dataset = self._with_reference_logps(self.train_dataset)
                if self.eval_dataset is not None:
                    self.eval_dataset = self._with_reference_logps(self.eval_dataset)

        def _with_reference_logps(self, dataset):
            """``dataset`` with each pair's reference log-probs (one pass, gradients off)."""
            training = self.model.training
            self.model.eval()
            chosen, rejected = [], []
            step = self.args.per_device_eval_batch_size
            with torch.no_grad():
                for start in range(0, len(dataset), step):
                    features = [dataset[i] for i in range(start, min(start + step, len(dataset)))]
                    batch = self._prepare_inputs(self.data_collator(features))
                    logps, _ = _logps(self.model, batch)
                    c, r = logps.split(len(features))
                    chosen += c.tolist()
                    rejected += r.tolist()
            self.model.train(training)
            return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

        def _preference_loss(self, model, inputs):
            policy = self.accelerator.unwrap_model(model)
            batch = dict(inputs)
            desirable = batch.pop("desirable", None)
            counts = batch.pop("num_sequences", None)  # packed rows: the pairs' sequences, chosen and rejected

            def pairs(m):
                if counts is not None:
                    from .preference_packing import packed_logps

                    logps, lengths = packed_logps(m, batch, counts)
                    return (logps[0::2], logps[1::2]), (lengths[0::2], lengths[1::2])
                logps, lengths = _logps(m, batch)
                half = batch["input_ids"].shape[0] // 2
                return logps.split(half), lengths.split(half)

            n = batch["input_ids"].shape[0] // 2
            ref = (None, None)
            if "ref_chosen_logps" in batch:  # computed before training
                ref = (batch.pop("ref_chosen_logps"), batch.pop("ref_rejected_logps"))
            elif reference is not None:
                with torch.no_grad(), reference.active(policy) as ref_model:
                    ref = pairs(ref_model if reference.kind == "copy" else model)[0]
            if desirable is None:
                (chosen, rejected), (chosen_len, rejected_len) = pairs(model)
                made = PairBatch(chosen, rejected, chosen_len, rejected_len, *ref)
            else:
                logps, lengths = _logps(model, batch, slice(0, n))
                with torch.no_grad():
                    kl, _ = _logps(model, batch, slice(n, 2 * n))
                made = UnpairedBatch(logps, lengths, desirable.to(logps.device), ref[0], kl, ref[1],
                                     mean_over_processes=self._mean_over_processes)
            loss, metrics = objective.loss(made, config)
            return loss, metrics

        def _mean_over_processes(self, value):
            if self.args.world_size <= 1:
                return value
            return self.accelerator.reduce(value, reduction="mean")

        def _store(self, metrics: dict[str, Any], split: str) -> None:
            unknown = sorted(set(metrics) - set(names))
            if unknown:
                raise ValueError(f"objective {config.run.objective!r} returned metrics it does not declare in "
                                 f"`metrics`: {', '.join(unknown)}")
            sums = self._sums[split]
            for i, name in enumerate(names):
                if name in metrics:
                    values = torch.as_tensor(metrics[name]).detach().float().reshape(-1).cpu()
                    sums[i, 0] += values.sum().item()
                    sums[i, 1] += values.numel()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, metrics = self._preference_loss(model, inputs)
            self._store(metrics, "train" if model.training else "eval")
            return (loss, None) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss, metrics = self._preference_loss(model, inputs)
            self._store(metrics, "eval")
            return loss.detach(), None, None

        def log(self, logs, *args, **kwargs):
            split = "eval" if any(str(k).startswith("eval_") for k in logs) else "train"
            sums = self._sums[split]
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum").cpu()
            prefix = "eval_" if split == "eval" else ""
            for i, name in enumerate(names):
                if sums[i, 1] > 0:
                    logs[prefix + name] = float(sums[i, 0] / sums[i, 1])
            self._sums[split].zero_()
            return super().log(logs, *args, **kwargs)

    PreferenceTrainer.__name__ = PreferenceTrainer.__qualname__ = f"Preference{trainer_cls.__name__}"
    return PreferenceTrainer

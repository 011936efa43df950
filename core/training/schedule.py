"""The learning-rate schedule of a run whose length changes on resume.

Changing the run's length on resume (``--max_steps``, ``--num_train_epochs``). The resumed
Trainer rebuilds the learning-rate scheduler for the new number of steps and restores only
its step count (``scheduler.pt`` holds no schedule), while the optimizer brings back the
learning rate of the next step from ``optimizer.pt``. Continuing is therefore exactly a run
of the new length from the start when both lengths give the same learning rate at every
step trained so far and the next one; everything else (data order per epoch, RNG,
optimizer state) does not depend on the length. :func:`schedule_mismatch` compares the two
schedules step by step, as the Trainer builds them: a constant schedule, a constant one
past its warmup, or any schedule still within a warmup given in steps (``--warmup_steps``
>= 1) may change length; a schedule that decays toward the planned end (linear, cosine,
polynomial, ...) may not, and the resume is refused with the step whose learning rate
would differ. With ``--max_steps`` the check runs before anything loads; with epochs the
new step count is known once the data is, and it runs as training begins, before a step.
"""

from __future__ import annotations

import json
from typing import Any


def option_defaults() -> dict[str, Any]:
    import dataclasses

    from ..flags import all_flags

    return json.loads(json.dumps({name: flag.default for name, flag in all_flags().items()
                                  if flag.default is not dataclasses.MISSING}, default=str))


def _learning_rates(args, total: int, upto: int) -> list[float] | None:
    """The factor of the learning rate at steps 0..upto of a run of ``total`` steps, as the
    Trainer's scheduler computes it; None when the schedule does not depend on the step count."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                                  num_warmup_steps=args.get_warmup_steps(total), num_training_steps=total,
                                  scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
    except Exception:  # noqa: BLE001 - a bad schedule fails in the Trainer, with its own message
        return None
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas:
        return [float(lambdas[0](step)) for step in range(upto + 1)]
    if not hasattr(scheduler, "get_last_lr"):  # ReduceLROnPlateau and the like: driven by metrics, not steps
        return None
    rates = []
    for _ in range(upto + 1):
        rates.append(float(scheduler.get_last_lr()[0]))
        optimizer.step()
        scheduler.step()
    return rates


def schedule_mismatch(args, trained: int, old_total: Any, new_total: int) -> str | None:
    """Why continuing a run planned for ``old_total`` steps, ``trained`` of them done, as a run
    of ``new_total`` steps would not be a run of ``new_total`` steps from the start; None when
    it would.

    The resumed Trainer rebuilds its scheduler for the new total and restores only the step
    count (``scheduler.pt`` holds no schedule), and the optimizer keeps the learning rate of
    step ``trained`` from ``optimizer.pt``. So the two agree exactly when the schedule of
    either length gives the same learning rate at every step 0..``trained``: a constant
    schedule, a warmup counted in steps (not as a ratio of the total) while it lasts, a
    constant one past its warmup. Linear, cosine, polynomial ... past their warmup do not."""
    if not isinstance(old_total, int) or isinstance(old_total, bool) or old_total <= 0 or old_total == new_total:
        return None
    if trained >= new_total:
        return None  # nothing left to train: the Trainer's callback says so
    before, after = _learning_rates(args, old_total, trained), _learning_rates(args, new_total, trained)
    if before is None or after is None or before == after:
        return None
    step = next(s for s, (a, b) in enumerate(zip(before, after)) if a != b)  # the lr of step `step + 1`
    kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    base = float(args.learning_rate)
    return (f"this command plans {new_total} steps and the run was planned for {old_total} ({trained} trained): "
            f"with --lr_scheduler_type {kind} the learning rate of step {step + 1} is {before[step] * base:.4g} in a run "
            f"of {old_total} steps and {after[step] * base:.4g} in one of {new_total}, so the continued run would "
            f"match no run of {new_total} steps. Keep --max_steps/--num_train_epochs as they were, or train the "
            "longer run from the start with a new --working_dir (a constant schedule can change its length on "
            "resume, and any schedule within a warmup counted in --warmup_steps)")


def schedule_args(config):
    """What :func:`schedule_mismatch` reads of TrainingArguments, from the config, without
    building them (the process group and devices are set up later, once)."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    try:
        defaults = option_defaults()
    except Exception:  # noqa: BLE001
        defaults = {}
    value = lambda key, default: config.training.get(key, defaults.get(key, default))  # noqa: E731
    kwargs = value("lr_scheduler_kwargs", None) or {}
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    args = SimpleNamespace(lr_scheduler_type=value("lr_scheduler_type", "linear"), lr_scheduler_kwargs=kwargs,
                           warmup_steps=value("warmup_steps", 0), learning_rate=value("learning_rate", 5e-5))
    args.get_warmup_steps = lambda total: TrainingArguments.get_warmup_steps(args, total)
    return args

"""Plugins in the training loop: the evaluations of ``register_evaluations``, run at every
evaluation of the Trainer and logged through it, and the ``TrainerCallback``s of
``register_callbacks``.

Each evaluation runs on every rank (a sharded model needs all of them in each forward pass);
the ranks' numbers are gathered and averaged, so every rank logs the same values and rank 0's
loggers (metrics.jsonl, wandb, tensorboard) write them once. torch and transformers are
imported inside the functions that need them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ..errors import AiroError, PluginError
from .dist import say


@dataclass
class CallbackContext:
    """What ``register_callbacks`` factories receive: the run's config, its model and
    tokenizer, the prompt template, the ``transformers.Trainer`` and the working dir."""

    config: Any
    model: Any
    tokenizer: Any
    template: Any
    trainer: Any
    working_dir: str
    is_main_process: bool = True

    def log(self, message: str) -> None:
        say(message, main=self.is_main_process)


@dataclass
class EvaluationContext(CallbackContext):
    """What an evaluation's ``run(ctx)`` receives, at each evaluation: ``model`` is in eval
    mode and gradients are off; ``step`` is the global step, ``rank``/``world_size`` say who
    runs it. :meth:`batches` and :meth:`forward` run token sequences through the model with
    the trainer's device placement."""

    step: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def device(self):
        return self.trainer.args.device

    def batches(self, sequences: Iterable[list[int]], *, batch_size: int | None = None
                ) -> Iterator[tuple[dict[str, Any], list[int]]]:
        """``(batch, lengths)`` for token-id lists, ``batch_size`` at a time (default:
        ``--per_device_eval_batch_size``): ``input_ids`` right-padded with the pad token
        and ``attention_mask``, on the trainer's device; ``lengths`` are the unpadded lengths,
        so a sequence's last token is at ``lengths[i] - 1``."""
        import torch

        size = batch_size or self.trainer.args.per_device_eval_batch_size
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        chunk: list[list[int]] = []

        def emit():
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, seq in enumerate(chunk):
                ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[i, :len(seq)] = 1
            return self.prepare({"input_ids": ids, "attention_mask": mask}), [len(s) for s in chunk]

        for seq in sequences:
            if not seq:
                raise ValueError("an empty token sequence cannot be evaluated")
            chunk.append(list(seq))
            if len(chunk) == size:
                yield emit()
                chunk = []
        if chunk:
            yield emit()

    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` moved (and cast, under DeepSpeed) as the Trainer moves its own."""
        return self.trainer._prepare_inputs(batch)

    def forward(self, batch: dict[str, Any], **kwargs):
        """The model's output for a prepared batch, under the trainer's autocast."""
        with self.trainer.autocast_smart_context_manager():
            return self.model(**batch, **kwargs)


def _rank_and_world(args) -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return args.process_index, args.world_size


def _gather(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's outcome, on every rank (one collective per evaluation round)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [outcome]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, outcome)
    return gathered


def _who(entry, registry) -> str:
    """``plugin 'x' (distribution d 1.0)``, as the registry names a plugin in its messages."""
    from ..plugins import _who as who

    info = registry.plugins.get(entry.plugin) if registry is not None else None
    return who(info) if info is not None else f"plugin {entry.plugin!r}"


def checked_metrics(entry, returned: Any, registry=None) -> dict[str, float]:
    """``returned`` as ``{name: float}``, or a PluginError naming the evaluation's plugin."""
    problem = None
    if not isinstance(returned, dict):
        problem = f"returned {type(returned).__name__}"
    else:
        metrics: dict[str, float] = {}
        for key, value in returned.items():
            if hasattr(value, "item") and callable(value.item):  # torch / numpy scalars
                value = value.item()
            if not isinstance(key, str) or not key or isinstance(value, bool) or not isinstance(value, (int, float)):
                problem = f"returned {key!r}: {value!r}"
                break
            metrics[key] = float(value)
        if problem is None:
            return metrics
    raise PluginError(f"{_who(entry, registry)}: evaluation {entry.name!r} run() must return "
                      f"{{metric name: number}}, but it {problem}")


def _merge(outcomes: list[dict[str, Any]], names: list[str]) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """(metrics per evaluation averaged over the ranks, failure message per evaluation): an
    evaluation that failed on any rank, or whose ranks disagree on the metric names, logs nothing."""
    results: dict[str, dict[str, float]] = {}
    failures: dict[str, str] = {}
    for name in names:
        per_rank = [o[name] for o in outcomes]
        failed = [(r, m) for r, m in enumerate(per_rank) if isinstance(m, str)]
        if failed:
            rank, message = failed[0]
            failures[name] = message if len(outcomes) == 1 else f"rank {rank}: {message}"
            continue
        if any(set(m) != set(per_rank[0]) for m in per_rank):
            failures[name] = f"evaluation {name!r} returned different metric names on different ranks"
            continue
        results[name] = {key: math.fsum(m[key] for m in per_rank) / len(per_rank) for key in per_rank[0]}
    return results, failures


def evaluation_callback(trainer, config, template, working_dir: str, registry=None):
    """The ``TrainerCallback`` that runs the registered evaluations at each ``on_evaluate``
    and logs their metrics with ``trainer.log``. ``latest`` holds the last round's metrics
    per evaluation (for the run summary)."""
    from transformers import TrainerCallback

    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()

    class PluginEvaluations(TrainerCallback):
        def __init__(self):
            self.evaluations = list(registry.evaluations.values())
            self.latest: dict[str, dict[str, float]] = {}
            self.latest_step: int | None = None

        def _run_one(self, entry, ctx) -> dict[str, float] | str:
            from ..plugins import PluginCallError

            try:
                returned = entry.run(ctx)
            except PluginCallError as exc:  # the guarded run() already names the plugin
                return str(exc)
            except AiroError as exc:  # raised on purpose: the plugin's own message
                return f"{_who(entry, registry)}: evaluation {entry.name!r}: {exc}"
            try:
                return checked_metrics(entry, returned, registry)
            except PluginError as exc:
                return str(exc)

        def on_evaluate(self, args, state, control, **kwargs):
            if not self.evaluations:
                return control
            import torch

            rank, world = _rank_and_world(args)
            model = trainer.model
            ctx = EvaluationContext(config=config, model=model, tokenizer=trainer.processing_class,
                                    template=template, trainer=trainer, working_dir=str(working_dir),
                                    is_main_process=state.is_world_process_zero, step=state.global_step,
                                    rank=rank, world_size=world)
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    outcome = {entry.name: self._run_one(entry, ctx) for entry in self.evaluations}
            finally:
                model.train(was_training)
            results, failures = _merge(_gather(outcome), [e.name for e in self.evaluations])
            for message in failures.values():
                say(f"warning: {message}; nothing of it is logged at step {state.global_step}, the training "
                    "goes on", main=state.is_world_process_zero)
            logs: dict[str, float] = {}
            for name, metrics in results.items():
                clash = sorted(set(metrics) & set(logs))
                if clash:
                    say(f"warning: evaluation {name!r} returned {', '.join(clash)}, which another evaluation "
                        "returned too; only the first is logged", main=state.is_world_process_zero)
                    metrics = {k: v for k, v in metrics.items() if k not in logs}
                logs.update(metrics)
                if metrics:
                    self.latest[name] = metrics
            if logs:
                self.latest_step = state.global_step
                # Trainer.log feeds every logging callback (metrics.jsonl, wandb, tensorboard) and
                # log_history; it triggers on_log only, so there is no recursion into on_evaluate.
                trainer.log(dict(logs))
            return control

        def metrics(self) -> dict[str, float]:
            """The last round's metrics of every evaluation, flat."""
            flat: dict[str, float] = {}
            for metrics in self.latest.values():
                flat.update(metrics)
            return flat

        def summary_lines(self, shown: int = 6) -> list[str]:
            """One line per evaluation with its last metrics (the first ``shown`` of them)."""
            lines = []
            for name, metrics in self.latest.items():
                items = list(metrics.items())
                text = ", ".join(f"{k} {v:.4g}" for k, v in items[:shown])
                more = f", and {len(items) - shown} more in metrics.jsonl" if len(items) > shown else ""
                lines.append(f"evaluation {name} (step {self.latest_step}): {text}{more}")
            return lines

    return PluginEvaluations()


def plugin_callbacks(ctx: CallbackContext, registry=None) -> list:
    """The callbacks the ``register_callbacks`` factories build for this run."""
    from transformers import TrainerCallback

    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()
    callbacks = []
    for entry in registry.callbacks.values():
        made = entry.factory(ctx)
        is_class = isinstance(made, type) and issubclass(made, TrainerCallback)
        if not (is_class or isinstance(made, TrainerCallback)):
            raise PluginError(f"{_who(entry, registry)}: trainer callback {entry.name!r} factory() must return a "
                              f"transformers.TrainerCallback, got {type(made).__name__}")
        callbacks.append(_guard_events(made() if is_class else made, entry, registry))
    return callbacks


def _guard_events(callback, entry, registry):
    """``callback`` with each event method it defines (``on_step_end``, ``on_log``, ...)
    wrapped so that a failure names the plugin, the callback and the event, on one line
    (``plugin 'x' (distribution d 1.0): trainer callback 'y' on_step_end() failed: ...``),
    and the run stops with a non-zero exit instead of an anonymous traceback."""
    from transformers import TrainerCallback

    from ..plugins import _guarded
    from ..registry import PluginInfo

    info = registry.plugins.get(entry.plugin) if registry is not None else None
    info = info or PluginInfo(entry.plugin, "?", "", "")
    for event in (name for name in vars(TrainerCallback) if name.startswith("on_")):
        method = getattr(callback, event, None)
        if method is None or getattr(type(callback), event, None) is getattr(TrainerCallback, event):
            continue  # the base class's no-op
        setattr(callback, event, _guarded(method, info, f"trainer callback {entry.name!r} {event}()"))
    return callback


@dataclass
class PluginLoop:
    """What :func:`install` added to a Trainer: the evaluation callback and the plugins' callbacks."""

    evaluations: Any
    callbacks: list = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return self.evaluations.metrics()

    def summary_lines(self) -> list[str]:
        return self.evaluations.summary_lines()


def install(trainer, config, template, working_dir: str, *, is_main_process: bool = True) -> PluginLoop:
    """Add the registered evaluations and callbacks to ``trainer``."""
    evaluations = evaluation_callback(trainer, config, template, working_dir)
    trainer.add_callback(evaluations)
    ctx = CallbackContext(config=config, model=trainer.model, tokenizer=trainer.processing_class, template=template,
                          trainer=trainer, working_dir=str(working_dir), is_main_process=is_main_process)
    callbacks = plugin_callbacks(ctx)
    for callback in callbacks:
        trainer.add_callback(callback)
    return PluginLoop(evaluations, callbacks)

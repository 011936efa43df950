"""The distributed seam: how a run is spread over processes, in one place.

A run is spread one way: plain data parallelism (:class:`DataParallel`: one process, or
DDP under ``torchrun`` / ``accelerate launch``) or DeepSpeed ZeRO (:class:`DeepSpeed`,
``--deepspeed CONFIG``). Each way answers the same questions, and the rest of airo asks
only these:

- :meth:`~Backend.prepare`: what to set up once the process group exists (DeepSpeed's
  comm layer on CPU), before the model loads;
- :meth:`~Backend.placement`: where ``from_pretrained`` puts a model, given whether its
  loader says it can be sharded (a bitsandbytes 4/8-bit base cannot: it is loaded onto
  this process's GPU, and ZeRO-3 refuses it before it loads);
- :meth:`~Backend.full_state_dict`: the whole model's weights for the post-training
  actions, gathered on every rank when the model is sharded (ZeRO-3), else None;
- :meth:`~Backend.owns_checkpoint` / :meth:`~Backend.missing_checkpoint_files`: whether a
  checkpoint folder is in this way's format and what it lacks to resume exactly;
- :meth:`~Backend.describe`: the run summary's lines.

A new way (FSDP2) is one more subclass in :data:`BACKENDS`. Nothing here imports torch at
module level.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json")


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


class Backend:
    """One way of spreading a run over processes. ``training`` is the run's
    TrainingArguments options (``config.training``): a backend is chosen, and answers,
    before TrainingArguments exist."""

    name = "base"

    def __init__(self, training: dict[str, Any] | None = None):
        self.training = dict(training or {})

    @classmethod
    def applies(cls, training: dict[str, Any]) -> bool:
        raise NotImplementedError

    def prepare(self) -> None:
        """Set up what this way needs once the process group exists (after TrainingArguments)."""

    def placement(self, *, shardable: bool) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments placing a model. A model that cannot be
        sharded nor moved after loading (a bitsandbytes 4/8-bit base) goes straight onto
        this process's GPU; any other model is placed by the Trainer (DDP) or DeepSpeed."""
        if not shardable:
            import torch

            if torch.cuda.is_available():
                return {"device_map": {"": local_rank()}}
        return {}

    def full_state_dict(self, trainer) -> dict | None:
        """The whole model's weights when they are spread over the ranks (called on every
        rank: gathering is a collective), else None: rank 0's model holds them."""
        return None

    @staticmethod
    def owns_checkpoint(path: Path) -> bool:
        raise NotImplementedError

    def missing_checkpoint_files(self, path: Path) -> list[str]:
        """What a checkpoint in this format lacks to continue a run exactly (weights,
        optimizer, scheduler; the RNG state and trainer_state.json are checked by the caller)."""
        raise NotImplementedError

    def refuse_unmarked(self, path: Path) -> str | None:
        """Why a checkpoint in this format that airo did not mark must not be resumed, or None."""
        return None

    def describe(self, args) -> list[str]:
        """The run summary's lines for this way (``args``: the TrainingArguments)."""
        return []


class DataParallel(Backend):
    """One process, or DDP: every process holds the whole model; rank 0 saves it."""

    name = "DDP"

    @classmethod
    def applies(cls, training: dict[str, Any]) -> bool:
        return True

    @staticmethod
    def owns_checkpoint(path: Path) -> bool:
        return not DeepSpeed.owns_checkpoint(path)

    def missing_checkpoint_files(self, path: Path) -> list[str]:
        missing = [] if any((path / name).is_file() for name in _WEIGHT_FILES) else ["model or adapter weights"]
        return missing + [name for name in ("optimizer.pt", "scheduler.pt") if not (path / name).is_file()]

    def describe(self, args) -> list[str]:
        if args.world_size <= 1:
            return []
        backend = getattr(args, "ddp_backend", None) or ("nccl" if "cuda" in str(args.device) else "gloo")
        return [f"  distributed:      DDP, {args.world_size} processes ({backend})"]


class DeepSpeed(Backend):
    """DeepSpeed ZeRO (``--deepspeed CONFIG``): stage 3 shards the weights themselves."""

    name = "DeepSpeed"

    @classmethod
    def applies(cls, training: dict[str, Any]) -> bool:
        return bool(training.get("deepspeed"))

    def zero_stage(self) -> int | None:
        """The ZeRO stage the config names, or None when it cannot be read here (DeepSpeed
        reads it itself and reports a bad file)."""
        spec = self.training.get("deepspeed")
        if isinstance(spec, (str, os.PathLike)):
            try:
                spec = json.loads(Path(spec).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                try:
                    spec = json.loads(str(spec))  # an inline JSON string
                except ValueError:
                    return None
        stage = (spec.get("zero_optimization") or {}).get("stage") if isinstance(spec, dict) else None
        return stage if isinstance(stage, int) and not isinstance(stage, bool) else None

    def prepare(self) -> None:
        """On CPU (use_cpu) accelerate sets up torch.distributed but not DeepSpeed's comm
        layer; ZeRO-3's zero.Init (inside from_pretrained) then sees a world of 1. Attach it."""
        try:
            import deepspeed
            import torch.distributed as dist
        except ImportError:  # pragma: no cover
            return
        if dist.is_available() and dist.is_initialized() and not deepspeed.comm.is_initialized():
            deepspeed.init_distributed(dist_backend=dist.get_backend())

    def placement(self, *, shardable: bool) -> dict[str, Any]:
        if not shardable and self.zero_stage() == 3:
            raise ConfigError(
                f"--deepspeed {self.training.get('deepspeed')} uses ZeRO stage 3, which shards every weight, and this "
                "loader's model cannot be sharded (a bitsandbytes 4/8-bit base). Use ZeRO stage 2 (or 1), or "
                "--bits 16 / 32")
        return super().placement(shardable=shardable)

    def full_state_dict(self, trainer) -> dict | None:
        if not getattr(trainer, "is_deepspeed_enabled", False):
            return None
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if plugin is None or getattr(plugin, "zero_stage", 0) != 3:
            return None
        return trainer.accelerator.get_state_dict(trainer.deepspeed)

    @staticmethod
    def owns_checkpoint(path: Path) -> bool:
        return (path / "latest").is_file() or any(p.is_dir() and p.name.startswith("global_step")
                                                  for p in path.iterdir())

    def missing_checkpoint_files(self, path: Path) -> list[str]:
        return [] if (path / "latest").is_file() else ["latest (DeepSpeed tag)"]

    def refuse_unmarked(self, path: Path) -> str | None:
        return (f"--resume_from_checkpoint {path} is a DeepSpeed checkpoint airo did not mark complete. DeepSpeed "
                "loads its checkpoints with pickle (weights_only=False), which runs code from the file: airo resumes "
                "only DeepSpeed checkpoints it wrote and marked.")

    def describe(self, args) -> list[str]:
        spec = args.deepspeed if args.deepspeed is not None else self.training.get("deepspeed")
        stage = self.zero_stage()
        where = spec if isinstance(spec, (str, os.PathLike)) else "inline config"
        return [f"  DeepSpeed:        {where}" + (f" (ZeRO stage {stage})" if stage is not None else "")]


# The ways, most specific first: the first that applies to a run's options is its backend.
BACKENDS: tuple[type[Backend], ...] = (DeepSpeed, DataParallel)


def backend(training: dict[str, Any] | None) -> Backend:
    """The backend of a run with these TrainingArguments options (``config.training``)."""
    training = dict(training or {})
    return next(cls for cls in BACKENDS if cls.applies(training))(training)


def checkpoint_backend(path: str | os.PathLike) -> Backend:
    """The backend whose format the checkpoint folder ``path`` is in (whatever this run uses)."""
    path = Path(path)
    return next(cls for cls in BACKENDS if cls.owns_checkpoint(path))()


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a checkpoint in a sharded format (not plain Trainer files)."""
    return not isinstance(checkpoint_backend(path), DataParallel)


def model_placement(config, *, shardable: bool) -> dict[str, Any]:
    """For a model loader: the ``from_pretrained`` keyword arguments that place its model in
    this run, given whether the model can be sharded (``False`` for a bitsandbytes 4/8-bit
    base). A loader declares, the run's backend decides: no loader pins devices itself."""
    return backend(config.training).placement(shardable=shardable)

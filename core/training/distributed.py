"""The distributed seam: how a run is spread over processes, in one place.

A run is spread one way: plain data parallelism (:class:`DataParallel`: one process, or
DDP under ``torchrun`` / ``accelerate launch``), DeepSpeed ZeRO (:class:`DeepSpeed`,
``--deepspeed CONFIG``) or PyTorch FSDP2 (:class:`FSDP`, ``--fsdp``). Each way answers the
same questions, and the rest of airo asks only these:

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

A new way is one more subclass in :data:`BACKENDS`. Nothing here imports torch at
module level.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

_FSDP_MODEL = "pytorch_model_fsdp"  # accelerate's FSDP_MODEL_NAME
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

    def announce_builds(self, *, main: bool) -> None:
        """Say what the backend will build before it starts (a first run's compile), on rank 0."""

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

    def checkpoints_layers(self) -> bool:
        """Whether this way applies activation checkpointing to the layers itself (then the
        loader leaves the model's own off: both would recompute every layer twice)."""
        return False

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
        return not DeepSpeed.owns_checkpoint(path) and not FSDP.owns_checkpoint(path)

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

    def announce_builds(self, *, main: bool) -> None:
        """DeepSpeed compiles its CPU communication op (``deepspeed_shm_comm``) the first time it
        runs on a CPU: minutes of silence before the first step. Say so, once, on rank 0."""
        import torch

        if not main or torch.cuda.is_available() or os.environ.get("DS_ACCELERATOR", "cpu") != "cpu":
            return
        try:
            from torch.utils.cpp_extension import _get_build_directory

            folder = Path(_get_build_directory("deepspeed_shm_comm", verbose=False))
        except Exception:  # noqa: BLE001 - only a message depends on it
            return
        if not any(folder.glob("*.so")):
            from .dist import say

            say(f"DeepSpeed compiles its CPU communication op (deepspeed_shm_comm) on this first run, which takes "
                f"minutes; later runs reuse it from {folder.parent}")

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


def fsdp_requested(value: Any) -> bool:
    """Whether a ``--fsdp`` value turns FSDP on (``false``/``no``/empty do not)."""
    if isinstance(value, (list, tuple)):
        return bool(value)
    return bool(value) and str(value).strip().lower() not in ("false", "no", "0", "none", "off")


def _allow_fsdp_on_cpu() -> None:
    """accelerate honours an FSDP plugin only on accelerators (its MULTI_GPU family): on the CPU
    it silently runs DDP. ``fully_shard`` itself works on a CPU device mesh with gloo, so a CPU
    run with ``--fsdp`` is turned into the FSDP run it asked for (idempotent)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_airo_cpu_fsdp", False):
        return

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    __init__._airo_cpu_fsdp = True
    AcceleratorState.__init__ = __init__


class FSDP(Backend):
    """PyTorch FSDP2 (``fully_shard``) through the Trainer and accelerate (``--fsdp``, with
    ``--fsdp_config`` or airo's shorthand, :func:`airo.core.training.arguments.fsdp_shorthand`):
    every process holds a shard of each wrapped module's weights, gradients and optimizer state."""

    name = "FSDP"

    @classmethod
    def applies(cls, training: dict[str, Any]) -> bool:
        return fsdp_requested(training.get("fsdp"))

    def prepare(self) -> None:
        import torch

        if world_size() <= 1:
            raise ConfigError(f"--fsdp {self.training.get('fsdp')} shards the model over several processes, and this "
                              "run has one: launch it with torchrun --nproc_per_node N (or accelerate launch), or "
                              "leave --fsdp out")
        if not torch.cuda.is_available():
            _allow_fsdp_on_cpu()

    def checkpoints_layers(self) -> bool:
        # airo's shorthand (no --fsdp_config) turns --gradient_checkpointing into FSDP's own
        return not self.training.get("fsdp_config") and bool(
            self.training.get("activation_checkpointing") or self.training.get("gradient_checkpointing"))

    def placement(self, *, shardable: bool) -> dict[str, Any]:
        if not shardable:
            raise ConfigError(
                f"--fsdp {self.training.get('fsdp')} shards every weight over the processes, and this loader's model "
                "cannot be sharded (a bitsandbytes 8-bit base, or a 4-bit one stored as uint8, which FSDP cannot "
                "split). Use --bits 4 or 16 / 32 for LoRA under FSDP, or train the 8-bit base with DDP (no --fsdp) "
                "or DeepSpeed ZeRO stage 2")
        return {}  # accelerate moves and shards the model when the Trainer prepares it

    def full_state_dict(self, trainer) -> dict | None:
        if not getattr(trainer, "is_fsdp_enabled", False):
            return None
        # torch.distributed.checkpoint's get_model_state_dict(full_state_dict=True, cpu_offload=True):
        # a collective (every rank), the whole tensors on rank 0's CPU, an empty dict elsewhere
        return trainer.accelerator.get_state_dict(trainer.model_wrapped)

    @staticmethod
    def owns_checkpoint(path: Path) -> bool:
        return (path / f"{_FSDP_MODEL}.bin").is_file() or any(
            p.is_dir() and p.name.startswith(_FSDP_MODEL) for p in path.iterdir())

    def missing_checkpoint_files(self, path: Path) -> list[str]:
        missing = []
        if not ((path / f"{_FSDP_MODEL}.bin").is_file() or (path / f"{_FSDP_MODEL}_0" / ".metadata").is_file()):
            missing.append(f"{_FSDP_MODEL}.bin or {_FSDP_MODEL}_0/.metadata (FSDP model state)")
        if not ((path / "optimizer.bin").is_file() or (path / "optimizer_0" / ".metadata").is_file()):
            missing.append("optimizer.bin or optimizer_0/.metadata (FSDP optimizer state)")
        return missing + ([] if (path / "scheduler.pt").is_file() else ["scheduler.pt"])

    def refuse_unmarked(self, path: Path) -> str | None:
        return (f"--resume_from_checkpoint {path} is an FSDP checkpoint airo did not mark complete. FSDP checkpoints "
                "are read with pickle (torch.distributed.checkpoint's .metadata, torch.load of the full state), "
                "which runs code from the file: airo resumes only FSDP checkpoints it wrote and marked.")

    def describe(self, args) -> list[str]:
        cfg = dict(getattr(args, "fsdp_config", None) or {})
        plugin = dict(getattr(args, "fsdp_plugin_args", None) or {})
        version = plugin.get("fsdp_version", cfg.get("version", 2))
        wrapped = cfg.get("transformer_layer_cls_to_wrap") or ["each decoder layer (the model's _no_split_modules)"]
        sharding = "full_shard (reshard after forward)" if plugin.get("reshard_after_forward", True) \
            else "shard_grad_op (no reshard after forward)"
        precision = "bf16" if args.bf16 else ("fp16" if args.fp16 else "none (fp32)")
        state = str(plugin.get("state_dict_type", "FULL_STATE_DICT"))
        checkpointing = ("FSDP's" if plugin.get("activation_checkpointing") else
                         "the model's" if getattr(args, "activation_checkpointing", False) else "off")
        return [f"  distributed:      FSDP{version}, {args.world_size} processes, {sharding}",
                f"  FSDP wraps:       {', '.join(wrapped)}",
                f"  FSDP options:     CPU offload {'on' if plugin.get('cpu_offload') else 'off'}, mixed precision "
                f"{precision}, activation checkpointing {checkpointing}, checkpoints "
                + ("sharded (torch.distributed.checkpoint)" if "SHARDED" in state else "full (rank 0)")]


# The ways, most specific first: the first that applies to a run's options is its backend.
BACKENDS: tuple[type[Backend], ...] = (DeepSpeed, FSDP, DataParallel)


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


def model_checkpointing(config) -> bool:
    """For a model loader: whether to turn on the model's own activation (gradient)
    checkpointing: --gradient_checkpointing, unless the run's backend checkpoints the layers
    itself (FSDP2 through airo's --fsdp shorthand)."""
    return config.gradient_checkpointing and not backend(config.training).checkpoints_layers()


def quant_storage_dtype(config, compute_dtype):
    """For a loader of a bitsandbytes 4-bit base: the dtype to store the packed weights in so
    the run's backend can shard them (FSDP2: the compute dtype, bitsandbytes'
    ``bnb_4bit_quant_storage``; the model is then shardable), or None (stored as uint8: not
    shardable)."""
    return compute_dtype if isinstance(backend(config.training), FSDP) else None


def model_placement(config, *, shardable: bool) -> dict[str, Any]:
    """For a model loader: the ``from_pretrained`` keyword arguments that place its model in
    this run, given whether the model can be sharded (``False`` for a bitsandbytes 4/8-bit
    base). A loader declares, the run's backend decides: no loader pins devices itself."""
    return backend(config.training).placement(shardable=shardable)

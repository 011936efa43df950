"""What a run hands to post-training actions (:class:`TrainContext`) and returns (:class:`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import PluginError
from .checkpoints import COMPLETED_FILE
from .dist import say

TRAINING_INFO_FILE = "airo_training.json"  # next to a saved adapter/model: how it was trained
DATA_REPORT_FILE = "data_report.json"


@dataclass
class TrainContext:
    """What a post-training action receives (``run(ctx)``), on the main process only.

    ``output_dir`` holds the final artifacts (the adapter for LoRA/QLoRA, the model for a
    full fine-tune); ``adapter_dir`` is that folder for adapter runs, else None.
    ``outputs`` collects what actions wrote (name -> path) for the run summary;
    ``info`` is the training metadata saved as ``airo_training.json``.
    """

    config: TrainConfig
    model: Any
    tokenizer: Any
    template: Any
    output_dir: str
    working_dir: str
    adapter_dir: str | None
    is_main_process: bool
    trainer: Any = None
    report: Any = None
    loaded: Any = None  # the LoadedModel (is_peft, quantized_bits, notes)
    state_dict: dict | None = None  # gathered weights when the model is sharded (ZeRO-3)
    info: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def is_peft(self) -> bool:
        return bool(self.loaded.is_peft) if self.loaded is not None else self.adapter_dir is not None

    def log(self, message: str) -> None:
        say(message, main=self.is_main_process)


@dataclass
class TrainResult:
    output_dir: str | None
    working_dir: str
    global_step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None
    already_complete: bool = False
    actions: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    is_main_process: bool = True
    final_loss: float | None = None  # the last logged training loss (all ranks averaged)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.is_main_process:
            return ""
        lines = []
        if self.already_complete:
            lines.append(f"This run is already complete (step {self.global_step}); nothing to do.")
            lines.append(f"  marker: {Path(self.working_dir) / COMPLETED_FILE}")
            lines.append(f"  to train again, use a new --working_dir or remove {self.working_dir}")
        else:
            loss = self.final_loss
            lines.append(f"Training finished at step {self.global_step}"
                         + (f", last logged loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
                         + (f" (resumed from {self.resumed_from})" if self.resumed_from else "") + ".")
        for name, path in self.outputs.items():
            lines.append(f"  {name}: {path}")
        lines.append(f"  checkpoints and logs: {self.working_dir}")
        lines += [f"  {note}" for note in self.notes]
        steps = self.next_steps() if self.outputs else []
        if steps:
            lines += ["", "Next:", *(f"  {line}" for line in steps)]
        return "\n".join(lines)

    def next_steps(self) -> list[str]:
        """What to do next with the outputs: the lines of every ``register_next_steps``
        plugin (the owners of the commands they name), in ``order``."""
        from ..plugins import get_registry

        lines: list[str] = []
        for entry in sorted(get_registry().next_steps.values(), key=lambda entry: (entry.order, entry.name)):
            try:
                lines += [str(line) for line in entry.lines(self) or []]
            except PluginError as exc:  # the run is over and its outputs are saved: say so, go on
                lines.append(f"({exc})")
        return lines

"""The built-in ``predict`` action: the seed's ``--do_predict --predict_with_generate``.

After training, the model generates a reply for the prompt of every eval example and
``WORKING_DIR/predictions.jsonl`` gets one line per example: ``{"id", "prompt",
"reference", "prediction"}``. The prompt is the example's tokens before its first trained
token, the reference its trained tokens up to the next untrained one (the reply the model
learned), both decoded without special tokens. The decoding flags are the seed's
(``--max_new_tokens``, ``--do_sample``, ``--num_beams``, ...). ``--do_predict`` stays the
``TrainingArguments`` flag it is in the seed; ``--predict_with_generate`` alone does the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airo.core import hookimpl, write_text

PREDICTIONS_FILE = "predictions.jsonl"
IGNORE = -100


def _opt(default, help: str, **constraint):
    # decoding happens after training: changing it never changes the trained numbers
    return field(default=default, metadata={"help": help, "resumable": True, **constraint})


@dataclass
class PredictOptions:
    predict_with_generate: bool = _opt(False, "After training, generate a reply for every eval example into "
                                              "predictions.jsonl (as --do_predict does).")
    max_new_tokens: int = _opt(256, "Longest generated reply, in tokens.", min=1, max=2 ** 24)
    min_new_tokens: int | None = _opt(None, "Shortest generated reply, in tokens.", min=0, max=2 ** 24)
    do_sample: bool = _opt(False, "Sample instead of greedy/beam decoding.")
    num_beams: int = _opt(1, "Beams for beam search (1: none).", min=1, max=1024)
    temperature: float = _opt(1.0, "Sampling temperature (with --do_sample).", above=0)
    top_p: float = _opt(1.0, "Nucleus sampling: keep the tokens of this much probability (with --do_sample).",
                        above=0, max=1)
    top_k: int = _opt(50, "Sample among the k likeliest tokens (with --do_sample).", min=0)
    typical_p: float = _opt(1.0, "Typical sampling mass (with --do_sample).", above=0, max=1)
    repetition_penalty: float = _opt(1.0, "Penalty for repeated tokens (1: none).", above=0)
    length_penalty: float = _opt(1.0, "Beam search length penalty.", min=-10, max=10)
    no_repeat_ngram_size: int = _opt(0, "Never repeat an n-gram of this size (0: off).", min=0)

    def __post_init__(self):
        # each value alone is checked from its declared bounds; this is the one rule across two
        if self.min_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"--min_new_tokens must be between 0 and --max_new_tokens ({self.max_new_tokens}), "
                             f"got {self.min_new_tokens}")

    def validate(self, config) -> None:
        if predicts(config) and config.data.eval_dataset_size == 0:
            raise ValueError("--do_predict/--predict_with_generate generate for the eval split, and "
                             "--eval_dataset_size 0 leaves none: keep an eval split")

    def generation_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                                  "do_sample": self.do_sample, "repetition_penalty": self.repetition_penalty,
                                  "no_repeat_ngram_size": self.no_repeat_ngram_size, "use_cache": True}
        if self.min_new_tokens is not None:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
        if self.do_sample:  # set without sampling they only earn a warning from generate()
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, typical_p=self.typical_p)
        return kwargs


def predicts(config) -> bool:
    return bool(config.training.get("do_predict")) or bool(config.get("predict_with_generate"))


def prompt_and_reference(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """The tokens before the first trained one, and the trained run that starts there."""
    first = next((i for i, label in enumerate(labels) if label != IGNORE), None)
    if first is None:
        return list(input_ids), []
    first = max(first, 1)  # --train_on_source trains from the first token: keep one to prompt with
    end = next((i for i in range(first, len(labels)) if labels[i] == IGNORE), len(labels))
    return list(input_ids[:first]), list(input_ids[first:end])


def generate(model, tokenizer, prompts: list[list[int]], options: PredictOptions, batch_size: int) -> list[str]:
    """A reply per prompt (left-padded batches, so every reply starts right after its prompt)."""
    import torch
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    config = GenerationConfig(pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **options.generation_kwargs())
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, prompt in enumerate(chunk):
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        replies += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return replies


def predict(ctx) -> None:
    dataset = getattr(ctx.trainer, "eval_dataset", None)
    if dataset is None or len(dataset) == 0:
        ctx.log(f"warning: --do_predict: this run has no eval examples (too little data for "
                f"--eval_dataset_size); {PREDICTIONS_FILE} is not written")
        return
    options: PredictOptions = ctx.config.section("predict")
    pairs = [prompt_and_reference(row["input_ids"], row["labels"]) for row in dataset]
    model = ctx.model
    was_training = model.training
    model.eval()
    try:
        batch_size = ctx.trainer.args.per_device_eval_batch_size if ctx.trainer is not None else 1
        replies = generate(model, ctx.tokenizer, [prompt for prompt, _ in pairs], options, batch_size)
    finally:
        model.train(was_training)
    decode = ctx.tokenizer.decode
    lines = [json.dumps({"id": i, "prompt": decode(prompt, skip_special_tokens=True),
                         "reference": decode(reference, skip_special_tokens=True), "prediction": reply},
                        ensure_ascii=False) + "\n"
             for i, ((prompt, reference), reply) in enumerate(zip(pairs, replies))]
    path = Path(ctx.working_dir) / PREDICTIONS_FILE
    write_text(path, "".join(lines))
    ctx.outputs["predictions"] = str(path)
    ctx.log(f"wrote {len(lines)} predictions to {path}")


@hookimpl
def register_options(register):
    register("predict", PredictOptions, description="generating the eval set's replies after training (--do_predict)")


@hookimpl
def register_post_train_actions(register):
    # after `save` (100): a failing generation never costs the saved adapter
    register("predict", predict, order=150, auto=predicts,
             description=f"generate a reply for every eval example into WORKING_DIR/{PREDICTIONS_FILE}")

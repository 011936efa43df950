"""Batching tokenized examples for the Trainer."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError


class PaddingCollator:
    """Right-pads a batch: input_ids with the pad id, labels with -100, plus attention_mask."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, label_pad: int = -100):
        if pad_token_id is None:
            raise ConfigError("the tokenizer has no pad token; pass --pad_token")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad = label_pad

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = int(math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of)
        n = len(features)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), self.label_pad, dtype=torch.long)
        attention = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            ids = list(f["input_ids"])
            lab = list(f["labels"]) if "labels" in f and f["labels"] is not None else ids
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
            attention[i, : len(ids)] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}

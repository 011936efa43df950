"""Batching tokenized examples for the Trainer."""

from __future__ import annotations

import math
from itertools import chain
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
        import numpy as np
        import torch

        ids = [f["input_ids"] for f in features]
        labels = [f["labels"] if f.get("labels") is not None else f["input_ids"] for f in features]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        if any(len(lab) != n for lab, n in zip(labels, lengths)):
            raise ValueError("every example's labels must be as long as its input_ids")
        longest = int(lengths.max())
        if self.pad_to_multiple_of:
            longest = int(math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of)
        # One conversion per batch, not one per example: the rows are filled through a mask.
        filled = np.arange(longest) < lengths[:, None]
        total = int(lengths.sum())
        input_ids = np.full((len(ids), longest), self.pad_token_id, dtype=np.int64)
        input_ids[filled] = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=total)
        label_ids = np.full((len(ids), longest), self.label_pad, dtype=np.int64)
        label_ids[filled] = np.fromiter(chain.from_iterable(labels), dtype=np.int64, count=total)
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(label_ids),
                "attention_mask": torch.from_numpy(filled.astype(np.int64))}


class PackingCollator(PaddingCollator):
    """Batches packed rows (``seq_lens`` present; see :mod:`airo.core.data.packing`) so that no
    example sees another: ``position_ids`` restart at 0 for each example and, for ``mask``
    ``"bool"`` (sdpa) or ``"float"`` (eager, which adds the mask to the scores), a 4-D
    block-diagonal causal ``attention_mask``; with ``mask=None`` only ``position_ids`` (flash
    attention's varlen path and airo's per-example sdpa find the examples from them).
    Unpacked features (eval) are padded as by :class:`PaddingCollator`. The padding after a
    row's examples is one more block, with labels -100, so no query row of the mask is empty
    (which would give NaN)."""

    def __init__(self, pad_token_id: int, mask: str | None = "bool", **kw):
        super().__init__(pad_token_id, **kw)
        if mask not in ("bool", "float", None):
            raise ValueError(f"mask must be 'bool', 'float' or None, not {mask!r}")
        self.mask = mask

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not features or "seq_lens" not in features[0]:
            return super().__call__(features)
        batch = super().__call__([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        n, width = batch["input_ids"].shape
        position_ids = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            lens = [int(x) for x in f["seq_lens"]]
            tail = width - sum(lens)
            if tail:
                lens.append(tail)
            position_ids[i] = torch.cat([torch.arange(k) for k in lens])
        out = {"input_ids": batch["input_ids"], "labels": batch["labels"], "position_ids": position_ids}
        if self.mask is None:
            return out
        block = (position_ids == 0).cumsum(dim=1)  # which example each position belongs to
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        allowed = (block[:, :, None] == block[:, None, :]) & causal  # (n, query, key)
        if self.mask == "bool":
            out["attention_mask"] = allowed[:, None]
        else:
            out["attention_mask"] = torch.zeros((n, 1, width, width), dtype=torch.float32).masked_fill(
                ~allowed[:, None], torch.finfo(torch.float32).min)
        return out

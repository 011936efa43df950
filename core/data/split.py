"""The eval split: a fraction or a count of records, stratified, seeded."""

from __future__ import annotations

import math
import random
import warnings
from array import array
from typing import Any, Sequence


def eval_count(size: float, n: int) -> int:
    """``size`` below 1 is a fraction (rounded up, as ``datasets.train_test_split`` does),
    1 or more a count; never the whole dataset."""
    if size <= 0 or n < 2:
        return 0
    count = math.ceil(size * n) if size < 1 else int(size)
    if count > n - 1:
        warnings.warn(f"--eval_dataset_size {size:g} asks for {count} eval records of {n}; using {n - 1} "
                      "so that one is left to train on")
    return max(0, min(count, n - 1))


def stratum_key(metadatas: Sequence[dict[str, Any]]) -> str | None:
    for key in ("category", "source"):
        if any(m.get(key) not in (None, "") for m in metadatas):
            return key
    return None


class StratumKeys:
    """What the eval split needs of each conversation, a few bytes each: its category and
    source labels as small integer codes (each distinct label is kept once), so that the
    split of millions of records never holds the records."""

    KEYS = ("category", "source")

    def __init__(self) -> None:
        self._codes = {key: array("l") for key in self.KEYS}
        self._present = dict.fromkeys(self.KEYS, False)
        self._labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._codes["category"])

    def add(self, metadata: dict[str, Any]) -> None:
        for key in self.KEYS:
            value = metadata.get(key)
            if value not in (None, ""):
                self._present[key] = True
            # Grouped by the label's text, as str(None) for a missing one (so 5 and "5" meet).
            self._codes[key].append(self._labels.setdefault(str(value), len(self._labels)))

    @property
    def key(self) -> str | None:
        return next((key for key in self.KEYS if self._present[key]), None)

    def groups(self, key: str) -> dict[str, array]:
        """label -> the indices of its conversations, in input order."""
        names = {code: label for label, code in self._labels.items()}
        groups: dict[str, array] = {}
        for i, code in enumerate(self._codes[key]):
            groups.setdefault(names[code], array("l")).append(i)
        return groups

    def split(self, size: float, seed: int) -> tuple[list[int], str | None]:
        """(eval indices, sorted; the stratification key used)."""
        n = len(self)
        k = eval_count(size, n)
        if k == 0:
            return [], None
        rng = random.Random(seed)
        key = self.key
        if key is None:
            return sorted(rng.sample(range(n), k)), None
        groups = self.groups(key)
        # Proportional allocation with largest remainders, so the split's category mix
        # follows the data's and the total is exactly k.
        names = sorted(groups)
        quotas = {g: k * len(groups[g]) / n for g in names}
        alloc = {g: int(quotas[g]) for g in names}
        leftover = k - sum(alloc.values())
        order = sorted(names, key=lambda g: (-(quotas[g] - alloc[g]), rng.random()))
        for g in order[:leftover]:
            alloc[g] += 1
        chosen: set[int] = set()
        for g in names:
            chosen.update(rng.sample(groups[g], min(alloc[g], len(groups[g]))))
        return sorted(chosen), key


def split_indices(metadatas: Sequence[dict[str, Any]], size: float, seed: int) -> tuple[list[int], list[int], str | None]:
    """(train indices in input order, eval indices, the stratification key used)."""
    keys = StratumKeys()
    for m in metadatas:
        keys.add(m)
    chosen, key = keys.split(size, seed)
    evals = set(chosen)
    return [i for i in range(len(keys)) if i not in evals], chosen, key

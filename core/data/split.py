"""The eval split: a fraction or a count of records, stratified, seeded."""

from __future__ import annotations

import math
import random
import warnings
from collections import defaultdict
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


def split_indices(metadatas: Sequence[dict[str, Any]], size: float, seed: int) -> tuple[list[int], list[int], str | None]:
    """(train indices in input order, eval indices, the stratification key used)."""
    n = len(metadatas)
    k = eval_count(size, n)
    if k == 0:
        return list(range(n)), [], None
    rng = random.Random(seed)
    key = stratum_key(metadatas)
    if key is None:
        chosen = set(rng.sample(range(n), k))
    else:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, m in enumerate(metadatas):
            groups[str(m.get(key))].append(i)
        # Proportional allocation with largest remainders, so the split's category mix
        # follows the data's and the total is exactly k.
        names = sorted(groups)
        quotas = {g: k * len(groups[g]) / n for g in names}
        alloc = {g: int(quotas[g]) for g in names}
        leftover = k - sum(alloc.values())
        order = sorted(names, key=lambda g: (-(quotas[g] - alloc[g]), rng.random()))
        for g in order[:leftover]:
            alloc[g] += 1
        chosen = set()
        for g in names:
            chosen.update(rng.sample(groups[g], min(alloc[g], len(groups[g]))))
    train = [i for i in range(n) if i not in chosen]
    return train, sorted(chosen), key

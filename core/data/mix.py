"""Mixing the sources' examples: dedup across sources, each source's share of the mix, and
one seeded order. Pure arithmetic over example counts, keys and lengths (numpy): the
examples themselves stay in their Arrow files and the mix is an index over them.

- **Dedup** (``--dedup prompt|conversation``): an example whose key (its prompt's or its
  whole conversation's normalised content) equals the key of an earlier record is removed,
  earlier meaning an earlier source of the list or an earlier record of its own source;
  the examples one record gives (its templates, its expansions) stay together.
- **Shares**: ``weight`` sources share out as many examples as they hold together, in
  proportion to their weights; ``records: N`` takes N; ``epochs: E`` takes E times the
  source (E may be fractional). A source asked for more than it holds is repeated whole,
  then topped up with a seeded sample; for fewer, a seeded sample without repeats.
- **Order**: the picks of every source, then one permutation drawn from the seed. Nothing
  depends on the machine or the number of processes: every process computes the same mix.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DataError

IGNORE_INDEX = -100


def dedup(keys: Sequence[tuple[np.ndarray, np.ndarray]], mode: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each source, (train, eval) masks of the examples kept. ``keys``: per source, the
    (n, 3) arrays of (record ordinal, prompt key, conversation key) of its train and eval
    examples, in order. First occurrence in list order wins."""
    column = 1 if mode == "prompt" else 2
    earlier = np.empty(0, dtype=np.int64)
    out = []
    for train, evals in keys:
        records = np.concatenate([train[:, 0], evals[:, 0]])
        values = np.concatenate([train[:, column], evals[:, column]])
        unique, inverse = np.unique(values, return_inverse=True)
        first = np.full(len(unique), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, inverse.reshape(-1), records)
        keep = (records == first[inverse.reshape(-1)]) & ~np.isin(values, earlier)
        out.append((keep[:len(train)], keep[len(train):]))
        earlier = np.union1d(earlier, unique)
    return out


def share_counts(shares: Sequence[tuple[str, float]], sizes: Sequence[int]) -> list[int]:
    """Examples each source gives the mix: ``shares`` are (weight|records|epochs, amount),
    ``sizes`` the examples each holds (after dedup)."""
    counts = [0] * len(sizes)
    weighted = [i for i, (kind, _) in enumerate(shares) if kind == "weight"]
    for i, (kind, amount) in enumerate(shares):
        if kind == "records":
            counts[i] = int(amount) if sizes[i] else 0
        elif kind == "epochs":
            counts[i] = int(round(amount * sizes[i]))
    if weighted:
        total = sum(sizes[i] for i in weighted)
        mass = sum(shares[i][1] for i in weighted if sizes[i])
        if mass > 0:
            exact = [total * shares[i][1] / mass if sizes[i] else 0.0 for i in weighted]
            floors = [int(np.floor(x)) for x in exact]
            left = total - sum(floors)
            # largest remainders first; ties to the earlier source
            order = sorted(range(len(weighted)), key=lambda k: (-(exact[k] - floors[k]), k))
            for k in order[:left]:
                floors[k] += 1
            for k, i in enumerate(weighted):
                counts[i] = floors[k]
    return counts


def draw(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices into ``size`` examples: whole copies of the source in order, then a
    seeded sample without repeats (sorted, so a source keeps its own order)."""
    if size == 0 or count == 0:
        return np.empty(0, dtype=np.int64)
    whole, rest = divmod(count, size)
    parts = [np.tile(np.arange(size, dtype=np.int64), whole)] if whole else []
    if rest:
        parts.append(np.sort(rng.choice(size, size=rest, replace=False)).astype(np.int64))
    return np.concatenate(parts)


def mix_indices(shares: Sequence[tuple[str, float]], kept: Sequence[np.ndarray], seed: int,
                *, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(source of each mixed example, its index in that source's examples, examples per
    source). ``kept``: per source, the indices of its examples left after dedup."""
    counts = share_counts(shares, [len(k) for k in kept])
    which, where = [], []
    for i, (indices, count) in enumerate(zip(kept, counts)):
        rng = np.random.default_rng([seed, i, 1])
        picks = indices[draw(len(indices), count, rng)]
        which.append(np.full(len(picks), i, dtype=np.int64))
        where.append(picks)
    which_all = np.concatenate(which) if which else np.empty(0, dtype=np.int64)
    where_all = np.concatenate(where) if where else np.empty(0, dtype=np.int64)
    if shuffle and len(which_all):
        order = np.random.default_rng([seed, 0]).permutation(len(which_all))
        which_all, where_all = which_all[order], where_all[order]
    return which_all, where_all, counts


def token_counts(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, trained tokens) of each example, from the Arrow columns in one vectorised pass."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(dataset) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    ids = dataset.data.column("input_ids")
    lengths = np.asarray(pc.list_value_length(ids).to_numpy(zero_copy_only=False), dtype=np.int64)
    labels = dataset.data.column("labels")
    trained = []
    for chunk in (labels.chunks if isinstance(labels, pa.ChunkedArray) else [labels]):
        flat = np.asarray(pc.not_equal(pc.list_flatten(chunk), IGNORE_INDEX).to_numpy(zero_copy_only=False),
                          dtype=np.int64)
        sizes = np.asarray(pc.list_value_length(chunk).to_numpy(zero_copy_only=False), dtype=np.int64)
        ends = np.cumsum(sizes)
        sums = np.concatenate([[0], np.cumsum(flat)])
        trained.append(sums[ends] - sums[ends - sizes])
    return lengths, np.concatenate(trained)


def keys_array(flat, examples: int, where: str) -> np.ndarray:
    """The (n, 3) keys a source's split wrote beside its examples; a DataError when they do
    not match its examples (a folder from an airo that wrote none)."""
    keys = np.frombuffer(flat, dtype=np.int64) if len(flat) else np.empty(0, dtype=np.int64)
    if keys.size != 3 * examples:
        raise DataError(f"the dataset cache has no dedup keys for its {examples} examples; delete it or set "
                        "dedup: none", path=where, reason="unreadable_file")
    return keys.reshape(examples, 3)

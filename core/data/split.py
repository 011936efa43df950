"""The eval split: a fraction or a count of records, stratified, seeded."""

from __future__ import annotations

import hashlib
import math
import random
import unicodedata
import warnings
from array import array
from typing import Any, Iterator, Sequence


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


def _normalised(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def content_key(conversation) -> int:
    """A 64-bit key of a conversation's normalised content: each message's role and text (NFC,
    whitespace runs as one space, stripped); metadata (id, category, source) left out. Equal
    keys are one example for the split; a collision (1 in 2**64) only keeps two examples on
    one side."""
    h = hashlib.blake2b(digest_size=8)
    for m in conversation.messages:
        h.update(m.role.encode() + b"\0" + _normalised(m.content).encode("utf-8", "surrogatepass") + b"\0")
    return int.from_bytes(h.digest(), "little", signed=True)


def content_keys(conversation) -> tuple[int, int]:
    """(prompt key, ``content_key``) with each message normalised once. The prompt key is the
    same hash over the prompt only: every message but the assistant's replies (the system
    message and the user's turns); a conversation whose prompt is empty (plain text) is keyed
    by its whole content."""
    whole, prompt = hashlib.blake2b(digest_size=8), hashlib.blake2b(digest_size=8)
    empty = True
    for m in conversation.messages:
        text = _normalised(m.content)
        part = m.role.encode() + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0"
        whole.update(part)
        if m.role != "assistant":
            empty = empty and not text
            prompt.update(part)
    key = int.from_bytes(whole.digest(), "little", signed=True)
    return (key if empty else int.from_bytes(prompt.digest(), "little", signed=True)), key


def prompt_key(conversation) -> int:
    return content_keys(conversation)[0]


def _random_order(rng: random.Random, n: int) -> Iterator[int]:
    """0..n-1 in a random order, drawn lazily (Fisher-Yates with the swaps in a dict): taking
    the first k costs O(k), not O(n)."""
    swaps: dict[int, int] = {}
    for i in range(n):
        j = rng.randrange(i, n)
        yield swaps.get(j, j)
        swaps[j] = swaps.get(i, i)


class StratumKeys:
    """What the eval split needs of each conversation, a few bytes each: its category and
    source labels as small integer codes (each distinct label is kept once), its content key
    and the ordinal of the record it came from, so that the split of millions of records
    never holds the records.

    The split is by content: conversations joined by an equal content key (duplicates) or by
    their record (the expansions of one conversation, ``--expand_conversations``; the
    conversations a format makes of one record) form one group, chained (an expansion equal
    to another record joins that record's group too), and a group lands whole on one side."""

    KEYS = ("category", "source")

    def __init__(self) -> None:
        self._codes = {key: array("q") for key in self.KEYS}
        self._present = dict.fromkeys(self.KEYS, False)
        self._labels: dict[str, int] = {}
        self._contents = array("q")
        self._records = array("q")

    def __len__(self) -> int:
        return len(self._codes["category"])

    def add(self, metadata: dict[str, Any], content: int | None = None, record: int | None = None) -> None:
        """One conversation: its metadata, content key (None: unlike any other) and record
        ordinal (None: a record of its own)."""
        n = len(self)
        for key in self.KEYS:
            value = metadata.get(key)
            if value not in (None, ""):
                self._present[key] = True
            # Grouped by the label's text, as str(None) for a missing one (so 5 and "5" meet).
            self._codes[key].append(self._labels.setdefault(str(value), len(self._labels)))
        # an absent content key is made unique: a negative odd number no blake2b key equals
        # by more than chance (and then only joins two groups)
        self._contents.append(content if content is not None else -(2 * n + 1) - (1 << 62))
        self._records.append(record if record is not None else (self._records[-1] + 1 if n else 0))

    @property
    def key(self) -> str | None:
        return next((key for key in self.KEYS if self._present[key]), None)

    @property
    def duplicates(self) -> int:
        """Conversations whose content key equals an earlier one's."""
        import numpy as np

        if not len(self):
            return 0
        return len(self) - int(np.unique(np.frombuffer(self._contents, dtype=np.int64)).size)

    def groups(self, key: str) -> dict[str, array]:
        """label -> the indices of its conversations, in input order."""
        names = {code: label for label, code in self._labels.items()}
        groups: dict[str, array] = {}
        for i, code in enumerate(self._codes[key]):
            groups.setdefault(names[code], array("l")).append(i)
        return groups

    def components(self):
        """The group of each conversation (numpy int64): the smallest record ordinal it is
        joined to by records and equal content keys."""
        import numpy as np

        contents = np.frombuffer(self._contents, dtype=np.int64)
        records = np.frombuffer(self._records, dtype=np.int64)
        _, records = np.unique(records, return_inverse=True)  # ordinals 0..R-1
        records = records.astype(np.int64).reshape(-1)
        order = np.argsort(contents, kind="stable")
        same = contents[order][1:] == contents[order][:-1]
        a, b = records[order[:-1][same]], records[order[1:][same]]
        del order, same
        joins = a != b  # two conversations of one record are joined already
        a, b = a[joins], b[joins]
        del joins
        count = int(records.max()) + 1 if records.size else 0
        # Union-find over the record ordinals, 8 bytes each (a dict of millions of Python
        # ints cost ~100 bytes a record); a root is the smallest ordinal of its group.
        parent = array("q")
        parent.frombytes(np.arange(count, dtype=np.int64).tobytes())

        def find(r: int) -> int:
            root = r
            while parent[root] != root:
                root = parent[root]
            while r != root:
                parent[r], r = root, parent[r]
            return root

        step = 1 << 16
        for start in range(0, len(a), step):
            for x, y in zip(a[start: start + step].tolist(), b[start: start + step].tolist()):
                rx, ry = find(x), find(y)
                if rx != ry:
                    parent[max(rx, ry)] = min(rx, ry)
        del a, b
        # every parent is below its child: pointer jumping ends at the roots in a few rounds
        root = np.frombuffer(parent, dtype=np.int64).copy()
        del parent
        while True:
            up = root[root]
            if np.array_equal(up, root):
                break
            root = up
        return root[records]

    def split(self, size: float, seed: int) -> tuple[list[int], str | None]:
        """(eval indices, sorted; the stratification key used).

        Exactly ``eval_count(size, n)`` conversations when the groups allow it, never more:
        the categories get their proportional share (largest remainders), each filled with
        whole groups in a seeded random order (a group larger than what is left is passed
        over), then what is left of the total from any category. Deterministic in the data
        and the seed (not in the number of processes)."""
        import numpy as np

        n = len(self)
        k = eval_count(size, n)
        if k == 0:
            return [], None
        rng = random.Random(seed)
        key = self.key
        comp = self.components()
        roots, first, sizes = np.unique(comp, return_index=True, return_counts=True)
        by_first = np.argsort(first, kind="stable")  # groups in input order, however records are numbered
        roots, first, sizes = roots[by_first], first[by_first], sizes[by_first]
        if key is None:
            labels = np.zeros(len(roots), dtype=np.int64)
        else:
            labels = np.frombuffer(self._codes[key], dtype=np.int64)[first]  # a group's label: its first's
        label_of = {code: label for label, code in self._labels.items()}
        names = sorted({int(c) for c in labels}, key=lambda c: label_of[c])
        by_label = {c: np.flatnonzero(labels == c) for c in names}  # group positions, in input order
        items = {c: int(sizes[by_label[c]].sum()) for c in names}
        # Proportional allocation with largest remainders, so the split's category mix
        # follows the data's and the total is exactly k.
        if key is None:
            alloc = {names[0]: k}
        else:
            quotas = {c: k * items[c] / n for c in names}
            alloc = {c: int(quotas[c]) for c in names}
            leftover = k - sum(alloc.values())
            for c in sorted(names, key=lambda c: (-(quotas[c] - alloc[c]), rng.random()))[:leftover]:
                alloc[c] += 1
        chosen = np.zeros(len(roots), dtype=bool)
        total = 0
        for c in names:
            groups, want, got = by_label[c], alloc[c], 0
            if int(sizes[groups].max()) == 1:  # no duplicates here: the draw of a split without groups
                picked = rng.sample(range(len(groups)), min(want, len(groups)))
                chosen[groups[picked]] = True
                total += len(picked)
                continue
            for j in _random_order(rng, len(groups)):
                if got >= want:
                    break
                g = groups[j]
                if got + sizes[g] <= want:
                    chosen[g] = True
                    got += int(sizes[g])
            total += got
        if total < k:  # groups too large for their category's share: fill from any category
            for g in _random_order(rng, len(roots)):
                if total >= k:
                    break
                if not chosen[g] and total + sizes[g] <= k:
                    chosen[g] = True
                    total += int(sizes[g])
        evals = np.flatnonzero(np.isin(comp, roots[chosen]))
        return evals.tolist(), key


def split_indices(metadatas: Sequence[dict[str, Any]], size: float, seed: int,
                  contents: Sequence[int | None] | None = None,
                  records: Sequence[int | None] | None = None) -> tuple[list[int], list[int], str | None]:
    """(train indices in input order, eval indices, the stratification key used); ``contents``
    and ``records``: see StratumKeys.add (by default every conversation is unique)."""
    keys = StratumKeys()
    for i, m in enumerate(metadatas):
        keys.add(m, contents[i] if contents is not None else None, records[i] if records is not None else None)
    chosen, key = keys.split(size, seed)
    evals = set(chosen)
    return [i for i in range(len(keys)) if i not in evals], chosen, key

"""Decontamination: find training texts that contain benchmark questions.

``load_benchmark_questions(paths)`` reads question files into a ``QuestionIndex``; its
``match(text)`` says ``"exact"``, ``"ngram"`` or ``None``; ``match_many(texts)`` is the fast,
batched form.

**Normalisation** (``normalize``, for questions and training texts alike): Unicode NFKC,
casefold, every run of characters that are not letters or digits (punctuation, symbols,
``_``, whitespace) becomes one space, trimmed. Punctuation becomes a space, not nothing, so
``end.Next`` and ``end. Next`` give the same words; Chinese and Japanese characters are
words of their own (those scripts put no spaces between words).

**Matching.** A question's grams are the distinct runs of ``ngram`` consecutive words of
its normalised text; a question of fewer words is one gram of all of them. ``"exact"``: the
normalised question is contained in the normalised text on word boundaries
(``f" {q} " in f" {t} "``). ``"ngram"``: else, for some question ``hits / grams >=
threshold`` (float division), ``hits`` counting its distinct grams found in the text. A
question under ``min_chars`` once normalised is not indexed (a few generic words would flag
every text holding them); ``describe()`` counts those and the duplicates.

**Speed.** Words map to 64-bit values (a hash of their bytes); every window of a batch of texts gets a
polynomial hash ``sum(v[i+k] * P**k) mod 2**64``, all window lengths in one vectorised pass.
A bitset of the questions' gram hashes rejects almost every window, survivors are looked up
in the sorted gram hashes, and each hit counts for the questions holding that gram: the cost
is per word of training text, not per question. Containment is verified on the strings only
for a question all of whose grams were found. Texts go in batches of about 1M characters, a
longer one in overlapping pieces: memory stays that of a batch (tens of MiB).

**Question files**: see ``benchmark_questions`` (JSON Lines, JSON, CSV/TSV with a header or
in MMLU's layout, Parquet, the evaluation plugin's MMLU files; errors name file and line).
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .benchmark_questions import QUESTION_FIELDS, SUFFIXES, question_files, read_questions  # noqa: F401

MATCHES = ("exact", "ngram")
_NON_WORD = re.compile(r"[\W_]+")
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")
_P = np.uint64(0x9E3779B97F4A7C15)  # odd multipliers: invertible mod 2**64
_Q = np.uint64(0xD6E8FEB86659FD93)
_MB = 1 << 20
_CHUNK_CHARS = _MB  # texts are scanned in batches of about this many characters
_ASCII = bytes(c + 32 if 65 <= c <= 90 else c if 97 <= c <= 122 or 48 <= c <= 57 else 32 for c in range(256))


def _words(text: str) -> list[str]:
    return _NON_WORD.sub(" ", _CJK.sub(r" \1 ", unicodedata.normalize("NFKC", text)).casefold()).split()


def normalize(text: str) -> str:
    """The normalised form used for matching (see the module docstring)."""
    if text.isascii():  # the same result as the general path, many times faster
        spaced = text.encode().translate(_ASCII).decode()
        return " ".join(spaced.split()) if len(spaced) <= _MB else _collapse(spaced)
    return " ".join(_words(text))


def _collapse(spaced: str) -> str:
    """``" ".join(spaced.split())`` a megabyte at a time: a long text's words never all in one list."""
    parts, start = [], 0
    while start < len(spaced):
        end = len(spaced) if start + _MB >= len(spaced) else spaced.rfind(" ", start, start + _MB)
        if end <= start:  # a word of a megabyte or more
            end = spaced.find(" ", start + _MB)
            end = len(spaced) if end < 0 else end
        parts.append(" ".join(spaced[start:end].split()))
        start = end
    return " ".join(p for p in parts if p)


def _spaced(text: str) -> bytes:
    """The normalised words of ``text`` as UTF-8, separated by one or more spaces."""
    return text.encode().translate(_ASCII) if text.isascii() else " ".join(_words(text)).encode()


def _mix(x: np.ndarray) -> np.ndarray:  # splitmix64's finaliser
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _word_values(parts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit value for every word of ``parts`` (from ``_spaced``), in order, and the
    index of each part's first word: equal words, equal values; vectorised over bytes."""
    buf = np.frombuffer(b" ".join(parts) + b" ", np.uint8)
    letter = buf != 32
    head = letter.copy()
    head[1:] &= ~letter[:-1]
    chars = np.flatnonzero(letter)
    first = np.flatnonzero(head[chars])  # in ``chars``, where each word starts
    offset = np.arange(len(chars)) - np.repeat(first, np.diff(np.append(first, len(chars))))
    powers = np.full(int(offset.max()) + 1 if len(chars) else 0, _Q, np.uint64)
    powers[:1] = 1
    with np.errstate(over="ignore"):
        powers = np.cumprod(powers)
        sums = np.add.reduceat(buf[chars].astype(np.uint64) * powers[offset], first) if len(first) else \
            np.zeros(0, np.uint64)
        values = _mix(sums + np.diff(np.append(first, len(chars))).astype(np.uint64) * _P)
    bounds = np.cumsum([0] + [len(p) + 1 for p in parts[:-1]])
    return values, np.searchsorted(chars[first], bounds)


def _windows(v: np.ndarray, lengths: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """For each L in ``lengths`` (ascending): the hash of every window of L values of ``v``
    (``h[i]`` for ``v[i:i+L]``), a view valid until the next item."""
    h, power, wanted = v.copy(), np.uint64(1), set(lengths)
    with np.errstate(over="ignore"):
        for length in range(1, min(max(lengths, default=0), len(v)) + 1):
            if length > 1:
                power = power * _P
                h[:len(v) - length + 1] += v[length - 1:] * power
            if length in wanted:
                yield length, h[:len(v) - length + 1]


def _ramp(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each c in ``counts``, concatenated."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - counts, counts)


def _check(name: str, value, ok: bool, rule: str) -> None:
    if isinstance(value, bool) or not ok:
        raise ConfigError(f"decontamination {name} must be {rule}, got {value!r}")


class QuestionIndex:
    """Benchmark questions, indexed for ``match``/``match_many`` (build with ``from_texts``
    or ``load_benchmark_questions``). Picklable, so worker processes can share one."""

    def __init__(self, questions: list[str], origins: list[str], *, ngram: int, threshold: float,
                 min_chars: int, too_short: list[str], duplicates: int):
        self.ngram, self.threshold, self.min_chars = ngram, threshold, min_chars
        self.questions, self.origins = questions, origins
        self.too_short, self.duplicates = too_short, duplicates
        self.files: list[tuple[str, int]] = []
        self._build()

    @classmethod
    def from_texts(cls, texts: Iterable[str], *, ngram: int = 13, threshold: float = 0.5, min_chars: int = 20,
                   origins: Sequence[str] | None = None) -> "QuestionIndex":
        """Index ``texts`` (questions); ``origins`` names where each came from (default: its number)."""
        _check("ngram", ngram, isinstance(ngram, int) and ngram >= 1, "a whole number >= 1")
        _check("threshold", threshold, isinstance(threshold, (int, float)) and 0 < threshold <= 1,
               "a number in (0, 1]")
        _check("min_chars", min_chars, isinstance(min_chars, int) and min_chars >= 0, "a whole number >= 0")
        questions, kept, too_short, seen, duplicates = [], [], [], set(), 0
        for i, text in enumerate(texts):
            origin = origins[i] if origins is not None else f"question {i}"
            if not isinstance(text, str):
                raise DataError(f"a question must be a string, got {type(text).__name__}", path=origin)
            norm = normalize(text)
            if len(norm) < max(min_chars, 1):
                too_short.append(origin)
            elif norm in seen:
                duplicates += 1
            else:
                seen.add(norm)
                questions.append(norm)
                kept.append(origin)
        return cls(questions, kept, ngram=ngram, threshold=float(threshold), min_chars=min_chars,
                   too_short=too_short, duplicates=duplicates)

    def _build(self) -> None:
        n = self.ngram
        values, start, step = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)], 4096
        for i in range(0, len(self.questions), step):  # in batches: the arrays are per byte
            v, s = _word_values([q.encode() for q in self.questions[i:i + step]])
            start.append(s + sum(map(len, values)))
            values.append(v)
        values, start = np.concatenate(values), np.concatenate(start)
        size = np.diff(np.append(start, len(values)))
        self._lengths = tuple(sorted({*map(int, np.unique(size[size < n])), *([n] if (size >= n).any() else [])}))
        hashes, owners = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
        for length, h in _windows(values, self._lengths):
            if length == n:  # every window of the questions of n words or more
                count = np.maximum(size - n + 1, 0)
                owner = np.repeat(np.arange(len(size)), count)
                pos = np.repeat(start, count) + _ramp(count)
            else:  # the whole question, for those of exactly ``length`` words
                owner = np.flatnonzero(size == length)
                pos = start[owner]
            hashes.append(h[pos])
            owners.append(owner)
        gram, owner = np.concatenate(hashes), np.concatenate(owners)
        order = np.lexsort((owner, gram))
        gram, owner = gram[order], owner[order]
        fresh = np.ones(len(gram), bool)
        fresh[1:] = (gram[1:] != gram[:-1]) | (owner[1:] != owner[:-1])  # a gram twice in one question
        gram, owner = gram[fresh], owner[fresh].astype(np.int32)
        first = np.ones(len(gram), bool)
        first[1:] = gram[1:] != gram[:-1]
        self._grams = gram[first]  # sorted, distinct
        self._postings = owner  # the questions of gram g: _postings[_ptr[g]:_ptr[g + 1]]
        self._ptr = np.append(np.flatnonzero(first), len(gram)).astype(np.int64)
        self._total = total = np.bincount(owner, minlength=len(self.questions)).astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):  # the fewest hits reaching the threshold
            need = np.clip(np.ceil(self.threshold * total), 1, np.maximum(total, 1)).astype(np.int64)
            need = np.where((need > 1) & ((need - 1) / total >= self.threshold), need - 1, need)
            self._need = np.where(need / total < self.threshold, need + 1, need)
        bits = int(min(max(np.ceil(np.log2(max(len(self._grams), 1) * 64)), 12), 34))
        self._shift = np.uint64(64 - bits)
        self._filter = np.zeros(1 << (bits - 6), np.uint64)
        top = self._grams >> self._shift
        np.bitwise_or.at(self._filter, (top >> np.uint64(6)).astype(np.int64), np.uint64(1) << (top & np.uint64(63)))

    def __len__(self) -> int:
        return len(self.questions)

    def describe(self) -> dict:
        """What the index holds, for the data report."""
        return {"questions": len(self.questions), "grams": int(len(self._grams)),
                "files": [{"path": p, "questions": c} for p, c in self.files],
                "too_short": len(self.too_short), "too_short_examples": self.too_short[:5],
                "duplicates": self.duplicates, "ngram": self.ngram, "threshold": self.threshold,
                "min_chars": self.min_chars}

    def match(self, text: str) -> str | None:
        """``"exact"``, ``"ngram"`` or ``None`` for one training text."""
        return self.match_many([text])[0]

    def match_many(self, texts: Iterable[str]) -> list[str | None]:
        """``match`` of each text, in order (scanned in vectorised batches: several times the
        records/s of one ``match`` call per text)."""
        return list(self.iter_match(texts))

    def iter_match(self, texts: Iterable[str]) -> Iterator[str | None]:
        """``match_many`` lazily: reads ``texts`` a batch (about 1M characters) ahead of the
        results it yields, in order, so a stream of records can be screened at batch speed."""
        return (m[0] if m else None for m in self._scan_all(texts))

    def explain(self, text: str) -> tuple[str, str, str] | None:
        """``(match, where the question came from, the normalised question)``, or None."""
        found = next(iter(self._scan_all([text])))
        return None if found is None else (found[0], self.origins[found[1]], self.questions[found[1]])

    def _scan_all(self, texts: Iterable[str]) -> Iterator[tuple[str, int] | None]:
        batch, chars = [], 0
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"decontamination matches strings, got {type(text).__name__}")
            if len(text) > _CHUNK_CHARS:  # alone, in overlapping pieces: memory stays per batch
                yield from self._scan(batch)
                batch, chars = [], 0
                yield from self._scan_long(text)
                continue
            batch.append(text)
            chars += len(text)
            if chars >= _CHUNK_CHARS:
                yield from self._scan(batch)
                batch, chars = [], 0
        if batch:
            yield from self._scan(batch)

    def _pieces(self, text: str) -> Iterator[str]:
        """``text`` normalised, in pieces of about a batch that overlap by one word less than
        the longest gram: every window of the text is whole in some piece."""
        overlap = max(self._lengths, default=1) - 1
        size, piece = max(_CHUNK_CHARS // 8, 2 * overlap + 1), []
        for word in re.finditer(r"[^ ]+", normalize(text)):
            piece.append(word.group())
            if len(piece) == size:
                yield " ".join(piece)
                piece = piece[len(piece) - overlap:]
        yield " ".join(piece)

    def _scan(self, texts: list[str]) -> list[tuple[str, int] | None]:
        """The first match of each text: ``("exact" | "ngram", question)`` or None."""
        if not len(self._grams) or not texts:
            return [None] * len(texts)
        return self._decide(*self._found(texts), texts)

    def _scan_long(self, text: str) -> list[tuple[str, int] | None]:
        """One text over a batch: its grams found piece by piece, decided together."""
        found = [self._found([piece])[1] for piece in self._pieces(text)] if len(self._grams) else []
        gram = np.concatenate(found) if found else np.zeros(0, np.int64)
        return self._decide(np.zeros(len(gram), np.int64), gram, [text])

    def _found(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(text, gram) for each window of ``texts`` that is a question's gram."""
        values, starts = _word_values([_spaced(t) for t in texts])
        hashes, lengths = [], []
        for length, h in _windows(values, self._lengths):  # all lengths in one array: fewer numpy calls
            hashes.append(h.copy())
            lengths.append(length)
        h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        top = h >> self._shift
        cand = np.flatnonzero((self._filter[(top >> np.uint64(6)).astype(np.int64)] >> (top & np.uint64(63)))
                              & np.uint64(1))
        g = np.searchsorted(self._grams, h[cand])
        g[g == len(self._grams)] = 0
        known = self._grams[g] == h[cand]
        cand, gram = cand[known], g[known]
        offsets = np.cumsum([0] + [len(x) for x in hashes])
        seg = np.searchsorted(offsets, cand, side="right") - 1
        pos = cand - offsets[seg]
        text = np.searchsorted(starts, pos, side="right") - 1
        inside = np.searchsorted(starts, pos + np.array(lengths, dtype=np.int64)[seg] - 1, side="right") - 1 == text
        return text[inside], gram[inside]  # not across two texts

    def _decide(self, text: np.ndarray, gram: np.ndarray, texts: list[str]) -> list[tuple[str, int] | None]:
        found: list[tuple[str, int] | None] = [None] * len(texts)
        if not len(text):
            return found
        pairs = np.unique(text * len(self._grams) + gram)  # each gram once per text
        text, gram = pairs // len(self._grams), pairs % len(self._grams)
        count = self._ptr[gram + 1] - self._ptr[gram]
        question = self._postings[np.repeat(self._ptr[gram], count) + _ramp(count)].astype(np.int64)
        keys, hits = np.unique(np.repeat(text, count) * len(self.questions) + question, return_counts=True)
        text, question = keys // len(self.questions), keys % len(self.questions)
        over = hits >= self._need[question]
        for t, q, full in zip(text[over].tolist(), question[over].tolist(),
                              (hits[over] == self._total[question[over]]).tolist()):
            if found[t] is not None and found[t][0] == "exact":
                continue
            if full and f" {self.questions[q]} " in f" {normalize(texts[t])} ":
                found[t] = ("exact", q)
            elif found[t] is None:
                found[t] = ("ngram", q)
        return found


def load_benchmark_questions(paths: str | os.PathLike | Sequence[str | os.PathLike], *, ngram: int = 13,
                             threshold: float = 0.5, min_chars: int = 20) -> QuestionIndex:
    """Read the question files (or folders of them) at ``paths`` into an index."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [f for p in paths for f in question_files(Path(p))]
    if not files:
        raise ConfigError("decontaminate: no benchmark question files given")
    texts, origins, per_file = [], [], []
    for path in files:
        before = len(texts)
        for text, origin in read_questions(path):
            texts.append(text)
            origins.append(origin)
        if len(texts) == before:
            raise DataError("holds no questions", path=path, reason="no_questions")
        per_file.append((path, len(texts) - before))
    index = QuestionIndex.from_texts(texts, ngram=ngram, threshold=threshold, min_chars=min_chars, origins=origins)
    index.files = per_file
    return index

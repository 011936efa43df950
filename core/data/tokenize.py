"""Turning rendered text into ``input_ids`` and ``labels``.

Two paths:

- ``tokenize_source_target``: the reference (airoboros-compatible) algorithm, token for
  token: ``[BOS] + tokenize(source)``, ``tokenize(target) + [EOS]``, the two tokenized
  separately, with the reference's length rules.
- ``tokenize_segments``: the whole conversation tokenized once, so the ids are exactly what
  the tokenizer produces for the text inference engines see; each token is labelled by
  the segment that holds its last character.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..types import Segment

IGNORE_INDEX = -100
REFERENCE_KEEP = 512  # the reference keeps up to this many tokens of a side when truncating
# How far token counts of texts cut or joined differently can be apart: cutting a text (or
# joining two) changes how the few tokens at the cut split, never how many tokens the rest
# holds. A text's prefix proves it longer than a limit only with this many tokens to spare;
# lengths of source and target apart decide the reference's rule only this far from the limit.
PREFIX_MARGIN = 32


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


class Dropped(Exception):
    """An example the length rules or the labels rule out; ``reason`` is counted."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # sent back from a tokenizing worker process
        return (Dropped, (self.reason, self.detail))


def _ids(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def max_chars_per_token(tokenizer) -> int | None:
    """The longest token of the vocabulary, in characters: a text of N characters holds at
    least N / this many tokens (unless the tokenizer's normalizer shrinks it, e.g. collapses
    spaces, which ``prefix_tokens`` allows for). Byte-level and SentencePiece token strings
    are never shorter than the text they stand for. None when the vocabulary is not available."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return None
    return max((len(str(token)) for token in vocab), default=1) or 1


def _prefix_size(limit: int, chars_per_token: int) -> int:
    return (limit + PREFIX_MARGIN) * chars_per_token


def prefix_tokens(tokenizer, text: str, limit: int, chars_per_token: int | None) -> int | None:
    """How many tokens the start of ``text`` holds, when that alone proves the whole text
    longer than ``limit`` tokens; ``None`` when the text is short or not proven long.

    Only a prefix of ``(limit + PREFIX_MARGIN) * chars_per_token`` characters is tokenized,
    so a 50 MB record costs as much as a long example, not minutes and gigabytes."""
    if not chars_per_token or len(text) <= _prefix_size(limit, chars_per_token):
        return None
    n = len(_ids(tokenizer, text[: _prefix_size(limit, chars_per_token)], add_special_tokens=False))
    return n if n > limit + PREFIX_MARGIN // 2 else None


def _too_long_unread(counted: int, limit: int, chars_per_token: int, rule: str) -> Dropped:
    return Dropped("too_long", f"{counted} tokens in its first {_prefix_size(limit, chars_per_token)} characters "
                               f"alone, {rule}; the rest was not tokenized")


def _cut(tokenizer, text: str, keep: int, chars_per_token: int | None) -> str:
    """``text``, or a prefix of it whose tokens start the same way for ``keep`` tokens and more."""
    if prefix_tokens(tokenizer, text, keep, chars_per_token) is None:
        return text
    return text[: _prefix_size(keep, chars_per_token)]


def _backend(tokenizer):
    """The `tokenizers` tokenizer behind ``tokenizer`` when calling it directly gives exactly
    the ids of calling ``tokenizer`` (a plain transformers fast tokenizer that matches special
    tokens in the text); else None. Calling it directly skips the wrapper's per-text
    conversion and, without offsets, their computation: a third of the tokenization time."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    kind = type(tokenizer)
    if not (isinstance(tokenizer, TokenizersBackend) and kind._encode_plus is TokenizersBackend._encode_plus
            and kind.__call__ is PreTrainedTokenizerBase.__call__):
        return None
    backend = tokenizer.backend_tokenizer
    if getattr(tokenizer, "split_special_tokens", False) or backend.encode_special_tokens:
        return None
    return backend


def _batch_ids(tokenizer, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    """One tokenizer call for many texts: a fast tokenizer encodes a batch in parallel threads,
    and the per-call overhead is paid once. The ids are those of one call per text."""
    if not texts:
        return []
    texts = list(texts)
    backend = _backend(tokenizer)
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no offsets
        return [enc.ids for enc in encode(texts, add_special_tokens=add_special_tokens)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]


def _reference_truncate(source_ids: list[int], target_ids: list[int], model_max_len: int, eos_id: int,
                        train_on_source: bool) -> Tokenized:
    eos_ids = [eos_id]
    if len(source_ids) + len(target_ids) + 1 > model_max_len:
        if len(source_ids) <= REFERENCE_KEEP:
            target_ids = target_ids[: max(0, model_max_len - len(source_ids))]
            source_ids = source_ids[:model_max_len]
            eos_ids = []
        elif len(target_ids) <= REFERENCE_KEEP:
            source_ids = source_ids[: model_max_len - len(target_ids) - 1]
        else:
            source_ids = source_ids[: model_max_len // 2]
            target_ids = target_ids[: model_max_len // 2]
            eos_ids = []
    if not target_ids and not eos_ids:
        raise Dropped("no_trainable_tokens", "the prompt fills model_max_len; nothing of the reply is left")
    input_ids = source_ids + target_ids + eos_ids
    if train_on_source:
        labels = list(input_ids)
    else:
        labels = [IGNORE_INDEX] * len(source_ids) + target_ids + eos_ids
    return Tokenized(input_ids, labels)


def tokenize_source_target_batch(tokenizer, pairs: Sequence[tuple[str, str]], *, model_max_len: int,
                                 skip_excess_length: bool = True, train_on_source: bool = False,
                                 chars_per_token: int | None = None) -> list[Tokenized | Dropped]:
    """The reference algorithm on many (source, target) pairs: for each, its example or the
    ``Dropped`` that rules it out, exactly as ``tokenize_source_target`` gives them.

    The reference drops an example when ``BOS + source + target + EOS`` tokenized as one text
    holds ``model_max_len - 10`` tokens or more. Source and target are tokenized apart anyway;
    their lengths differ from the whole text's only where the two texts and the special
    tokens meet (a few tokens), so the whole text is tokenized only for the examples within
    ``PREFIX_MARGIN`` tokens of the limit, where that difference could decide."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    limit = model_max_len - 10
    results: list[Tokenized | Dropped | None] = [None] * len(pairs)
    sources, targets = [], []
    for i, (source, target) in enumerate(pairs):
        if skip_excess_length:
            counted = prefix_tokens(tokenizer, bos + source + target + eos, limit - 1, chars_per_token)
            if counted is not None:
                results[i] = _too_long_unread(counted, limit - 1, chars_per_token, f">= model_max_len - 10 ({limit})")
                continue
        else:
            # Truncation keeps at most this many tokens of a side, and compares a side's
            # length with REFERENCE_KEEP: a cut that leaves more changes nothing.
            keep = max(model_max_len, REFERENCE_KEEP)
            source = _cut(tokenizer, source, keep, chars_per_token)
            target = _cut(tokenizer, target, keep, chars_per_token)
        sources.append((i, source))
        targets.append(target)
    source_ids = _batch_ids(tokenizer, [s for _, s in sources], add_special_tokens=True)
    target_ids = _batch_ids(tokenizer, targets, add_special_tokens=False)
    eos_id = tokenizer.eos_token_id  # a property that costs more than the rest of an example's assembly
    undecided = []  # (position in ``sources``) of examples too close to the limit to tell apart
    if skip_excess_length:
        for k, (src, tgt) in enumerate(zip(source_ids, target_ids)):
            parts = len(src) + len(tgt) + 1
            if abs(parts - limit) <= PREFIX_MARGIN:
                undecided.append(k)
            elif parts > limit:
                results[sources[k][0]] = Dropped("too_long", f"{parts} tokens >= model_max_len - 10 ({limit})")
        wholes = _batch_ids(tokenizer, [bos + sources[k][1] + targets[k] + eos for k in undecided],
                            add_special_tokens=False)
        for k, whole in zip(undecided, wholes):
            if len(whole) >= limit:
                results[sources[k][0]] = Dropped("too_long", f"{len(whole)} tokens >= model_max_len - 10 ({limit})")
    for (i, _), src, tgt in zip(sources, source_ids, target_ids):
        if results[i] is None:
            try:
                results[i] = _reference_truncate(src, tgt, model_max_len, eos_id, train_on_source)
            except Dropped as exc:
                results[i] = exc
    return results


def _one(results: list) -> Tokenized:
    if isinstance(results[0], Dropped):
        raise results[0]
    return results[0]


def tokenize_source_target(tokenizer, source: str, target: str, *, model_max_len: int,
                           skip_excess_length: bool = True, train_on_source: bool = False,
                           chars_per_token: int | None = None) -> Tokenized:
    """``[BOS] + tokenize(source)``, ``tokenize(target) + [EOS]`` with the reference's length
    rules; raises ``Dropped``. With ``chars_per_token`` (see ``max_chars_per_token``) a text
    far too long is dropped, or cut before truncation, without tokenizing all of it; the
    result is the same."""
    return _one(tokenize_source_target_batch(tokenizer, [(source, target)], model_max_len=model_max_len,
                                             skip_excess_length=skip_excess_length,
                                             train_on_source=train_on_source, chars_per_token=chars_per_token))


def _with_offsets(tokenizer, texts: list[str]):
    """The ids and character offsets of each text, in one tokenizer call."""
    if not texts:
        return [], []
    backend = _backend(tokenizer)
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [enc.ids for enc in encodings], [enc.offsets for enc in encodings]
    try:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        enc = None
    if enc is None or enc.get("offset_mapping") is None:
        from ..errors import ConfigError

        raise ConfigError(f"the tokenizer ({type(tokenizer).__name__}) cannot map tokens to characters, which "
                          "labelling whole conversations needs; use a fast (tokenizers-backed) tokenizer, or a "
                          "template with the reference tokenization and --train_on last_reply")
    return enc["input_ids"], enc["offset_mapping"]


def trainable_mask(segments: Sequence[Segment], mode: str, train_on_source: bool) -> list[bool]:
    """Which segments are trained: ``last_reply`` or ``all_replies`` (or everything)."""
    if train_on_source:
        return [True] * len(segments)
    replies = [s.turn for s in segments if s.reply]
    last = max(replies) if replies else None
    if mode == "all_replies":
        return [s.reply for s in segments]
    if mode == "last_reply":
        return [s.reply and s.turn == last for s in segments]
    raise ValueError(f"unknown training mode {mode!r}")


def _segment_labels(ids, offsets, starts: list[int], trained: list[bool]) -> list[int]:
    """Each token labelled by the segment holding its last character (its first, when the
    token covers no character)."""
    import numpy as np

    if not ids:
        return []
    ids = np.asarray(ids, dtype=np.int64)
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    anchors = np.where(spans[:, 1] > spans[:, 0], spans[:, 1] - 1, spans[:, 0])
    segment = np.maximum(np.searchsorted(np.asarray(starts), anchors, side="right") - 1, 0)
    return np.where(np.asarray(trained)[segment], ids, IGNORE_INDEX).tolist()


def tokenize_segments_batch(tokenizer, conversations: Sequence[Sequence[Segment]], *, mode: str,
                            model_max_len: int, skip_excess_length: bool = True, train_on_source: bool = False,
                            chars_per_token: int | None = None) -> list[Tokenized | Dropped]:
    """Each conversation's segments tokenized as one text, in one tokenizer call for all of
    them: for each, its example or the ``Dropped`` that rules it out."""
    results: list[Tokenized | Dropped | None] = [None] * len(conversations)
    todo = []  # (index, text, segment starts, trained per segment)
    for i, segments in enumerate(conversations):
        text = "".join(s.text for s in segments)
        trained = trainable_mask(segments, mode, train_on_source)  # on every segment, before any cut
        starts, pos = [], 0
        for s in segments:
            starts.append(pos)
            pos += len(s.text)
        if skip_excess_length:
            counted = prefix_tokens(tokenizer, text, model_max_len, chars_per_token)
            if counted is not None:
                results[i] = _too_long_unread(counted, model_max_len, chars_per_token,
                                              f"> model_max_len ({model_max_len})")
                continue
        else:
            text = _cut(tokenizer, text, model_max_len, chars_per_token)
        todo.append((i, text, starts, trained))
    all_ids, all_offsets = _with_offsets(tokenizer, [text for _, text, _, _ in todo])
    for (i, _, starts, trained), ids, offsets in zip(todo, all_ids, all_offsets):
        if len(ids) > model_max_len:
            if skip_excess_length:
                results[i] = Dropped("too_long", f"{len(ids)} tokens > model_max_len ({model_max_len})")
                continue
            ids, offsets = ids[:model_max_len], offsets[:model_max_len]
        labels = _segment_labels(ids, offsets, starts, trained)
        if labels.count(IGNORE_INDEX) == len(labels):
            results[i] = Dropped("no_trainable_tokens", "no token of the example is trained")
        else:
            results[i] = Tokenized(list(ids), labels)
    return results


def tokenize_segments(tokenizer, segments: Sequence[Segment], *, mode: str, model_max_len: int,
                      skip_excess_length: bool = True, train_on_source: bool = False,
                      chars_per_token: int | None = None) -> Tokenized:
    """One conversation tokenized as one text; raises ``Dropped``. With ``chars_per_token``
    (see ``max_chars_per_token``) a text far too long is dropped, or cut before truncation,
    without tokenizing all of it; the result is the same."""
    return _one(tokenize_segments_batch(tokenizer, [segments], mode=mode, model_max_len=model_max_len,
                                        skip_excess_length=skip_excess_length, train_on_source=train_on_source,
                                        chars_per_token=chars_per_token))


def prompt_prefix_length(tokenizer, segments: Sequence[Segment]) -> int:
    """Number of leading tokens before the last reply (what a chat template must reproduce)."""
    last_turn = max(s.turn for s in segments if s.reply)
    first_reply = next(i for i, s in enumerate(segments) if s.reply and s.turn == last_turn)
    prefix = sum(len(s.text) for s in segments[:first_reply])
    _, (offsets,) = _with_offsets(tokenizer, ["".join(s.text for s in segments)])
    return sum(1 for start, end in offsets if (end - 1 if end > start else start) < prefix)

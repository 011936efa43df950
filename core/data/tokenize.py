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

import bisect
from dataclasses import dataclass
from typing import Sequence

from ..types import Segment

IGNORE_INDEX = -100
REFERENCE_KEEP = 512  # the reference keeps up to this many tokens of a side when truncating
# Tokens counted beyond a limit before a text's prefix proves it longer: cutting a text can
# change how its last few tokens split, never how many tokens the rest of it holds.
PREFIX_MARGIN = 32


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


class Dropped(Exception):
    """An example the length rules or the labels rule out; ``reason`` is counted."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


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


def tokenize_source_target(tokenizer, source: str, target: str, *, model_max_len: int,
                           skip_excess_length: bool = True, train_on_source: bool = False,
                           chars_per_token: int | None = None) -> Tokenized:
    """With ``chars_per_token`` (see ``max_chars_per_token``) a text far too long is dropped,
    or cut before truncation, without tokenizing all of it; the result is the same."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    if skip_excess_length:
        whole = bos + source + target + eos
        counted = prefix_tokens(tokenizer, whole, model_max_len - 11, chars_per_token)
        if counted is not None:
            raise _too_long_unread(counted, model_max_len - 11, chars_per_token,
                                   f">= model_max_len - 10 ({model_max_len - 10})")
        full = len(_ids(tokenizer, whole, add_special_tokens=False))
        if full >= model_max_len - 10:
            raise Dropped("too_long", f"{full} tokens >= model_max_len - 10 ({model_max_len - 10})")
    else:
        # Truncation keeps at most this many tokens of a side, and compares a side's
        # length with REFERENCE_KEEP: a cut that leaves more changes nothing.
        keep = max(model_max_len, REFERENCE_KEEP)
        source = _cut(tokenizer, source, keep, chars_per_token)
        target = _cut(tokenizer, target, keep, chars_per_token)
    source_ids = _ids(tokenizer, source, add_special_tokens=True)
    target_ids = _ids(tokenizer, target, add_special_tokens=False)
    eos_ids = [tokenizer.eos_token_id]
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


def _with_offsets(tokenizer, text: str):
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        enc = None
    if enc is None or enc.get("offset_mapping") is None:
        from ..errors import ConfigError

        raise ConfigError(f"the tokenizer ({type(tokenizer).__name__}) cannot map tokens to characters, which "
                          "labelling whole conversations needs; use a fast (tokenizers-backed) tokenizer, or a "
                          "template with the reference tokenization and --train_on last_reply")
    return enc


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


def tokenize_segments(tokenizer, segments: Sequence[Segment], *, mode: str, model_max_len: int,
                      skip_excess_length: bool = True, train_on_source: bool = False,
                      chars_per_token: int | None = None) -> Tokenized:
    """With ``chars_per_token`` (see ``max_chars_per_token``) a text far too long is dropped,
    or cut before truncation, without tokenizing all of it; the result is the same."""
    text = "".join(s.text for s in segments)
    trained = trainable_mask(segments, mode, train_on_source)  # on every segment, before any cut
    starts, pos = [], 0
    for s in segments:
        starts.append(pos)
        pos += len(s.text)
    if skip_excess_length:
        counted = prefix_tokens(tokenizer, text, model_max_len, chars_per_token)
        if counted is not None:
            raise _too_long_unread(counted, model_max_len, chars_per_token, f"> model_max_len ({model_max_len})")
    else:
        text = _cut(tokenizer, text, model_max_len, chars_per_token)
    enc = _with_offsets(tokenizer, text)
    input_ids = list(enc["input_ids"])
    labels = []
    for token_id, (start, end) in zip(input_ids, enc["offset_mapping"]):
        anchor = end - 1 if end > start else start
        seg = max(0, bisect.bisect_right(starts, anchor) - 1)
        labels.append(token_id if trained[seg] else IGNORE_INDEX)
    if len(input_ids) > model_max_len:
        if skip_excess_length:
            raise Dropped("too_long", f"{len(input_ids)} tokens > model_max_len ({model_max_len})")
        input_ids, labels = input_ids[:model_max_len], labels[:model_max_len]
    result = Tokenized(input_ids, labels)
    if result.trained == 0:
        raise Dropped("no_trainable_tokens", "no token of the example is trained")
    return result


def prompt_prefix_length(tokenizer, segments: Sequence[Segment]) -> int:
    """Number of leading tokens before the last reply (what a chat template must reproduce)."""
    last_turn = max(s.turn for s in segments if s.reply)
    first_reply = next(i for i, s in enumerate(segments) if s.reply and s.turn == last_turn)
    prefix = sum(len(s.text) for s in segments[:first_reply])
    enc = _with_offsets(tokenizer, "".join(s.text for s in segments))
    return sum(1 for start, end in enc["offset_mapping"] if (end - 1 if end > start else start) < prefix)

"""Conversations -> examples, in order, to their split's writer: rendered and tokenized a
chunk at a time (one batched tokenizer call per chunk and template), in worker processes
when ``--preprocessing_num_workers`` allows. The workers only compute; the results are
written in the order the conversations came, so any number of workers gives the examples
of one, token for token."""

from __future__ import annotations

import hashlib
import os
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .plan import Plan
from .render import TemplateError, _render
from .split import content_keys
from .tokenize import Dropped, Tokenized, max_chars_per_token

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..types import Conversation
    from .raw import RawRecord
    from .report import DataReport
    from .writer import _SplitWriter


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def workers_for(config) -> int:
    """``--preprocessing_num_workers``, by default the cores this process may use."""
    n = getattr(config.data, "preprocessing_num_workers", None)
    return available_cores() if n is None else max(1, int(n))


def template_choice(seed: int, ordinal: int, n: int) -> int:
    """The template a conversation gets under ``template_choice: random``: drawn from the seed
    and the conversation's place in its source, so it depends on nothing else."""
    if n == 1:
        return 0
    digest = hashlib.blake2b(f"{seed}:{ordinal}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


# What a worker process needs, set before the pool forks (never pickled per chunk).
_STATE: dict[str, Any] = {}


def make(items: Sequence[tuple[Sequence[int], Any]], state: dict[str, Any] | None = None) -> list[list[Any]]:
    """For each (plan indices, conversation): one result per plan, a Tokenized, a Dropped or
    a TemplateError; one batched tokenizer call per plan."""
    state = state if state is not None else _STATE
    tokenizer, plans, config = state["tokenizer"], state["plans"], state["config"]
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    results: list[list[Any]] = [[None] * len(indices) for indices, _ in items]
    for p, plan in enumerate(plans):
        places, rendered = [], []
        for i, (indices, conv) in enumerate(items):
            for k, index in enumerate(indices):
                if index != p:
                    continue
                try:
                    rendered.append(_render(plan, conv, bos, eos))
                    places.append((i, k))
                except TemplateError as exc:
                    results[i][k] = exc
        if rendered:
            made = state["tokenize"](tokenizer, plan, rendered, config, chars_per_token=state["chars_per_token"])
            for (i, k), result in zip(places, made):
                results[i][k] = result
    return results


def _work(items):
    return make(items)


class ExampleMaker:
    """Conversations in, examples out to their split's writer, in order. A conversation ruled
    out is counted as dropped; a template failure is a bad record. Nothing is written to a
    split past its limit. ``plans``: one per template; ``choice`` "random" renders each
    conversation with one of them (``template_choice``), "every" with each."""

    def __init__(self, config: TrainConfig, tokenizer, plans: Plan | list[Plan], report: DataReport, *,
                 tokenize: Callable, chunk: int, workers: int = 1, choice: str = "random"):
        plans = plans if isinstance(plans, list) else [plans]
        self.config, self.report, self.chunk, self.choice = config, report, chunk, choice
        self.state = {"tokenizer": tokenizer, "plans": plans, "config": config, "tokenize": tokenize,
                      "chars_per_token": max_chars_per_token(tokenizer)}
        self.skip_bad = config.data.on_bad_record == "skip"
        self.pending: list[tuple[Any, Any, Any, list[int], tuple[int, int, int]]] = []
        self.workers, self._pool = workers, None
        self._queue: deque = deque()  # (pending, async result) in submission order
        self._chunks = self._conversations = 0
        self._record, self._last_raw = -1, None

    def add(self, writer: _SplitWriter, conv: Conversation, raw: RawRecord,
            keys: tuple[int, int] | None = None) -> None:
        """``keys``: the conversation's ``split.content_keys`` when the caller has them."""
        n = len(self.state["plans"])
        indices = list(range(n)) if self.choice == "every" else [template_choice(self.config.seed,
                                                                                  self._conversations, n)]
        self._conversations += 1
        if raw is not self._last_raw:
            self._record, self._last_raw = self._record + 1, raw
        prompt, whole = keys if keys is not None else content_keys(conv)
        self.pending.append((writer, conv, raw, indices, (self._record, prompt, whole)))
        if len(self.pending) >= self.chunk:
            self._submit()

    def _submit(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        items = [(indices, conv) for _, conv, _, indices, _ in pending]
        self._chunks += 1
        # the first chunk is made here: a small dataset never starts a pool
        if self.workers > 1 and self._chunks > 1 and self._pool is None:
            self._pool = _start_pool(self.state, self.workers)
        if self._pool is None:
            self._write(pending, make(items, self.state))
            return
        self._queue.append((pending, self._pool.apply_async(_work, (items,))))
        while len(self._queue) > 2 * self.workers:
            self._drain_one()

    def _drain_one(self) -> None:
        pending, result = self._queue.popleft()
        self._write(pending, result.get())

    def flush(self) -> None:
        self._submit()
        while self._queue:
            self._drain_one()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def _write(self, pending, results) -> None:
        batch: dict[int, list[Tokenized]] = {}
        keys: dict[int, list[tuple[int, int, int]]] = {}
        writers: dict[int, Any] = {}
        for (writer, _, raw, _, triple), made in zip(pending, results):
            for result in made:
                if writer.limit is not None and writer.examples + len(batch.get(id(writer), ())) >= writer.limit:
                    continue
                if isinstance(result, Tokenized):
                    batch.setdefault(id(writer), []).append(result)
                    keys.setdefault(id(writer), []).append(triple)
                    writers[id(writer)] = writer
                elif isinstance(result, Dropped):
                    self.report.drop(result.reason, raw.location, result.detail, raw.record)
                elif not self.skip_bad:
                    self.close()
                    raise raw.error(str(result), reason="template_error") from None
                else:
                    self.report.drop("template_error", raw.location, str(result), raw.record)
        for key, examples in batch.items():
            writers[key].add(examples, keys[key])


def _start_pool(state: dict[str, Any], workers: int):
    """Worker processes forked with ``state`` (the tokenizer, plans, config); None where
    processes cannot be forked (then the chunks are made here, as with one worker)."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    _STATE.clear()
    _STATE.update(state)
    # the parent's tokenizer threads do not survive a fork: each worker tokenizes on one (and
    # says nothing about it); the parent keeps its own setting
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return multiprocessing.get_context("fork").Pool(workers)
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before

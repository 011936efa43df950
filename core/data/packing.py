"""Sample packing (``--sample_packing``): several tokenized examples per ``model_max_len`` row.

The bin plan is best-fit decreasing over the example lengths, ties broken by a permutation
drawn from the seed, so it depends only on the data and the seed: a resumed run rebuilds the
same rows and the Trainer's own sampler (and its skip on resume, and the distributed sampler)
works unchanged on them. Each row records its examples' lengths (``seq_lens``); the collator
turns them into restarting ``position_ids`` and, where the attention needs one, a
block-diagonal causal mask, so no example attends to another (sdpa on CPU computes each
example on its own instead: :mod:`airo.core.training.packed_attention`).

Under DDP / DeepSpeed accelerate deals whole batches of rows to the processes in turn and,
when the rows do not fill a batch on every process, fills the last ones with rows from the
start of the epoch (``even_batches``) or drops them (``--dataloader_drop_last``). So the plan
is made a multiple of the rows the processes take together (``balance_rows``): every example
is in exactly one row, every process gets the same number of full batches, and the steps per
epoch are known before training starts.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError
from .tokenize import IGNORE_INDEX

ROW_BATCH = 256  # rows gathered and written per step: bounded memory for any dataset size


@dataclass
class PackingStats:
    examples: int
    rows: int
    tokens: int
    capacity: int  # model_max_len
    split: int = 0  # rows added by balance_rows
    repeated: int = 0  # rows the data loader takes twice each epoch to even out the last batches
    left_out: int = 0  # rows it leaves out each epoch (--dataloader_drop_last)
    processes: int = 1
    rows_per_process: int | None = None  # per epoch, as the data loader deals them
    steps_per_epoch: int | None = None  # optimizer steps, as the Trainer counts them

    @property
    def efficiency(self) -> float:
        """Real tokens over the positions of full rows."""
        return self.tokens / max(1, self.rows * self.capacity)

    def summary(self) -> str:
        text = (f"{self.examples:,} examples in {self.rows:,} rows of {self.capacity:,} tokens "
                f"({100 * self.efficiency:.1f}% filled)")
        per_epoch = []
        if self.processes > 1 and self.rows_per_process is not None:
            per_epoch.append(f"{self.rows_per_process:,} rows per process")
        if self.steps_per_epoch is not None:
            per_epoch.append(f"{self.steps_per_epoch:,} steps")
        if per_epoch:
            text += f"; per epoch: {', '.join(per_epoch)}"
        if self.split:
            text += f"; {self.split:,} rows split off to give every process whole batches"
        if self.repeated:
            text += f"; {self.repeated:,} row(s) repeated each epoch"
        if self.left_out:
            text += f"; {self.left_out:,} row(s) left out each epoch"
        return text


# -- how the data loader deals rows (packing owns this arithmetic; the training run counts its
# steps with the same rules) ----------------------------------------------------------------

def _split_batches(args) -> bool:
    return bool(getattr(getattr(args, "accelerator_config", None), "split_batches", False))


def rows_per_round(args) -> int:
    """How many rows the processes take together per batch: accelerate deals whole batches
    to the processes in turn (or, with ``split_batches``, a slice of each batch to each). A
    row count that is a multiple of it gives every process the same number of full batches;
    otherwise the last ones are filled with rows from the start of the epoch or, with
    --dataloader_drop_last, left out. One process has nothing to even out: 1 there."""
    if args.world_size <= 1 and not args.dataloader_drop_last:
        return 1
    return args.train_batch_size * (1 if _split_batches(args) else args.world_size)


def batches_per_process(n_rows: int, args) -> int:
    """``len()`` of each process's training dataloader for ``n_rows`` rows, as accelerate's
    BatchSamplerShard gives it (``even_batches``, accelerate's default, loops back to fill)."""
    size = args.train_batch_size
    drop = bool(args.dataloader_drop_last)
    batches = n_rows // size if drop else -(-n_rows // size)
    if args.world_size <= 1 or _split_batches(args):
        return batches
    return batches // args.world_size if drop else -(-batches // args.world_size)


def rows_per_process(n_rows: int, args) -> int:
    """Rows each process trains on per epoch: rows repeated to even out its batches included,
    rows --dataloader_drop_last leaves out excluded."""
    if args.world_size <= 1:  # nothing to even out: a last partial batch stays partial
        return n_rows - n_rows % args.train_batch_size if args.dataloader_drop_last else n_rows
    rows = batches_per_process(n_rows, args) * args.train_batch_size
    return rows // args.world_size if _split_batches(args) else rows


def updates_per_epoch(n_rows: int, args) -> int:
    """Optimizer steps per epoch (a last partial accumulation still makes one)."""
    return max(-(-batches_per_process(n_rows, args) // args.gradient_accumulation_steps), 1)


def check_packing_options(config) -> None:
    d = config.data
    if d.sample_packing and d.group_by_length:
        raise ConfigError("--sample_packing and --group_by_length do not combine: packed rows are all about "
                          "model_max_len long; drop one of them")


def example_lengths(dataset) -> list[int]:
    """Each example's token count, read from the Arrow offsets (no pass over the tokens)."""
    import pyarrow.compute as pc

    column = dataset.data.column("input_ids")
    if dataset._indices is not None:  # a select()ed view: lengths in its order
        column = column.take(dataset._indices.column(0))
    return pc.list_value_length(column).to_pylist()


def plan_bins(lengths: Sequence[int], capacity: int, seed: int) -> list[list[int]]:
    """Example indices per row: best-fit decreasing (each example goes to the row it fills
    most tightly), deterministic in ``lengths`` and ``seed``. An example longer than
    ``capacity`` is refused: the pipeline drops or truncates those before packing."""
    import numpy as np

    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and int(lengths.max()) > capacity:
        raise ConfigError(f"an example has {int(lengths.max())} tokens, more than --model_max_len {capacity}; "
                          "the data pipeline should have dropped or truncated it")
    tiebreak = np.random.default_rng(seed).permutation(len(lengths))
    order = np.lexsort((tiebreak, -lengths))  # longest first; equal lengths in seeded order
    free: list[int] = []  # remaining space of the open rows, ascending
    holders: list[int] = []  # row index, parallel to ``free``
    bins: list[list[int]] = []
    for i in order.tolist():
        n = int(lengths[i])
        at = bisect.bisect_left(free, n)
        if at == len(free):
            row, left = len(bins), capacity - n
            bins.append([i])
        else:
            row, left = holders.pop(at), free.pop(at) - n
            bins[row].append(i)
        if left > 0:
            at = bisect.bisect_left(free, left)
            free.insert(at, left)
            holders.insert(at, row)
    return bins


def balance_rows(bins: list[list[int]], lengths: Sequence[int], multiple: int) -> list[list[int]]:
    """``bins`` with as few rows added as make their count a multiple of ``multiple``: each new
    row holds one example taken from a row that has several (the longest such examples, so the
    new rows are as full as a lone example makes them; every row keeps its first example). A row
    only loses examples, so every row stays within capacity and every example stays in exactly
    one row. Deterministic in its inputs. With too few examples every one gets its own row and
    the count stays short of the multiple."""
    if multiple <= 1 or len(bins) % multiple == 0:
        return bins
    need = -(-len(bins) // multiple) * multiple - len(bins)
    # need < multiple: a partial selection, not a sort of every example
    chosen = heapq.nsmallest(need, ((r, k) for r, members in enumerate(bins) for k in range(1, len(members))),
                             key=lambda rk: (-lengths[bins[rk[0]][rk[1]]], rk))
    moved = set(chosen)
    kept = [[i for k, i in enumerate(members) if (r, k) not in moved] for r, members in enumerate(bins)]
    return kept + [[bins[r][k]] for r, k in chosen]


def _row(examples: list[dict[str, Any]]) -> dict[str, list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        lab = list(ex["labels"])
        # the model predicts labels[t] from position t-1: the first token of an example would
        # be predicted from the previous example's last token
        lab[0] = IGNORE_INDEX
        ids.extend(ex["input_ids"])
        labels.extend(lab)
    return {"input_ids": ids, "labels": labels, "seq_lens": [len(ex["input_ids"]) for ex in examples]}


def pack_dataset(dataset, capacity: int, seed: int, workdir=None, multiple: int = 1):
    """(packed ``datasets.Dataset`` of rows, PackingStats). The row count is made a multiple of
    ``multiple`` where the examples allow (:func:`balance_rows`). The rows are written to an
    Arrow file in ``workdir`` (default: a temporary folder removed at exit) and memory-mapped."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    from .paths import scratch_dir as _scratch_dir

    lengths = example_lengths(dataset)
    planned = plan_bins(lengths, capacity, seed)
    bins = balance_rows(planned, lengths, multiple)
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "labels": datasets.Sequence(datasets.Value("int32")),
                                  "seq_lens": datasets.Sequence(datasets.Value("int32"))})
    folder = workdir if workdir is not None else _scratch_dir()
    path = f"{folder}/packed.arrow"
    with ArrowWriter(features=features, path=path, writer_batch_size=ROW_BATCH) as writer:
        for start in range(0, len(bins), ROW_BATCH):
            chunk = bins[start:start + ROW_BATCH]
            flat = [i for members in chunk for i in members]
            got = dataset.select(flat)[:]
            k = 0
            for members in chunk:
                examples = [{"input_ids": got["input_ids"][k + j], "labels": got["labels"][k + j]}
                            for j in range(len(members))]
                k += len(members)
                writer.write(_row(examples))
        writer.finalize()
    stats = PackingStats(examples=len(lengths), rows=len(bins), tokens=int(sum(lengths)), capacity=capacity,
                         split=len(bins) - len(planned))
    return datasets.Dataset.from_file(path), stats


def mask_style(attn_implementation: str | None) -> str | None:
    """How the collator isolates packed examples for this attention: a 4-D boolean mask for
    sdpa (the default), an additive float mask for eager (it adds the mask to the scores),
    and None for the others (flash attention's varlen path, flex attention and airo's
    per-example sdpa on CPU, :mod:`airo.core.training.packed_attention`, find the examples
    from the restarting ``position_ids`` themselves)."""
    impl = attn_implementation or "sdpa"
    if impl == "sdpa":
        return "bool"
    if impl == "eager":
        return "float"
    return None


def packed_trainer_class(trainer_cls):
    """``trainer_cls`` counting real tokens for ``num_input_tokens_seen``: with a 4-D mask in
    the batch its sum would count pairs of positions, so the count falls back to the tokens
    that are not padding."""

    class PackedTrainer(trainer_cls):
        def _track_num_input_tokens(self, inputs):
            mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
            if mask is not None and mask.dim() == 4:
                inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
            return super()._track_num_input_tokens(inputs)

    PackedTrainer.__name__ = PackedTrainer.__qualname__ = f"Packed{trainer_cls.__name__}"
    return PackedTrainer


def loader_fit(stats: PackingStats, args, multiple: int) -> str | None:
    """Record in ``stats`` what the data loader will do with the rows; a warning when rows
    repeat or are left out (too few examples to give every process whole batches)."""
    stats.processes = max(1, args.world_size)
    stats.rows_per_process = rows_per_process(stats.rows, args)
    stats.steps_per_epoch = updates_per_epoch(stats.rows, args)
    missing = (-stats.rows) % multiple
    if not missing:
        return None
    # balance_rows gave up short of a multiple only with every example in a row of its own
    whole = (f"--sample_packing: {stats.examples:,} examples fill {stats.rows:,} rows at most, not a multiple of "
             f"the {multiple:,} rows that {stats.processes} process(es) take per batch")
    if args.dataloader_drop_last:
        stats.left_out = multiple - missing
        return (f"{whole}: --dataloader_drop_last leaves {stats.left_out:,} row(s) out each epoch; train on more "
                "data, fewer processes or a smaller batch to keep them")
    stats.repeated = missing
    return (f"{whole}: the data loader repeats {missing:,} row(s) each epoch to even out the batches; train on "
            "more data, fewer processes or a smaller batch to avoid it")

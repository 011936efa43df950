"""``--sample_packing`` for preference pairs: many pairs per row, no pair seeing another.

Each pair contributes two sequences to a row, prompt + chosen and prompt + rejected, in
that order; a row holds as many pairs as fit ``2 x --model_max_len`` tokens (a pair's two
sequences always fit one row), planned with SFT packing's best-fit decreasing bins
(:func:`airo.core.data.packing.plan_bins`, seeded, balanced for the processes). The batch
is SFT packing's (:class:`airo.core.data.collator.PackingCollator`): ``position_ids``
restart at every sequence and, where the attention needs it, a block-diagonal causal mask
(on CPU sdpa computes each sequence on its own), so each sequence's log-probabilities are
those it has alone. The log-probabilities are then summed per sequence (the position
restarts say where each begins), which gives the objective the same per-pair values as
padded batches: the loss equals the unpacked loss (``tests/test_objectives.py``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

IGNORE_INDEX = -100


def pair_lengths(dataset) -> list[int]:
    prompts, chosen, rejected = (dataset[c] for c in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids"))
    return [2 * len(p) + len(c) + len(r) for p, c, r in zip(prompts, chosen, rejected)]


def pack_pairs(dataset, model_max_len: int, seed: int, multiple: int = 1):
    """(rows, PackingStats): each row's ``input_ids``, ``labels`` and ``seq_lens`` (two per pair)."""
    import datasets

    from ..data.packing import PackingStats, balance_rows, plan_bins

    lengths = pair_lengths(dataset)
    capacity = 2 * model_max_len
    planned = plan_bins(lengths, capacity, seed)
    bins = balance_rows(planned, lengths, multiple)
    columns: dict[str, list] = {"input_ids": [], "labels": [], "seq_lens": []}
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        lens: list[int] = []
        for i in members:
            row = dataset[int(i)]
            prompt = list(row["prompt_input_ids"])
            for side in ("chosen", "rejected"):
                sequence = prompt + list(row[f"{side}_input_ids"])
                labelled = [IGNORE_INDEX] * len(prompt) + list(row[f"{side}_labels"])
                labelled[0] = IGNORE_INDEX  # never predicted from the sequence before it
                ids += sequence
                labels += labelled
                lens.append(len(sequence))
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
        columns["seq_lens"].append(lens)
    ints = datasets.Sequence(datasets.Value("int32"))
    rows = datasets.Dataset.from_dict(columns, features=datasets.Features({k: ints for k in columns}))
    stats = PackingStats(examples=len(lengths), rows=len(bins), tokens=int(sum(lengths)), capacity=capacity,
                         split=len(bins) - len(planned))
    return rows, stats


class PackedPairCollator:
    """Packed rows batched as SFT packing batches them, plus each row's sequence count; the
    unpacked pairs of the eval split as :class:`~.preference_trainer.PreferenceCollator` does."""

    def __init__(self, pad_token_id, mask: str | None):
        from ..data.collator import PackingCollator
        from .preference_batches import PreferenceCollator

        if pad_token_id is None:
            raise ConfigError("the tokenizer has no pad token; pass --pad_token")
        self.inner = PackingCollator(pad_token_id, mask=mask)
        self.pairs = PreferenceCollator(pad_token_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not features or "seq_lens" not in features[0]:
            return self.pairs(features)
        batch = self.inner(features)
        batch["num_sequences"] = torch.tensor([len(f["seq_lens"]) for f in features], dtype=torch.long)
        return batch


def packed_logps(model, batch: dict[str, Any], counts):
    """(summed log-probability of each sequence's labelled tokens, their count), sequences in
    row order: for pairs, chosen and rejected alternate."""
    import torch

    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    picked = torch.gather(logits, 2, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    per_token = picked - torch.logsumexp(logits, dim=-1)
    local = ((batch["position_ids"] == 0).cumsum(dim=1) - 1)[:, 1:]  # the sequence of each predicted token
    counts = counts.to(local.device)
    offsets = torch.cumsum(counts, 0) - counts
    valid = mask & (local < counts[:, None])  # the padding after a row's sequences is no sequence
    index = (local + offsets[:, None])[valid]
    total = int(counts.sum())
    sums = torch.zeros(total, dtype=per_token.dtype, device=per_token.device).index_add(0, index, per_token[valid])
    sizes = torch.zeros(total, dtype=torch.long, device=per_token.device).index_add(
        0, index, torch.ones_like(index))
    return sums, sizes


def packed_training_data(config, train, tokenizer, model, args):
    """(rows, collator, PackingStats, whether the Trainer class must count real tokens) for
    ``--sample_packing`` with a pair objective."""
    from ..data.packing import mask_style
    from ..data.packing import rows_per_round
    from .packed_attention import use_packed_attention

    rows, stats = pack_pairs(train, config.data.model_max_len, config.seed, multiple=rows_per_round(args))
    mask = mask_style(getattr(model.config, "_attn_implementation", None))
    if mask == "bool" and use_packed_attention(model, args.device):
        mask = None  # each sequence is computed on its own: no mask needed
    return rows, PackedPairCollator(tokenizer.pad_token_id, mask), stats

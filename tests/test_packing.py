"""Sample packing: the bin plan, packed batches equal to separate runs, the collator, the
Trainer integration (token counting, --group_by_length), rows dealt to several processes
(every example once per epoch) and ``airo train --sample_packing``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, run_cli

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"


def _config(*argv):
    from airo.core.config import build_config

    return build_config(None, list(map(str, argv)))


def _examples(lengths, seed=0, vocab=500):
    import random

    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [1] + [rng.randrange(3, vocab) for _ in range(n - 1)]
        prompt = max(1, n // 3)
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def _dataset(examples):
    import datasets

    return datasets.Dataset.from_list(examples)


# -- the bin plan --------------------------------------------------------------------------------

def test_plan_bins_places_every_example_once_within_capacity():
    import random

    from airo.core.data.packing import plan_bins

    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = plan_bins(lengths, 100, seed=3)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 100 for b in bins)
    lower = -(-sum(lengths) // 100)
    assert len(bins) <= lower * 1.05 + 1  # decreasing best fit is within a few % of the bound here
    assert plan_bins(lengths, 100, seed=3) == bins  # deterministic: a resumed run rebuilds the same rows


def test_plan_bins_is_optimal_on_a_fitting_mix_and_seeded():
    from airo.core.data.packing import plan_bins

    # 6+4, 7+3, 5+5: decreasing best fit finds the three full rows
    lengths = [4, 6, 3, 7, 5, 5]
    bins = plan_bins(lengths, 10, seed=0)
    assert sorted(sorted(lengths[i] for i in b) for b in bins) == [[3, 7], [4, 6], [5, 5]]
    # equal lengths: the seed decides which examples share a row
    same = [5] * 40
    assert plan_bins(same, 10, seed=0) != plan_bins(same, 10, seed=1)


def test_plan_bins_refuses_an_example_over_capacity():
    from airo.core.errors import ConfigError
    from airo.core.data.packing import plan_bins

    with pytest.raises(ConfigError, match="more than --model_max_len 8"):
        plan_bins([3, 9], 8, seed=0)


def test_pack_dataset_rows_and_boundary_labels(tmp_path):
    from airo.core.data.packing import pack_dataset

    examples = _examples([5, 7, 3, 9, 4, 2])
    packed, stats = pack_dataset(_dataset(examples), 12, seed=0, workdir=tmp_path)
    assert (stats.examples, stats.tokens, stats.rows) == (6, 30, len(packed))
    assert stats.efficiency == pytest.approx(30 / (12 * len(packed)))
    seen = []
    for row in packed:
        assert len(row["input_ids"]) == len(row["labels"]) == sum(row["seq_lens"]) <= 12
        start = 0
        for n in row["seq_lens"]:
            ids, labels = row["input_ids"][start:start + n], row["labels"][start:start + n]
            original = next(e for e in examples if e["input_ids"] == ids)
            seen.append(examples.index(original))
            # the first label of each example is masked: it would be predicted from the previous example
            assert labels[0] == -100 and labels[1:] == original["labels"][1:]
            start += n
    assert sorted(seen) == list(range(6))


def test_pack_dataset_follows_a_selected_view(tmp_path):
    from airo.core.data.packing import example_lengths

    ds = _dataset(_examples([5, 7, 3, 9]))
    assert example_lengths(ds) == [5, 7, 3, 9]
    assert example_lengths(ds.select([3, 0])) == [9, 5]


# -- packed batches equal separate runs ------------------------------------------------------------

@pytest.mark.parametrize("attn", ["sdpa", "eager", "per_example"])
def test_packed_batch_equals_separate_runs(tiny_model_dir, tmp_path, attn):
    """Logits and the summed token loss of packed rows equal those of each example run alone
    (fp32), under a 4-D mask (sdpa, eager) or with sdpa one example at a time (airo's CPU
    path); without the mask, only restarting position_ids, they do not."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from airo.core.data.collator import PackingCollator
    from airo.core.data.packing import mask_style, pack_dataset
    from airo.core.training.packed_attention import use_packed_attention

    impl = "sdpa" if attn == "per_example" else attn
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=impl).eval()
    examples = _examples([17, 9, 30, 5, 12, 21, 3])
    packed, _ = pack_dataset(_dataset(examples), 40, seed=0, workdir=tmp_path)
    rows = list(packed)
    if attn == "per_example":
        assert use_packed_attention(model, torch.device("cpu"))
        batch = PackingCollator(0, mask=None)(rows)
        batch["attention_mask"] = None
    else:
        batch = PackingCollator(0, mask=mask_style(attn))(rows)
        assert batch["attention_mask"].dim() == 4

    def token_losses(logits, labels):
        return F.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=-100, reduction="sum")

    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"])
        unmasked = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         attention_mask=torch.ones_like(batch["input_ids"]))
        worst = worst_unmasked = 0.0
        packed_loss = separate_loss = 0.0
        for r, row in enumerate(rows):
            start = 0
            for n in row["seq_lens"]:
                ids = row["input_ids"][start:start + n]
                alone = model(input_ids=torch.tensor([ids])).logits[0]
                worst = max(worst, (out.logits[r, start:start + n] - alone).abs().max().item())
                worst_unmasked = max(worst_unmasked, (unmasked.logits[r, start:start + n] - alone).abs().max().item())
                original = next(e for e in examples if e["input_ids"] == ids)
                separate_loss += token_losses(alone, original["labels"]).item()
                start += n
            packed_loss += token_losses(out.logits[r], batch["labels"][r].tolist()).item()
    assert worst < 1e-5
    if attn != "per_example":  # (which needs no mask: it finds the examples from position_ids)
        assert worst_unmasked > 1e-2  # restarting position_ids alone lets examples see each other
    assert packed_loss == pytest.approx(separate_loss, rel=1e-5)
    # the model's own loss (mean over trained tokens) matches too
    trained = sum(sum(1 for x in e["labels"][1:] if x != -100) for e in examples)
    with torch.no_grad():
        loss = model(**batch).loss.item()
    assert loss == pytest.approx(separate_loss / trained, rel=1e-5)


def test_per_example_attention_with_gqa_gradients_padding_and_generation():
    """airo's per-example sdpa: with grouped-query heads the packed logits and gradients equal
    the 4-D mask's; padded batches and generation (a padding mask, a KV cache) are plain sdpa;
    only plain causal models on CPU are switched."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from airo.core.data.collator import PackingCollator
    from airo.core.training.packed_attention import NAME, supports, use_packed_attention

    config = LlamaConfig(vocab_size=120, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, attn_implementation="sdpa")
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config).float()
    model = LlamaForCausalLM(copy.deepcopy(config)).float()
    model.load_state_dict(reference.state_dict())
    assert not use_packed_attention(model, torch.device("cuda"))  # the 4-D mask stays on CUDA
    assert use_packed_attention(model, torch.device("cpu")) and model.config._attn_implementation == NAME
    assert reference.config._attn_implementation == "sdpa"

    rows = [{"input_ids": [1, 5, 6, 7, 1, 9, 10], "labels": [-100, 5, 6, 7, -100, 9, 10], "seq_lens": [4, 3]},
            {"input_ids": [1, 11, 12, 13, 14], "labels": [-100, 11, 12, 13, 14], "seq_lens": [5]}]
    masked = PackingCollator(0, mask="bool")(rows)
    plain = PackingCollator(0, mask=None)(rows)
    loss_ref = reference(**masked).loss
    loss = model(**plain).loss
    assert abs(loss.item() - loss_ref.item()) < 1e-5
    loss_ref.backward()
    loss.backward()
    for (name, a), b in zip(reference.named_parameters(), model.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name

    with torch.no_grad():
        ids = torch.tensor([[1, 20, 21, 22, 23], [1, 30, 31, 0, 0]])
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
        a, b = reference(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
        assert (a - b)[mask.bool()].abs().max() < 1e-5
        left = torch.tensor([[0, 0, 1, 40, 41], [1, 50, 51, 52, 53]])
        left_mask = (left != 0).long()
        kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(reference.generate(input_ids=left, attention_mask=left_mask, **kw),
                           model.generate(input_ids=left, attention_mask=left_mask, **kw))

    assert supports(config)
    assert not supports(LlamaConfig(sliding_window=16))  # a window the per-example loop would ignore
    eager = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, attn_implementation="eager"))
    assert not use_packed_attention(eager, torch.device("cpu"))


def test_packing_collator_tail_positions_and_eval_fallback():
    import torch

    from airo.core.data.collator import PackingCollator

    rows = [{"input_ids": [1, 5, 6, 1, 7], "labels": [-100, 5, 6, -100, 7], "seq_lens": [3, 2]},
            {"input_ids": [1, 8], "labels": [-100, 8], "seq_lens": [2]}]
    batch = PackingCollator(0, mask="bool")(rows)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["labels"][1].tolist() == [-100, 8, -100, -100, -100]
    mask = batch["attention_mask"][0, 0]
    assert mask[4].tolist() == [False, False, False, True, True]  # the second example sees only itself
    assert batch["attention_mask"][1, 0].any(-1).all()  # padding attends to itself: no empty (NaN) rows
    additive = PackingCollator(0, mask="float")(rows)["attention_mask"]
    assert additive.dtype == torch.float32 and additive[0, 0, 4, 0] == torch.finfo(torch.float32).min
    assert "attention_mask" not in PackingCollator(0, mask=None)(rows)  # flash attention: position_ids only
    unpacked = PackingCollator(0)([{"input_ids": [1, 5], "labels": [-100, 5]}, {"input_ids": [1], "labels": [-100]}])
    assert unpacked["attention_mask"].tolist() == [[1, 1], [1, 0]] and "position_ids" not in unpacked


def test_mask_style():
    from airo.core.data.packing import mask_style

    assert [mask_style(a) for a in (None, "sdpa", "eager", "flash_attention_2", "flex_attention")] == \
        ["bool", "bool", "float", None, None]


# -- the Trainer and the options -------------------------------------------------------------------

def test_packed_trainer_counts_real_tokens(tiny_model_dir, tiny_tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from airo.core.data.collator import PackingCollator
    from airo.core.data.packing import packed_trainer_class

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                             include_num_input_tokens_seen="non_padding")
    trainer = packed_trainer_class(Trainer)(model=model, args=args, processing_class=tiny_tokenizer)
    rows = [{"input_ids": [1, 5, 6, 1, 7], "labels": [-100, 5, 6, -100, 7], "seq_lens": [3, 2]},
            {"input_ids": [1, 8], "labels": [-100, 8], "seq_lens": [2]}]
    batch = PackingCollator(tiny_tokenizer.pad_token_id, mask="bool")(rows)
    trainer._track_num_input_tokens(batch)
    assert trainer.state.num_input_tokens_seen == 7  # not the 4-D mask's sum
    assert "attention_mask" in batch  # the batch the model gets keeps its mask


def test_group_by_length_and_packing_options(tiny_model_dir, tiny_tokenizer, tmp_path, airo_env):
    import torch
    from transformers import AutoModelForCausalLM, Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from airo.core.training.batches import training_data
    from airo.core.errors import ConfigError
    from airo.core.training.arguments import training_overrides

    base = ["--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "out", "--dataset", CONVERSATIONS,
            "--eval_dataset_size", "0"]
    config = _config(*base, "--group_by_length", "true")
    args = config.training_arguments(**training_overrides(config))
    assert str(getattr(args.train_sampling_strategy, "value", args.train_sampling_strategy)) == "group_by_length"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    train = _dataset(_examples([5, 30, 7, 22]))
    data, _, cls, stats = training_data(config, train, tiny_tokenizer, model, args, Trainer)
    assert data["length"] == [5, 30, 7, 22] and cls is Trainer and stats is None
    sampler = Trainer(model=model, args=args, train_dataset=data, processing_class=tiny_tokenizer)._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths == [5, 30, 7, 22]

    packing = _config(*base, "--sample_packing", "true", "--model_max_len", "40")
    args = packing.training_arguments(**training_overrides(packing))
    rows, collator, cls, stats = training_data(packing, train, tiny_tokenizer, model, args, Trainer)
    assert len(rows) == stats.rows == 2 and cls.__name__ == "PackedTrainer"
    # sdpa on CPU: one example at a time, no mask; the 4-D mask elsewhere
    assert collator.mask is None and model.config._attn_implementation == "airo_packed_sdpa"

    with pytest.raises(ConfigError, match="--sample_packing and --group_by_length"):
        training_overrides(_config(*base, "--sample_packing", "true", "--group_by_length", "true"))


# -- several processes: every example once per epoch ----------------------------------------------

def test_balance_rows_makes_a_multiple_within_capacity():
    import random

    from airo.core.data.packing import balance_rows, plan_bins

    rng = random.Random(2)
    lengths = [rng.randint(1, 60) for _ in range(203)]
    bins = plan_bins(lengths, 100, seed=5)
    assert balance_rows(bins, lengths, 1) == bins
    for multiple in (3, 4, 6, 8, 16):
        out = balance_rows(bins, lengths, multiple)
        added = -len(bins) % multiple
        assert len(out) == len(bins) + added and len(out) % multiple == 0  # as few rows as possible
        assert sorted(i for b in out for i in b) == list(range(203))  # each example in exactly one row
        assert all(b and sum(lengths[i] for i in b) <= 100 for b in out)  # within capacity, none empty
        assert all(len(b) == 1 for b in out[len(bins):])  # new rows: one moved example each
        assert all(set(new) <= set(old) and new[0] == old[0] for new, old in zip(out, bins))
        assert balance_rows(bins, lengths, multiple) == out  # deterministic: a resume rebuilds the same rows
    assert any(len(bins) % m for m in (3, 4, 6, 8, 16))
    other = plan_bins(lengths, 100, seed=6)
    assert balance_rows(other, lengths, 16) == balance_rows(plan_bins(lengths, 100, seed=6), lengths, 16) != \
        balance_rows(bins, lengths, 16)
    # too few examples for a multiple: each gets its own row, none is copied
    assert sorted(balance_rows([[0, 1, 2]], [3, 3, 3], 4)) == [[0], [1], [2]]


def _faked_world(patch, world: int):
    """TrainingArguments as in a run of ``world`` processes (DDP, DeepSpeed: one per device)."""
    from transformers import TrainingArguments

    patch.setattr(TrainingArguments, "world_size", property(lambda self: world))


def _epochs_as_dealt(trainer, world: int, epochs: int) -> list[list[list[list[tuple]]]]:
    """[epoch][process] -> batches, each a list of rows, each the examples (token tuples) in it:
    the Trainer's own train dataloader prepared by accelerate as process 0..world-1 of
    ``world`` would prepare it (BatchSamplerShard, even_batches, the seeded shared shuffle)."""
    dealt = [[[] for _ in range(world)] for _ in range(epochs)]
    for process in range(world):
        loader = _recorded_loader_of(trainer, world, process)
        for epoch in range(epochs):
            loader.seen.clear()
            batches = sum(1 for _ in loader)
            assert batches == len(loader) == len(loader.seen)
            dealt[epoch][process] = list(loader.seen)
    return dealt


def _recorded_loader_of(trainer, world: int, process: int = 0):
    """The Trainer's train dataloader as process ``process`` of ``world`` gets it, its collator
    noting the examples of each row in ``.seen``."""
    from accelerate import Accelerator

    collator = trainer.data_collator
    seen: list = []

    def recording(features):
        rows = []
        for f in features:
            ends = [sum(f["seq_lens"][:k + 1]) for k in range(len(f["seq_lens"]))]
            rows.append([tuple(f["input_ids"][a:b]) for a, b in zip([0, *ends], ends)])
        seen.append(rows)
        return collator(features)

    trainer.data_collator = recording
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Accelerator, "num_processes", property(lambda self: world))
            patch.setattr(Accelerator, "process_index", property(lambda self: process))
            loader = trainer.get_train_dataloader()
    finally:
        trainer.data_collator = collator
    loader.seen = seen
    return loader


@pytest.mark.parametrize("world,batch,accumulation", [(2, 2, 1), (2, 2, 3), (2, 3, 1), (1, 2, 1)])
def test_packed_rows_dealt_to_processes_hold_every_example_once(tiny_model_dir, tiny_tokenizer, tmp_path, airo_env,
                                                                 monkeypatch, world, batch, accumulation):
    """Rows sharded exactly as accelerate shards them: each example is trained once per epoch,
    every process gets the same number of full batches, and the steps per epoch the run plans
    are the Trainer's own count. The plain plan, dealt the same way, repeats examples."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer

    from airo.core.data.packing import pack_dataset, plan_bins
    from airo.core.training.batches import training_data
    from airo.core.training.arguments import planned_steps, training_overrides

    examples = _examples([3 + (i * 7) % 31 for i in range(29)], seed=4)
    identities = sorted(tuple(e["input_ids"]) for e in examples)
    assert len(set(identities)) == len(examples)
    config = _config("--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "out", "--dataset",
                     CONVERSATIONS, "--eval_dataset_size", "0", "--sample_packing", "true", "--model_max_len", "40",
                     "--per_device_train_batch_size", batch, "--gradient_accumulation_steps", accumulation,
                     "--num_train_epochs", "2", "--report_to", "none")
    args = config.training_arguments(**training_overrides(config))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lengths = [len(e["input_ids"]) for e in examples]
    plain = len(plan_bins(lengths, 40, config.seed))
    _faked_world(monkeypatch, world)
    rows, collator, cls, stats = training_data(config, _dataset(examples), tiny_tokenizer, model, args, Trainer)
    trainer = cls(model=model, args=args, train_dataset=rows, data_collator=collator, processing_class=tiny_tokenizer)
    steps, per_epoch = planned_steps(len(rows), args)
    assert stats.steps_per_epoch == per_epoch and f"{per_epoch} steps" in stats.summary()
    if world == 1:  # one process: nothing to even out, no row wasted (a last partial batch is fine)
        assert len(rows) == plain and stats.split == 0
    else:
        assert plain % (world * batch), "the plain plan must need splitting for this test to mean anything"
        assert len(rows) % (world * batch) == 0 and stats.split == len(rows) - plain > 0
        assert f"{len(rows) // world} rows per process" in stats.summary()
    assert stats.repeated == stats.left_out == 0
    dealt = _epochs_as_dealt(trainer, world, 2)
    for per_process in dealt:
        assert len({len(b) for b in per_process}) == 1  # the same number of batches on every process
        assert {sum(map(len, b)) for b in per_process} == {stats.rows_per_process}
        if world > 1:
            assert all(len(rows_) == batch for b in per_process for rows_ in b)  # all full
        trained = sorted(ex for b in per_process for rows_ in b for row in rows_ for ex in row)
        assert trained == identities  # every example exactly once
    assert dealt[0] != dealt[1]  # each epoch reshuffles the rows
    # the Trainer's own step count from a process's prepared loader
    values = trainer.set_initial_training_values(args, _recorded_loader_of(trainer, world))
    assert (values[1], values[6]) == (per_epoch, steps)

    if world > 1:  # the plain plan dealt the same way: accelerate loops back to the first rows
        plain_rows, _ = pack_dataset(_dataset(examples), 40, config.seed, workdir=tmp_path)
        again = cls(model=model, args=args, train_dataset=plain_rows, data_collator=collator,
                    processing_class=tiny_tokenizer)
        first = _epochs_as_dealt(again, world, 1)[0]
        trained = [ex for b in first for rows_ in b for row in rows_ for ex in row]
        assert len(trained) > len(set(trained)) == len(identities)


def test_planned_steps_are_the_trainers_for_any_rows(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    """The steps the run summary announces are those the Trainer counts from the loader
    accelerate prepares, for any row count (packed rows not a multiple of the batch too),
    processes, batch, accumulation, --dataloader_drop_last, accelerate's split_batches and
    --max_steps; and the rows each process trains on per epoch."""
    import itertools

    import datasets
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from airo.core.training.arguments import planned_steps, rows_per_process

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", num_train_epochs=2.5,
                             remove_unused_columns=False)
    world = [1]
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: world[0]))
    trainer = Trainer(model=model, args=args, processing_class=tiny_tokenizer, data_collator=lambda f: f)
    for case in itertools.product((1, 7, 8, 13), (1, 2, 3), (1, 2, 4), (1, 3), (False, True), (False, True), (-1, 5)):
        n, world[0], batch, accumulation, drop, split, args.max_steps = case
        if split and batch % world[0]:
            continue  # accelerate refuses to split such a batch
        args.per_device_train_batch_size, args.gradient_accumulation_steps = batch, accumulation
        args.dataloader_drop_last, args.accelerator_config.split_batches = drop, split
        trainer._train_batch_size = args.train_batch_size  # read from the arguments when a Trainer is made
        trainer.train_dataset = datasets.Dataset.from_dict({"input_ids": [[i] for i in range(n)],
                                                            "seq_lens": [[1]] * n})
        with monkeypatch.context() as patch:
            patch.setattr(Accelerator, "split_batches", property(lambda self: split))
            loader = _recorded_loader_of(trainer, world[0])
        if not len(loader):
            continue  # drop_last left nothing: the Trainer refuses to train
        values = trainer.set_initial_training_values(args, loader)
        assert planned_steps(n, args) == (values[6], values[1]), case
        if accumulation == 1 and args.max_steps < 0:  # the rows a process trains on: once per shape
            assert sum(1 for _ in loader) and rows_per_process(n, args) == sum(map(len, loader.seen)), case


@pytest.mark.parametrize("drop_last", [False, True])
def test_too_few_examples_for_whole_batches_is_a_warning(tiny_model_dir, tiny_tokenizer, tmp_path, airo_env,
                                                         monkeypatch, capsys, drop_last):
    import torch
    from transformers import AutoModelForCausalLM, Trainer

    from airo.core.training.batches import training_data
    from airo.core.training.arguments import training_overrides

    config = _config("--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "out", "--dataset",
                     CONVERSATIONS, "--eval_dataset_size", "0", "--sample_packing", "true", "--model_max_len", "40",
                     "--per_device_train_batch_size", "2", "--dataloader_drop_last", str(drop_last).lower(),
                     "--report_to", "none")
    args = config.training_arguments(**training_overrides(config))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    _faked_world(monkeypatch, 2)
    rows, _, _, stats = training_data(config, _dataset(_examples([5, 6, 7])), tiny_tokenizer, model, args, Trainer)
    assert len(rows) == 3 and sorted(rows["seq_lens"]) == [[5], [6], [7]]  # one row each, none copied
    assert stats.rows_per_process == (0 if drop_last else 2)
    out = capsys.readouterr().out
    assert "warning: --sample_packing: 3 examples fill 3 rows at most, not a multiple of the 4 rows" in out
    if drop_last:
        assert (stats.left_out, stats.repeated) == (3, 0) and "leaves 3 row(s) out each epoch" in out
        assert "3 row(s) left out each epoch" in stats.summary()
    else:
        assert (stats.repeated, stats.left_out) == (1, 0) and "repeats 1 row(s) each epoch" in out
        assert "1 row(s) repeated each epoch" in stats.summary()


# -- airo train --sample_packing -----------------------------------------------------------------

def _train_flags(model, root: Path, *extra) -> list[str]:
    return ["--model_name_or_path", model, "--output_dir", root / "peft", "--dataset", CONVERSATIONS,
            "--dataset_format", "airoboros_chat", "--model_max_len", "128", "--num_train_epochs", "2",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--save_steps", "2",
            "--logging_steps", "1", "--learning_rate", "1e-3", "--lr_scheduler_type", "cosine",
            "--lora_r", "8", "--eval_dataset_size", "0", "--save_total_limit", "2", "--sample_packing", "true",
            "--train_on", "all_replies", *extra]


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_train_with_packing_prints_efficiency_and_truncates_on_request(tiny_model_dir, tmp_path, airo_env):
    import re

    # at 160 tokens 18 of the 60 conversations are too long: --skip_excess_length false keeps their start
    result = run_cli("train", *_train_flags(tiny_model_dir, tmp_path, "--max_steps", "2", "--model_max_len", "160",
                                            "--skip_excess_length", "false"))
    assert result.returncode == 0, result.stderr[-3000:]
    line = re.search(r"packing: +([\d,]+) examples in ([\d,]+) rows of 160 tokens \(([\d.]+)% filled\)",
                     result.stdout)
    assert line, result.stdout
    examples, rows = int(line[1].replace(",", "")), int(line[2].replace(",", ""))
    assert examples == 60 and rows < examples  # none dropped; several examples per row
    assert "too_long" not in result.stdout
    assert "num_input_tokens_seen" in result.stdout + result.stderr


@pytest.mark.slow
def test_packed_run_killed_resumes_at_the_same_rows(tiny_model_dir, tmp_path, airo_env):
    """SIGKILL after a checkpoint; the same command rebuilds the same rows and resumes: the
    adapter equals an uninterrupted run's, and the steps are the rows' count."""
    import math
    import re

    from safetensors.torch import load_file

    from airo.core.training import CHECKPOINT_MARKER, find_resume_checkpoint

    flags = ("--model_max_len", "200")
    ref = run_cli("train", *_train_flags(tiny_model_dir, tmp_path / "ref", *flags))
    assert ref.returncode == 0, ref.stderr[-3000:]
    rows = int(re.search(r"packing: +[\d,]+ examples in ([\d,]+) rows", ref.stdout)[1])
    total = json.loads((tmp_path / "ref" / "peft-checkpoints" / "completed").read_text())["global_step"]
    assert total == 2 * math.ceil(rows / 2)  # 2 epochs of batches of 2 rows
    assert f"steps:            {total} (2 epochs)" in ref.stdout

    root = tmp_path / "run"
    work = root / "peft-checkpoints"
    cmd = [sys.executable, "-m", "airo.core", "train", *map(str, _train_flags(tiny_model_dir, root, *flags))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if list(work.glob(f"checkpoint-*/{CHECKPOINT_MARKER}")):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    newest, _ = find_resume_checkpoint(work)
    killed_at = json.loads((newest / CHECKPOINT_MARKER).read_text())["global_step"]
    assert killed_at < total

    again = run_cli("train", *_train_flags(tiny_model_dir, root, *flags))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"(step {killed_at} of {total})" in again.stdout
    a = load_file(tmp_path / "ref" / "peft" / "adapter_model.safetensors")
    b = load_file(root / "peft" / "adapter_model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"resumed vs uninterrupted adapter: max |diff| = {worst:.3e}"

"""Sample packing: the bin plan, packed batches equal to separate runs, the collator, the
Trainer integration (token counting, --group_by_length) and ``airo train --sample_packing``."""

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

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_equals_separate_runs(tiny_model_dir, tmp_path, attn):
    """Logits and the summed token loss of packed rows equal those of each example run alone
    (fp32); without the mask, only restarting position_ids, they do not."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from airo.core.data.collator import PackingCollator
    from airo.core.data.packing import mask_style, pack_dataset

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn).eval()
    examples = _examples([17, 9, 30, 5, 12, 21, 3])
    packed, _ = pack_dataset(_dataset(examples), 40, seed=0, workdir=tmp_path)
    rows = list(packed)
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
    assert worst_unmasked > 1e-2  # restarting position_ids alone lets examples see each other
    assert packed_loss == pytest.approx(separate_loss, rel=1e-5)
    # the model's own loss (mean over trained tokens) matches too
    trained = sum(sum(1 for x in e["labels"][1:] if x != -100) for e in examples)
    with torch.no_grad():
        loss = model(**batch).loss.item()
    assert loss == pytest.approx(separate_loss / trained, rel=1e-5)


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

    from airo.core.data.packing import training_data
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
    assert len(rows) == stats.rows == 2 and cls.__name__ == "PackedTrainer" and collator.mask == "bool"

    with pytest.raises(ConfigError, match="--sample_packing and --group_by_length"):
        training_overrides(_config(*base, "--sample_packing", "true", "--group_by_length", "true"))


# -- airo train --sample_packing -----------------------------------------------------------------

def _train_flags(model, root: Path, *extra) -> list[str]:
    return ["--model_name_or_path", model, "--output_dir", root / "peft", "--dataset", CONVERSATIONS,
            "--dataset_format", "airoboros_chat", "--model_max_len", "128", "--num_train_epochs", "2",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--save_steps", "2",
            "--logging_steps", "1", "--learning_rate", "1e-3", "--lr_scheduler_type", "cosine",
            "--lora_r", "8", "--eval_dataset_size", "0", "--save_total_limit", "2", "--sample_packing", "true",
            "--train_on", "all_replies", *extra]


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

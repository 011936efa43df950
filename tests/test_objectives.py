"""Training objectives as plugins: the seam (register_objectives, --objective, sft as the
default), preference records and their formats, pairs tokenized exactly as SFT tokenizes
each reply, the losses against the papers' formulas, DPO's ln 2 at step 0 with every kind
of reference, and (slow) learning runs, a third-party objective installed for real and the
two-stage SFT -> DPO example."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, run_cli

PREFS = EXAMPLES / "data" / "preferences.jsonl"
TINY = EXAMPLES / "tiny-llama"
LN2 = math.log(2)


def _config(*argv, objective="dpo", fmt="preference", dataset=PREFS, out="out"):
    from airo.core.config import build_config

    return build_config(None, ["--dataset", str(dataset), "--dataset_format", fmt, "--objective", objective,
                               "--output_dir", str(out), *map(str, argv)])


def _write(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


# -- the seam -------------------------------------------------------------------------------------

def test_objectives_are_registered(airo_env):
    from airo.core.plugins import get_registry

    registry = get_registry()
    assert {"sft", "dpo", "ipo", "simpo", "orpo", "kto"} <= set(registry.objectives)
    assert registry.objectives["sft"].record_kind == "conversation"
    assert registry.objectives["kto"].record_kind == "unpaired"
    assert registry.formats["preference"].record_kind == "preference"
    assert registry.formats["airoboros"].record_kind == "conversation"
    from airo.core.config import build_config

    assert build_config(None, ["--dataset", "x.jsonl", "--output_dir", "o"]).run.objective == "sft"


def test_a_misspelt_objective_is_refused_with_a_suggestion(airo_env):
    from airo.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"(?s)--objective.*dpp.*Did you mean 'dpo'"):
        _config(objective="dpp")


@pytest.mark.parametrize("objective, fmt, says", [
    ("sft", "preference", "--objective sft trains on conversations, but --dataset_format preference gives "
                          "preference pairs"),
    ("dpo", "airoboros", "--objective dpo trains on preference pairs, but --dataset_format airoboros gives "
                         "conversations"),
    ("kto", "preference", "--objective kto trains on labelled single replies"),
])
def test_objective_and_format_must_agree(airo_env, objective, fmt, says):
    from airo.core.errors import ConfigError
    from airo.core.objectives import select_objective

    with pytest.raises(ConfigError, match="Formats for") as err:
        select_objective(_config(objective=objective, fmt=fmt))
    assert says in str(err.value)


def test_a_registered_objective_needs_its_methods(airo_env):
    from airo.core import hookimpl
    from airo.core.testing import registered_plugin

    class Broken:
        @hookimpl
        def register_objectives(self, register):
            register("broken", object(), record_kind="preference")

    class BadKind:
        @hookimpl
        def register_objectives(self, register):
            from airo.plugins.objectives import SupervisedObjective

            register("odd", SupervisedObjective(), record_kind="pairs")

    for plugin, problem in ((Broken(), "must have a prepare() method"), (BadKind(), "record_kind must be one of")):
        name = type(plugin).__name__
        with pytest.warns(Warning, match=re.escape(problem)), registered_plugin(plugin, name=name) as registry:
            assert problem in registry.plugins[name].error and not set(registry.objectives) & {"broken", "odd"}


def test_sft_is_the_conversation_pipeline_unchanged(airo_env, tiny_tokenizer, tmp_path):
    """The sft objective's data and batching are prepare_datasets' and training.batches.training_data's."""
    from airo.core import objectives
    from airo.core.config import build_config
    from airo.core.data.pipeline import prepare_datasets

    config = build_config(None, ["--dataset", str(EXAMPLES / "data" / "conversations.json"), "--dataset_format",
                                 "airoboros_chat", "--output_dir", str(tmp_path / "o"), "--model_max_len", "384"])
    ours = objectives.prepare(config, tiny_tokenizer)
    theirs = prepare_datasets(config, tiny_tokenizer)
    assert ours.train["input_ids"] == theirs.train["input_ids"] and ours.train["labels"] == theirs.train["labels"]
    assert ours.template_name == "llama-2"


# -- formats --------------------------------------------------------------------------------------

def test_preference_format_conventions():
    from airo.core import Message
    from airo.plugins.preference_formats import preference

    plain = preference({"prompt": "2+2?", "chosen": "4", "rejected": "5", "system": "Be brief."})
    assert plain.prefix == [Message("system", "Be brief."), Message("user", "2+2?")]
    assert (plain.chosen, plain.rejected) == ("4", "5")
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "2+2?"}]
    multi = preference({"prompt": turns, "chosen": [{"role": "assistant", "content": "4"}], "rejected": "5"})
    assert [m.role for m in multi.prefix] == ["user", "assistant", "user"] and multi.chosen == "4"
    # the whole conversation repeated in chosen/rejected (UltraFeedback-style), with or without prompt
    whole = {"chosen": turns + [{"role": "assistant", "content": "4"}],
             "rejected": turns + [{"role": "assistant", "content": "5"}]}
    assert preference(whole).prefix == multi.prefix
    assert preference({**whole, "prompt": turns}).rejected == "5"


def test_hh_transcripts_share_their_prefix():
    from airo.plugins.preference_formats import hh_rlhf

    pair = hh_rlhf({"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 4",
                    "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: five"})
    assert [(m.role, m.content) for m in pair.prefix] == [("user", "hi"), ("assistant", "hello"), ("user", "2+2?")]
    assert (pair.chosen, pair.rejected) == ("4", "five")


def test_kto_labels():
    from airo.plugins.preference_formats import kto

    assert kto({"prompt": "2+2?", "completion": "4", "label": True}).desirable is True
    assert kto({"prompt": "2+2?", "completion": "5", "label": "false"}).desirable is False


@pytest.mark.parametrize("fmt, record, problem", [
    ("preference", {"chosen": "a", "rejected": "b"}, "missing required field 'prompt'"),
    ("preference", {"prompt": "q", "chosen": "a"}, "missing required field 'rejected'"),
    ("preference", {"prompt": 3, "chosen": "a", "rejected": "b"}, "'prompt' must be a string or a list"),
    ("preference", {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    "chosen": "a", "rejected": "b"}, "must end with a user message"),
    ("preference", {"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}, "unknown role"),
    ("preference", {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
     "differ before their last reply"),
    ("hh-rlhf-pairs", {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"},
     "differ before their last reply"),
    ("hh-rlhf-pairs", {"chosen": "Assistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "no '\\\\n\\\\nHuman"),
    ("hh-rlhf-pairs", {"chosen": "\n\nHuman: q", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "must end with"),
    ("kto", {"prompt": "q", "completion": "a", "label": "maybe"}, "'label' must be true or false"),
    ("kto", {"prompt": "q", "completion": "a"}, "missing required field 'label'"),
])
def test_bad_records_fail_with_file_and_line(airo_env, tiny_tokenizer, tmp_path, fmt, record, problem):
    from airo.core.errors import DataError
    from airo.core.preference import prepare_preferences

    good = {"kto": {"prompt": "q", "completion": "a", "label": True}}.get(fmt, {"prompt": "q", "chosen": "a",
                                                                               "rejected": "b"})
    if fmt == "hh-rlhf-pairs":
        good = {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}
    data = _write(tmp_path / "prefs.jsonl", [good, good, record])
    config = _config(objective="kto" if fmt == "kto" else "dpo", fmt=fmt, dataset=data)
    with pytest.raises(DataError, match=problem) as err:
        prepare_preferences(config, tiny_tokenizer, record_kind="unpaired" if fmt == "kto" else "preference")
    assert "prefs.jsonl, line 3" in str(err.value)
    skip = _config("--on_bad_record", "skip", objective="kto" if fmt == "kto" else "dpo", fmt=fmt, dataset=data)
    prepared = prepare_preferences(skip, tiny_tokenizer, record_kind="unpaired" if fmt == "kto" else "preference",
                                   rejects_dir=str(tmp_path / "rejects"))
    assert len(prepared.train) + (len(prepared.eval) if prepared.eval is not None else 0) == 2
    assert sum(prepared.report.dropped.values()) == 1
    assert (tmp_path / "rejects" / "rejects.jsonl").is_file()


def test_identical_and_empty_replies_are_skipped_with_the_reason(airo_env, tiny_tokenizer, tmp_path):
    from airo.core.preference import prepare_preferences

    data = _write(tmp_path / "prefs.jsonl", [
        {"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "  ", "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": ""}])
    prepared = prepare_preferences(_config("--eval_dataset_size", 0, dataset=data), tiny_tokenizer,
                                   rejects_dir=str(tmp_path))
    assert len(prepared.train) == 1
    assert dict(prepared.report.dropped) == {"identical_replies": 1, "empty_reply": 2}
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"].endswith(f"line {n}") for r, n in zip(rejects, (2, 3, 4))] == [True] * 3
    assert "dropped: empty_reply 2, identical_replies 1" in "\n".join(prepared.report.summary_lines())


def test_the_chat_template_check_reads_preference_prompts(airo_env, tmp_path):
    """The save action checks the chat template against the training prompts: for preference
    data, each pair's prefix (with its chosen reply); bad records are left out."""
    from airo.core.chat_parity import sample_conversations
    from airo.core.preference import preference_plan

    data = _write(tmp_path / "prefs.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}, {"prompt": 3},
                                             {"prompt": "hi", "chosen": "hello", "rejected": "go away"}])
    config = _config("--prompt_template", "llama-2", dataset=data)
    conversations, why = sample_conversations(config, preference_plan(config))
    assert why is None and [c.messages[-1].content for c, _ in conversations] == ["4", "hello"]
    assert [loc.endswith(f"line {n}") for (_, loc), n in zip(conversations, (1, 3))] == [True, True]


def test_preprocess_refuses_preference_data(airo_env, tmp_path):
    from airo.core import api
    from airo.core.errors import ConfigError

    with pytest.raises(ConfigError, match="airo preprocess prepares conversations; --objective dpo"):
        api.preprocess(_config("--model_name_or_path", TINY), str(tmp_path / "pre"))


# -- tokenization ---------------------------------------------------------------------------------

def test_preview_shows_each_reply_with_its_scored_tokens(airo_env):
    from airo.core import api
    from airo.core.data.preview import plain_text

    examples = api.preview(_config("--model_name_or_path", TINY, "--prompt_template", "llama-2"), 2)
    assert [e["index"] for e in examples] == ["0 chosen", "0 rejected", "1 chosen", "1 rejected"]
    assert plain_text(examples[0]).endswith("[/INST][[ The capital of France is Paris.</s>]]")
    assert plain_text(examples[1]).endswith("[/INST][[ France does not have a capital.</s>]]")
    assert plain_text(examples[0]).count("[[") == 1  # the prompt is never scored



@pytest.mark.parametrize("template", ["airoboros", "llama-2", "chatml", "vicuna"])
def test_pairs_are_the_tokens_sft_trains_on(airo_env, tiny_tokenizer, tmp_path, template):
    """prompt + chosen (and prompt + rejected) is, token for token and label for label, the
    example SFT makes of that conversation, for the reference templates (airoboros legacy,
    llama-2 chat) and the whole-text ones."""
    from airo.core.config import build_config
    from airo.core.data.pipeline import tokenize_conversation
    from airo.core.data.plan import resolve_plan
    from airo.core.preference import prepare_preferences
    from airo.plugins.preference_formats import preference

    prepared = prepare_preferences(_config("--prompt_template", template, "--eval_dataset_size", 0), tiny_tokenizer)
    sft = build_config(None, ["--dataset", "x.jsonl", "--dataset_format", "messages", "--prompt_template", template,
                              "--train_on", "last_reply", "--output_dir", str(tmp_path / "o")])
    plan = resolve_plan(sft)
    records = [json.loads(line) for line in PREFS.read_text().splitlines()]
    assert len(prepared.train) == len(records) and prepared.report.tokenization == plan.tokenization
    for record, example in zip(records, prepared.train):
        pair = preference(record)
        for side in ("chosen", "rejected"):
            expected = tokenize_conversation(tiny_tokenizer, plan, pair.conversation(side), sft)
            assert example["prompt_input_ids"] + example[f"{side}_input_ids"] == expected.input_ids
            assert [-100] * len(example["prompt_input_ids"]) + example[f"{side}_labels"] == expected.labels
        assert example["chosen_labels"][0] != -100 or example["rejected_labels"][0] != -100  # split at the reply


def test_too_long_pairs_are_counted(airo_env, tiny_tokenizer, tmp_path):
    from airo.core.preference import prepare_preferences

    data = _write(tmp_path / "prefs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                             {"prompt": "q", "chosen": "a", "rejected": "word " * 200}])
    prepared = prepare_preferences(_config("--model_max_len", 64, "--eval_dataset_size", 0, dataset=data),
                                   tiny_tokenizer)
    assert len(prepared.train) == 1 and prepared.report.dropped["too_long"] == 1


def test_unpaired_examples(airo_env, tiny_tokenizer, tmp_path):
    from airo.core.preference import prepare_preferences

    data = _write(tmp_path / "kto.jsonl", [{"prompt": "2+2?", "completion": "4", "label": True},
                                           {"prompt": "2+2?", "completion": "5", "label": False}])
    prepared = prepare_preferences(_config("--eval_dataset_size", 0, objective="kto", fmt="kto", dataset=data),
                                   tiny_tokenizer, record_kind="unpaired")
    assert prepared.train["desirable"] == [True, False]
    # the reply starts where the scored tokens start (chatml's newline after <|im_end|> is not scored, as in SFT)
    assert all(labels[0] != -100 for labels in prepared.train["completion_labels"])


def test_collator_batches_pairs_and_kl_rows():
    from airo.core.training.preference_trainer import PreferenceCollator

    collate = PreferenceCollator(0)
    batch = collate([{"prompt_input_ids": [1, 5], "chosen_input_ids": [6, 2], "chosen_labels": [6, 2],
                      "rejected_input_ids": [7, 8, 2], "rejected_labels": [7, 8, 2]}])
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 0], [1, 5, 7, 8, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 2, -100], [-100, -100, 7, 8, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    kto = collate([{"prompt_input_ids": [1], "completion_input_ids": [4], "completion_labels": [4], "desirable": True},
                   {"prompt_input_ids": [3], "completion_input_ids": [5, 6], "completion_labels": [5, 6],
                    "desirable": False}])
    assert kto["input_ids"].tolist() == [[1, 4, 0], [3, 5, 6], [1, 5, 6], [3, 4, 0]]  # then each prompt, next reply
    assert kto["desirable"].tolist() == [True, False]


# -- the losses, from the papers ------------------------------------------------------------------

def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


POLICY_W, POLICY_L = [-12.0, -30.5, -7.25, -50.0], [-14.0, -29.0, -9.0, -41.0]
REF_W, REF_L = [-12.5, -31.0, -7.0, -48.0], [-13.0, -30.0, -8.5, -44.0]
LEN_W, LEN_L = [4, 10, 3, 25], [5, 9, 4, 20]


def _t(values):
    import torch

    return torch.tensor(values, dtype=torch.float64)


def _h(i):
    return (POLICY_W[i] - REF_W[i]) - (POLICY_L[i] - REF_L[i])


@pytest.mark.parametrize("eps, robust", [(0.0, False), (0.2, False), (0.2, True)])
def test_dpo_matches_the_paper(eps, robust):
    from airo.plugins.preference import dpo_loss

    beta = 0.3
    got = dpo_loss(_t(POLICY_W), _t(POLICY_L), _t(REF_W), _t(REF_L), beta, eps, robust).tolist()
    for i, value in enumerate(got):
        p = _sigmoid(beta * _h(i))  # the model's probability that y_w is preferred (Bradley-Terry)
        if robust:  # Chowdhury et al. 2024, eq. 5: unbiased under flip rate eps
            expected = ((1 - eps) * -math.log(p) - eps * -math.log(1 - p)) / (1 - 2 * eps)
        else:  # Rafailov et al. 2023 eq. 7; cDPO: the labels flipped with probability eps
            expected = -(1 - eps) * math.log(p) - eps * math.log(1 - p)
        assert value == pytest.approx(expected, rel=1e-9)


def test_ipo_matches_the_paper():
    from airo.plugins.preference import ipo_loss

    tau = 0.25
    got = ipo_loss(_t(POLICY_W), _t(POLICY_L), _t(REF_W), _t(REF_L), tau).tolist()
    assert got == pytest.approx([(_h(i) - 1 / (2 * tau)) ** 2 for i in range(4)], rel=1e-9)  # Azar et al., eq. 17


def test_simpo_matches_the_paper():
    from airo.plugins.preference import simpo_loss

    beta, gamma = 2.0, 0.8
    got = simpo_loss(_t(POLICY_W), _t(POLICY_L), _t(LEN_W), _t(LEN_L), beta, gamma).tolist()
    expected = [-math.log(_sigmoid(beta / LEN_W[i] * POLICY_W[i] - beta / LEN_L[i] * POLICY_L[i] - gamma))
                for i in range(4)]  # Meng et al. 2024, eq. 6
    assert got == pytest.approx(expected, rel=1e-9)


def test_orpo_matches_the_paper():
    from airo.plugins.preference import orpo_loss

    lam = 0.5
    got, _, _ = orpo_loss(_t(POLICY_W), _t(POLICY_L), _t(LEN_W), _t(LEN_L), lam)
    for i, value in enumerate(got.tolist()):
        p_w, p_l = math.exp(POLICY_W[i] / LEN_W[i]), math.exp(POLICY_L[i] / LEN_L[i])  # Hong et al., eq. 4
        odds = (p_w / (1 - p_w)) / (p_l / (1 - p_l))
        expected = -POLICY_W[i] / LEN_W[i] + lam * -math.log(_sigmoid(math.log(odds)))  # eq. 6-7
        assert value == pytest.approx(expected, rel=1e-9)


def test_kto_matches_the_paper():
    import torch

    from airo.plugins.preference import kl_estimate, kto_loss

    beta, w_d, w_u = 0.1, 1.0, 1.5
    logps, ref = POLICY_W, REF_W
    desirable = [True, False, True, False]
    kl_policy, kl_ref = [-20.0, -25.0, -9.0, -40.0], [-21.0, -25.5, -9.5, -41.0]
    z0 = max(0.0, sum(a - b for a, b in zip(kl_policy, kl_ref)) / 4)  # Ethayarajh et al. 2024, eq. 8
    assert kl_estimate(_t(kl_policy), _t(kl_ref)).item() == pytest.approx(z0)
    got = kto_loss(_t(logps), _t(ref), torch.tensor(desirable), z0, beta, w_d, w_u).tolist()
    for i, value in enumerate(got):
        r = logps[i] - ref[i]
        v = w_d * _sigmoid(beta * (r - z0)) if desirable[i] else w_u * _sigmoid(beta * (z0 - r))
        assert value == pytest.approx((w_d if desirable[i] else w_u) - v, rel=1e-9)
    assert kl_estimate(_t([-5.0]), _t([-1.0])).item() == 0.0  # clamped at 0


def test_sequence_logps():
    import torch

    from airo.core.training.preference_trainer import sequence_logps

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, 3, 4, -100, -100], [-100, -100, 1, 2, 10]])
    total, count = sequence_logps(logits, labels)
    logp = logits.log_softmax(-1)
    expected = [logp[0, 0, 3] + logp[0, 1, 4], logp[1, 1, 1] + logp[1, 2, 2] + logp[1, 3, 10]]
    assert total.tolist() == pytest.approx([float(e) for e in expected], rel=1e-5)
    assert count.tolist() == [2, 3]


# -- ln 2 at step 0 -------------------------------------------------------------------------------

def _lora(model_dir, seed=0):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def _trainer(tmp_path, config, model, tokenizer, objective_name="dpo"):
    from transformers import Trainer, TrainingArguments

    from airo.core.plugins import get_registry
    from airo.core.preference import prepare_preferences

    objective = get_registry().objectives[objective_name].objective
    prepared = prepare_preferences(config, tokenizer, record_kind=objective.record_kind)
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=4, report_to="none",
                             remove_unused_columns=False, use_cpu=True)
    train, collator, cls, _ = objective.training_data(config, prepared.train, tokenizer, model, args, Trainer)
    return cls(model=model, args=args, train_dataset=train, data_collator=collator, processing_class=tokenizer)


def _losses(trainer):
    import torch

    out = []
    for batch in trainer.get_train_dataloader():
        with torch.no_grad():
            loss, metrics = trainer._preference_loss(trainer.model, trainer._prepare_inputs(batch))
        out.append((loss.item(), metrics))
    return out


def test_dpo_is_ln2_at_step_0_with_the_adapter_disabled(airo_env, tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = _trainer(tmp_path, _config("--eval_dataset_size", 0), _lora(tiny_model_dir), tiny_tokenizer)
    assert trainer.preference_reference.kind == "adapter_off"
    losses = _losses(trainer)
    assert len(losses) == 7  # 28 pairs, 4 a batch: every batch
    for loss, metrics in losses:
        assert loss == pytest.approx(LN2, abs=1e-6)
        assert metrics["rewards/margins"].abs().max().item() < 1e-6


def test_dpo_is_ln2_at_step_0_from_an_init_adapter(airo_env, tiny_model_dir, tiny_tokenizer, tmp_path):
    """--init_adapter: the policy starts as the SFT adapter (not the base) and the reference
    is that adapter, frozen: ln 2 again, with log-probs that are not the base's."""
    import torch

    sft = _lora(tiny_model_dir)
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    sft.save_pretrained(tmp_path / "sft-adapter")
    config = _config("--eval_dataset_size", 0, "--init_adapter", tmp_path / "sft-adapter")
    policy = _lora(tiny_model_dir, seed=1)
    trainer = _trainer(tmp_path, config, policy, tiny_tokenizer)
    assert trainer.preference_reference.kind == "weights"
    saved = dict(sft.named_parameters())
    for name, p in policy.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, saved[name]), name
    losses = _losses(trainer)
    for loss, _ in losses:
        assert loss == pytest.approx(LN2, abs=1e-6)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    from airo.core.training.preference_trainer import _logps

    with torch.no_grad():
        adapted = _logps(policy, batch)[0]
        with policy.disable_adapter():
            base = _logps(policy, batch)[0]
    assert (adapted - base).abs().max().item() > 1e-3


def test_init_adapter_of_another_shape_is_refused(airo_env, tiny_model_dir, tiny_tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from airo.core.errors import ConfigError

    other = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    other.save_pretrained(tmp_path / "r2")
    config = _config("--eval_dataset_size", 0, "--init_adapter", tmp_path / "r2")
    with pytest.raises(ConfigError, match=r"was trained with r 2 \(this run: 4\)"):
        _trainer(tmp_path, config, _lora(tiny_model_dir), tiny_tokenizer)


def test_init_adapter_is_checked_with_the_config(airo_env, tmp_path):
    from airo.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no adapter_config.json there"):
        _config("--init_adapter", tmp_path)
    with pytest.raises(ConfigError, match="--init_adapter applies to the preference objectives"):
        _config("--init_adapter", tmp_path, objective="sft", fmt="airoboros")


def test_length_grouping_and_packing_replies_are_refused(airo_env):
    from airo.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--group_by_length does not apply to --objective dpo"):
        _config("--group_by_length", "true")
    with pytest.raises(ConfigError, match="--sample_packing does not apply to --objective kto"):
        _config("--sample_packing", "true", objective="kto", fmt="kto")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_pairs_give_the_unpacked_loss(airo_env, tiny_model_dir, tiny_tokenizer, tmp_path, attention):
    """--sample_packing: the same pairs packed into rows (several pairs a row, each sequence
    isolated: per-sequence sdpa on CPU, the 4-D mask for eager) give the padded batch's
    log-probabilities and DPO loss, for a policy away from its reference."""
    import torch

    from airo.core.training.preference_packing import PackedPairCollator, pack_pairs

    def policy():
        model = _lora(tiny_model_dir)
        model.config._attn_implementation = attention
        torch.manual_seed(5)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
        return model

    padded = _trainer(tmp_path / "padded", _config("--eval_dataset_size", 0), policy(), tiny_tokenizer)
    pairs = padded.train_dataset.select(range(8))
    with torch.no_grad():
        loss, metrics = padded._preference_loss(padded.model, padded._prepare_inputs(padded.data_collator(list(pairs))))
    packed = _trainer(tmp_path / "packed", _config("--eval_dataset_size", 0, "--sample_packing", "true",
                                                   "--model_max_len", 256), policy(), tiny_tokenizer)
    assert isinstance(packed.data_collator, PackedPairCollator)
    rows, stats = pack_pairs(pairs, 256, seed=0)
    assert stats.rows < 8 and max(len(s) for s in rows["seq_lens"]) >= 4  # several pairs share a row
    batch = packed._prepare_inputs(packed.data_collator(list(rows)))
    with torch.no_grad():
        packed_loss, packed_metrics = packed._preference_loss(packed.model, batch)
    # the packed rows hold the pairs in another order: compare the sets of per-pair values
    for name in ("logps/chosen", "logps/rejected", "rewards/margins"):
        assert sorted(packed_metrics[name].tolist()) == pytest.approx(sorted(metrics[name].tolist()), abs=1e-4)
    assert packed_loss.item() == pytest.approx(loss.item(), abs=1e-5)
    assert abs(loss.item() - LN2) > 1e-3


def test_dpo_is_ln2_at_step_0_with_a_frozen_copy(airo_env, tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = _trainer(tmp_path, _config("--eval_dataset_size", 0), model, tiny_tokenizer)
    assert trainer.preference_reference.kind == "copy"
    assert trainer.preference_reference.model is not model
    assert not any(p.requires_grad for p in trainer.preference_reference.model.parameters())
    for loss, _ in _losses(trainer):
        assert loss == pytest.approx(LN2, abs=1e-6)


def test_precomputed_reference_log_probs_replace_the_frozen_copy(airo_env, tiny_model_dir, tiny_tokenizer, tmp_path):
    """--precompute_ref_log_probs (full fine-tune): no copy is kept, the pairs carry the
    model's log-probs as loaded, and the loss is the frozen copy's, at step 0 (ln 2) and
    for a policy moved away from the start."""
    import torch
    from transformers import AutoModelForCausalLM

    from airo.core.errors import ConfigError

    config = _config("--eval_dataset_size", 4, "--precompute_ref_log_probs", "true")
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = _trainer(tmp_path / "pre", config, policy, tiny_tokenizer)
    assert trainer.preference_reference.kind == "precomputed" and trainer.preference_reference.model is None
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
    for loss, _ in _losses(trainer):
        assert loss == pytest.approx(LN2, abs=1e-6)
    copy = _trainer(tmp_path / "copy", _config("--eval_dataset_size", 4), AutoModelForCausalLM.from_pretrained(
        tiny_model_dir), tiny_tokenizer)
    torch.manual_seed(1)
    with torch.no_grad():
        for a, b in zip(policy.parameters(), copy.model.parameters()):
            noise = torch.randn_like(a) * 0.02
            a.add_(noise)
            b.add_(noise)
    moved = [loss for loss, _ in _losses(trainer)]
    assert moved == pytest.approx([loss for loss, _ in _losses(copy)], abs=1e-6)
    assert any(abs(loss - LN2) > 1e-3 for loss in moved)
    with pytest.raises(ConfigError, match="--precompute_ref_log_probs is for full fine-tunes"):
        _trainer(tmp_path / "lora", config, _lora(tiny_model_dir), tiny_tokenizer)


def test_reference_free_and_unpaired_objectives_run(airo_env, tiny_model_dir, tiny_tokenizer, tmp_path):
    """SimPO and ORPO need no reference; KTO's loss at step 0 (policy = reference, z0 = 0) is
    w (1 - σ(0)) = w / 2 for every reply."""
    for name in ("simpo", "orpo"):
        trainer = _trainer(tmp_path, _config("--eval_dataset_size", 0, objective=name), _lora(tiny_model_dir),
                           tiny_tokenizer, name)
        assert trainer.preference_reference is None
        assert all(math.isfinite(loss) and loss > 0 for loss, _ in _losses(trainer))
    data = _write(tmp_path / "kto.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0}
                                           for i in range(8)])
    config = _config("--eval_dataset_size", 0, "--desirable_weight", 1.0, "--undesirable_weight", 3.0,
                     objective="kto", fmt="kto", dataset=data)
    trainer = _trainer(tmp_path, config, _lora(tiny_model_dir), tiny_tokenizer, "kto")
    for loss, metrics in _losses(trainer):
        assert loss == pytest.approx((0.5 * 2 + 1.5 * 2) / 4, abs=1e-6)
        assert metrics["kl"].item() == pytest.approx(0.0, abs=1e-6)


# -- a third-party objective, installed for real --------------------------------------------------

TOY = '''
from airo.core import PreferenceObjective, hookimpl


class Hinge(PreferenceObjective):
    metrics = ("rewards/margins", "rewards/accuracies")

    def loss(self, batch, config):
        h = (batch.chosen_logps - batch.ref_chosen_logps) - (batch.rejected_logps - batch.ref_rejected_logps)
        return (1.0 - 0.1 * h).clamp(min=0).mean(), {"rewards/margins": 0.1 * h.detach(),
                                                      "rewards/accuracies": (h > 0).float()}


@hookimpl
def register_objectives(register):
    register("toy-hinge", Hinge(), record_kind="preference", description="a toy hinge objective")
'''


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy-objective")
    (root / "airo_toy_objective").mkdir()
    (root / "airo_toy_objective" / "__init__.py").write_text(TOY)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "airo-toy-objective"\nversion = "0.1.0"\n\n'
        '[project.entry-points.airo]\ntoy_objective = "airo_toy_objective"\n')
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(root)],
                   check=True, capture_output=True, timeout=300)
    return site


def _with_site(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
            "AIRO_STRICT_PLUGINS": "1"}


def test_a_third_party_objective_installed_for_real(toy_site):
    result = run_cli("list", "objectives", env=_with_site(toy_site))
    assert result.returncode == 0, result.stderr
    assert "toy-hinge" in result.stdout and "a toy hinge objective" in result.stdout
    plugins = run_cli("plugins", env=_with_site(toy_site))
    assert "airo-toy-objective" in plugins.stdout and "objectives: toy-hinge" in plugins.stdout


# -- end to end (slow) ----------------------------------------------------------------------------

def _metrics(working_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (working_dir / "metrics.jsonl").read_text().splitlines()]


def _train(tmp_path, name, *argv, env=None):
    out = tmp_path / name
    result = run_cli("train", "--model_name_or_path", TINY, "--output_dir", out,
                     "--working_dir", tmp_path / f"{name}-w",
                     "--bits", 16, "--lora_r", 8, "--lora_alpha", 16,
                     *([] if "--save_strategy" in argv else ["--save_strategy", "no"]),
                     "--per_device_train_batch_size", 4, "--gradient_accumulation_steps", 1, "--logging_steps", 1,
                     "--report_to", "none", *argv, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, tmp_path / f"{name}-w", result


@pytest.mark.slow
def test_third_party_objective_trains(toy_site, tmp_path):
    _, working, _ = _train(tmp_path, "toy", "--dataset", PREFS, "--dataset_format", "preference", "--objective",
                           "toy-hinge", "--max_steps", 2, "--eval_dataset_size", 0, env=_with_site(toy_site))
    rows = [r for r in _metrics(working) if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(1.0, abs=1e-4)  # h = 0 at step 0: hinge 1 - 0
    assert "rewards/margins" in rows[0]


def _synthetic_pairs(path: Path, n: int, offset: int = 0) -> Path:
    words = ["apple", "river", "stone", "cloud", "tiger", "lamp", "seed", "road", "bell", "moss", "wolf", "dune"]
    records = []
    for i in range(offset, offset + n):
        topic = f"{words[i % len(words)]} {words[(i * 5 + 3) % len(words)]} {i}"
        records.append({"id": f"s{i}", "prompt": f"Tell me about {topic}.", "chosen": f"Yes: {topic} is good.",
                        "rejected": f"No no no {topic} bad bad."})
    return _write(path, records)


@pytest.mark.slow
def test_dpo_learns_on_held_out_pairs(tmp_path):
    """The margin and the accuracy rise on pairs the run never trains on."""
    train = _synthetic_pairs(tmp_path / "train.jsonl", 48)
    _synthetic_pairs(tmp_path / "held-out.jsonl", 12, offset=100)
    data = tmp_path / "all.jsonl"
    data.write_text(train.read_text() + (tmp_path / "held-out.jsonl").read_text())
    _, working, _ = _train(tmp_path, "learn", "--dataset", data, "--dataset_format", "preference", "--objective",
                           "dpo", "--beta", 0.5, "--eval_dataset_size", 12, "--max_steps", 24, "--learning_rate",
                           0.005, "--eval_strategy", "steps", "--eval_steps", 12, "--eval_on_start", "true",
                           "--model_max_len", 128)
    evals = [r for r in _metrics(working) if "eval_rewards/margins" in r]
    assert len(evals) >= 3 and evals[0]["step"] == 0
    first, last = evals[0], evals[-1]
    print(f"held-out pairs: margin {first['eval_rewards/margins']:.4f} -> {last['eval_rewards/margins']:.4f}, "
          f"accuracy {first['eval_rewards/accuracies']:.2f} -> {last['eval_rewards/accuracies']:.2f}, "
          f"loss {first['eval_loss']:.4f} -> {last['eval_loss']:.4f}")
    assert abs(first["eval_rewards/margins"]) < 1e-5 and first["eval_loss"] == pytest.approx(LN2, abs=1e-4)
    assert last["eval_rewards/margins"] > first["eval_rewards/margins"] + 0.1
    assert last["eval_rewards/accuracies"] >= 0.9 > first["eval_rewards/accuracies"]
    assert last["eval_loss"] < LN2 - 0.05


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ipo", "simpo", "orpo", "kto"])
def test_each_objective_trains_and_logs(tmp_path, objective):
    if objective == "kto":
        records = [json.loads(line) for line in PREFS.read_text().splitlines()]
        data = _write(tmp_path / "kto.jsonl", [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                                               for r in records for side in ("chosen", "rejected")])
        fmt = "kto"
    else:
        data, fmt = PREFS, "preference"
    _, working, result = _train(tmp_path, objective, "--dataset", data, "--dataset_format", fmt, "--objective",
                                objective, "--max_steps", 3, "--eval_dataset_size", 4, "--eval_strategy", "steps",
                                "--eval_steps", 3)
    rows = _metrics(working)
    logged = [r for r in rows if "loss" in r]
    assert len(logged) == 3 and all(math.isfinite(r["loss"]) for r in logged)
    assert "rewards/chosen" in logged[0] and any("eval_rewards/chosen" in r for r in rows)
    if objective in ("simpo", "orpo"):
        assert "reference model" not in result.stdout + result.stderr


@pytest.mark.slow
def test_dpo_resumes_exactly(tmp_path):
    """A DPO run resumed from its step-2 checkpoint ends with the weights of the run that was
    never interrupted (the reference, the data order and the optimizer all come back)."""
    import shutil

    from safetensors.torch import load_file

    common = ["--dataset", PREFS, "--dataset_format", "preference", "--objective", "dpo", "--max_steps", 4,
              "--eval_dataset_size", 0, "--learning_rate", 0.002, "--seed", 7]
    whole, _, _ = _train(tmp_path, "whole", *common)
    out, working, _ = _train(tmp_path, "cut", *common, "--save_strategy", "steps", "--save_steps", 2)
    shutil.rmtree(working / "checkpoint-4")
    (working / "completed").unlink()
    _, _, resumed = _train(tmp_path, "cut", *common, "--save_strategy", "steps", "--save_steps", 2)
    assert "resuming from" in resumed.stdout + resumed.stderr
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (whole, out))
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)


def torch_equal(x, y) -> bool:
    import torch

    return torch.equal(x, y)


@pytest.mark.slow
def test_dpo_trains_packed(tmp_path):
    _, working, result = _train(tmp_path, "packed", "--dataset", PREFS, "--dataset_format", "preference",
                                "--objective", "dpo", "--sample_packing", "true", "--model_max_len", 256,
                                "--max_steps", 2, "--eval_dataset_size", 4, "--eval_strategy", "steps",
                                "--eval_steps", 2, "--per_device_eval_batch_size", 2)
    assert "packing:" in result.stdout and "rows of 512 tokens" in result.stdout
    logged = [r for r in _metrics(working) if "loss" in r]
    assert logged[0]["loss"] == pytest.approx(LN2, abs=1e-4)  # step 0: policy = reference, in packed rows too
    assert any("eval_rewards/margins" in r for r in _metrics(working))


@pytest.mark.slow
def test_two_stage_sft_then_dpo_from_the_sft_adapter(tmp_path):
    """The README's two-stage example: SFT on the shipped conversations, then DPO on the
    shipped pairs from the SFT adapter (same template, llama-2 chat): the reference is that
    adapter, so DPO's first loss is ln 2, and the result is an adapter airo can load."""
    common = ["--bits", 4, "--lora_r", 16, "--lora_alpha", 16, "--model_max_len", 384]
    sft_out = tmp_path / "sft"
    sft = run_cli("train", "examples/demo.yaml", "--output_dir", sft_out, "--working_dir", tmp_path / "sft-w",
                  "--merged_output_dir", tmp_path / "sft-merged", "--post_train_actions", "save", "--max_steps", 4,
                  "--save_strategy", "no", *common, cwd=EXAMPLES.parent)
    assert sft.returncode == 0, sft.stderr[-3000:]
    dpo = run_cli("train", "--model_name_or_path", "examples/tiny-llama",
                  "--dataset", "examples/data/preferences.jsonl",
                  "--dataset_format", "preference", "--prompt_template", "llama-2", "--objective", "dpo",
                  "--init_adapter", sft_out, "--output_dir", tmp_path / "dpo", "--working_dir", tmp_path / "dpo-w",
                  "--max_steps", 3, "--logging_steps", 1, "--per_device_train_batch_size", 4,
                  "--gradient_accumulation_steps", 1, "--learning_rate", 0.001, "--save_strategy", "no",
                  "--eval_dataset_size", 0, "--bf16", "true", *common, cwd=EXAMPLES.parent)
    assert dpo.returncode == 0, dpo.stderr[-3000:]
    assert "reference model: the adapter the run started from, frozen" in dpo.stdout + dpo.stderr
    logged = [r for r in _metrics(tmp_path / "dpo-w") if "loss" in r]
    assert logged[0]["loss"] == pytest.approx(LN2, abs=1e-3)
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()
    card = (tmp_path / "dpo" / "README.md").read_text(encoding="utf-8")
    assert "| Objective | `dpo`" in card and "init_adapter" in card


@pytest.mark.slow
def test_dpo_loss_matches_trl(airo_env, tiny_model_dir, tiny_tokenizer, tmp_path):
    """TRL's DPOTrainer, given the same token ids (llama-2 chat: every continuation token is
    scored, as TRL scores them) and the same reference, gives the same loss for a policy
    away from its reference. TRL is an optional test dependency (the trl-test extra, which
    CI installs before the slow tests); without it the test is skipped."""
    trl = pytest.importorskip("trl")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = _config("--prompt_template", "llama-2", "--eval_dataset_size", 0, "--beta", 0.2)
    ours = _trainer(tmp_path, config, policy, tiny_tokenizer)  # the reference: a frozen copy, made now
    torch.manual_seed(3)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    features = [ours.train_dataset[i] for i in range(4)]
    for f in features:
        assert f["chosen_labels"] == f["chosen_input_ids"] and f["rejected_labels"] == f["rejected_input_ids"]
    with torch.no_grad():
        our_loss, _ = ours._preference_loss(policy, ours._prepare_inputs(ours.data_collator(features)))
    dummy = Dataset.from_dict({"prompt": ["q"], "chosen": ["a"], "rejected": ["b"]})
    theirs = trl.DPOTrainer(model=policy, ref_model=ours.preference_reference.model,
                            args=trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.2, report_to="none", bf16=False,
                                               use_cpu=True),
                            train_dataset=dummy, processing_class=tiny_tokenizer)
    batch = theirs.data_collator([{"prompt_ids": f["prompt_input_ids"], "chosen_ids": f["chosen_input_ids"],
                                   "rejected_ids": f["rejected_input_ids"]} for f in features])
    with torch.no_grad():
        trl_loss = theirs.compute_loss(policy, theirs._prepare_inputs(batch))
    assert abs(our_loss.item() - LN2) > 1e-3  # the policy is away from the reference
    assert our_loss.item() == pytest.approx(trl_loss.item(), abs=1e-4)


def test_model_card_states_a_preference_objective():
    from airo.plugins.model_card import render_model_card

    info = {"airo_version": "0.1.0", "base_model": "some/base", "loader": "qlora", "peft": True, "bits": 4,
            "dataset_format": "preference", "prompt_template": "llama-2", "global_step": 30, "objective": "dpo",
            "data": {"dataset": "prefs.jsonl", "content_hash": None, "train_examples": 24, "eval_examples": 4}}
    kwargs = dict(kind="adapter", chat_template=None, example_prompt=None, final_loss=0.6, eval_loss=None, name="dpo",
                  changed_options={"objective": "dpo", "beta": 0.2, "init_adapter": "runs/sft"})
    card = render_model_card(info, **kwargs)
    assert "| Objective | `dpo` (examples are preference records" in card
    assert "| Examples | 24 train, 4 eval |" in card and "init_adapter" in card and "beta" in card
    assert "| Objective |" not in render_model_card({**info, "objective": "sft"}, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["ddp-qlora", "deepspeed-zero2"])
def test_dpo_under_torchrun(tmp_path, launch):
    """Two processes (gloo DDP with a 4-bit base, or the seed's DeepSpeed ZeRO-2 JSON): the
    pairs are shared out, the metrics averaged over both, the first loss ln 2, and the result
    merges (QLoRA) into a model transformers loads."""
    import socket

    from transformers import AutoModelForCausalLM

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = (["--bits", 4, "--bf16", "true", "--merged_output_dir", tmp_path / "merged"] if launch == "ddp-qlora"
             else ["--bits", 16, "--bf16", "true", "--deepspeed", EXAMPLES / "deepspeed-zero2.json"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "airo.core", "train", "--model_name_or_path", TINY, "--output_dir", tmp_path / "dpo",
           "--working_dir", tmp_path / "dpo-w", "--dataset", PREFS, "--dataset_format", "preference",
           "--objective", "dpo", "--lora_r", 8, "--lora_alpha", 16, "--max_steps", 3, "--logging_steps", 1,
           "--per_device_train_batch_size", 2, "--gradient_accumulation_steps", 1, "--eval_dataset_size", 0,
           "--save_strategy", "no", "--ddp_find_unused_parameters", "False", "--report_to", "none", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "4 effective = 2 per device x 1 accumulation x 2 process(es)" in proc.stdout
    logged = [r for r in _metrics(tmp_path / "dpo-w") if "loss" in r]
    assert len(logged) == 3 and logged[0]["loss"] == pytest.approx(LN2, abs=1e-4)
    assert all("rewards/accuracies" in r for r in logged)
    if launch == "ddp-qlora":
        AutoModelForCausalLM.from_pretrained(tmp_path / "merged")

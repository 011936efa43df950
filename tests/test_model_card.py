"""The model card written into adapter, merged and full output folders."""

from __future__ import annotations

import copy

import pytest
import yaml
from huggingface_hub import ModelCard

from airo.core.config import build_config
from airo.core.errors import ConfigError
from airo.plugins.model_card import changed_options, render_model_card, write_model_card

HASH = "0123456789abcdef" * 4

ADAPTER_INFO = {
    "airo_version": "0.1.0", "base_model": "meta-llama/Llama-2-7b-hf", "loader": "qlora", "peft": True, "bits": 4,
    "compute_dtype": "bfloat16", "weights_dtype": None, "dataset_format": "airoboros", "prompt_template": "llama-2",
    "quant_type": "nf4", "double_quant": True, "quantized_modules": ["model.layers.0.self_attn.q_proj"] * 7,
    "quant_blocksize": 64, "quant_input_dtype": "bfloat16", "global_step": 1200,
    "lora": {"r": 64, "alpha": 16, "dropout": 0.05, "modules": ["q_proj", "v_proj"]},
    "data": {"dataset": "some/where/train.jsonl", "content_hash": HASH, "train_examples": 9800, "eval_examples": 200},
    "chat_template_parity": {"matched": 60, "total": 60, "variant": "default", "counts": {"default": 60},
                             "not_covered": 0, "skipped": 0, "first_mismatch": None},
}
FULL_INFO = {
    "airo_version": "0.1.0", "base_model": "TinyLlama/TinyLlama-1.1B", "loader": "full", "peft": False, "bits": None,
    "compute_dtype": "bfloat16", "weights_dtype": "bfloat16", "dataset_format": "sharegpt", "prompt_template": "chatml",
    "global_step": 30, "data": {"dataset": "teknium/OpenHermes-2.5", "content_hash": None, "train_examples": 500,
                                "eval_examples": 0},
}
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
EXAMPLE = "<s>[INST] What is 2+2? [/INST]"


def render(info, kind, **overrides):
    kwargs = dict(kind=kind, chat_template=CHAT_TEMPLATE, example_prompt=EXAMPLE,
                  changed_options={"lora_r": 64, "learning_rate": 1e-4, "bf16": True},
                  final_loss=1.23456, eval_loss=1.5, name="my-run")
    kwargs.update(overrides)
    return render_model_card(info, **kwargs)


def front_matter(text: str) -> dict:
    """The metadata, read by the Hub library and by a plain YAML parser (they must agree)."""
    assert text.startswith("---\n")
    raw = text.split("---\n")[1]
    card = ModelCard(text)
    assert card.data.to_dict() == yaml.safe_load(raw)
    return yaml.safe_load(raw)


def test_adapter_card():
    text = render(ADAPTER_INFO, "adapter")
    meta = front_matter(text)
    assert meta == {"base_model": "meta-llama/Llama-2-7b-hf", "library_name": "peft", "pipeline_tag": "text-generation",
                    "tags": ["airo", "qlora"]}  # a local dataset file is no Hub dataset: no `datasets`
    body = ModelCard(text).text
    assert "# my-run" in body
    assert "A QLoRA adapter for `meta-llama/Llama-2-7b-hf` trained with airo 0.1.0." in body
    assert ("| Method | QLoRA: a LoRA adapter on a 4-bit nf4 base (double quantization), "
            "compute dtype bfloat16 |") in body
    assert "| LoRA | r 64, alpha 16, dropout 0.05, on `q_proj`, `v_proj` |" in body
    assert "| 4-bit layers | 7 |" in body
    assert f"| Dataset | `train.jsonl` (content sha256 `{HASH}`) |" in body
    assert "some/where" not in body  # the file's name, not the training machine's path
    assert "| Examples | 9,800 train, 200 eval |" in body
    assert "| Format / template | `airoboros` / `llama-2` |" in body
    assert "| Steps | 1,200 |" in body
    assert "| airo version | `0.1.0` |" in body
    assert "| Final train loss | 1.2346 |" in body and "| Final eval loss | 1.5000 |" in body
    assert "reproduces the training prompt tokens of all 60 conversations checked" in body
    assert f"```\n{EXAMPLE}\n```" in body
    assert f"```jinja\n{CHAT_TEMPLATE}\n```" in body
    assert "| `bf16` | `true` |" in body and "| `learning_rate` | `0.0001` |" in body and "| `lora_r` | `64` |" in body
    assert "AutoPeftModelForCausalLM.from_pretrained(path)" in body and 'path = "my-run"' in body
    assert "airo chat my-run\n" in body
    assert "airo merge --adapter my-run --base meta-llama/Llama-2-7b-hf --out my-run-merged" in body
    assert "dequantize path" in body


def test_merged_card():
    info = copy.deepcopy(ADAPTER_INFO)
    info["merge"] = {"method": "dequantize", "dtype": "bfloat16"}
    info["data"]["dataset"] = "jondurbin/airoboros-3.1"
    text = render(info, "merged")
    meta = front_matter(text)
    assert meta["library_name"] == "transformers"
    assert meta["base_model"] == "meta-llama/Llama-2-7b-hf"
    assert meta["tags"] == ["airo", "qlora", "merged"]
    assert meta["datasets"] == ["jondurbin/airoboros-3.1"]
    body = ModelCard(text).text
    assert "A model (LoRA adapter merged into its base) for `meta-llama/Llama-2-7b-hf`" in body
    assert "compute dtype bfloat16; merged into the base (dequantize merge, bfloat16 weights) |" in body
    assert "[jondurbin/airoboros-3.1](https://huggingface.co/datasets/jondurbin/airoboros-3.1)" in body
    assert "AutoModelForCausalLM.from_pretrained(path)" in body
    assert "peft" not in body.split("## How to use")[1] and "airo merge" not in body
    assert "airo chat my-run\n" in body


def test_full_card():
    text = render(FULL_INFO, "full", changed_options={"full_finetune": True, "bits": 16})
    meta = front_matter(text)
    assert meta == {"base_model": "TinyLlama/TinyLlama-1.1B", "datasets": ["teknium/OpenHermes-2.5"],
                    "library_name": "transformers", "pipeline_tag": "text-generation",
                    "tags": ["airo", "full-fine-tune"]}
    body = ModelCard(text).text
    assert "A fully fine-tuned model for `TinyLlama/TinyLlama-1.1B`" in body
    assert "| Method | full fine-tune (every weight trained, bfloat16 weights) |" in body
    assert "| LoRA |" not in body and "4-bit" not in body
    assert "| Examples | 500 train, 0 eval |" in body and "content sha256" not in body
    assert "| `full_finetune` | `true` |" in body
    assert "AutoModelForCausalLM" in body and "AutoPeft" not in body


def test_local_base_model_stays_out_of_the_metadata(tmp_path):
    info = dict(FULL_INFO, base_model=str(tmp_path / "tiny-llama"))
    (tmp_path / "data.parquet").write_bytes(b"")
    info["data"] = {"dataset": f"{tmp_path / 'data.parquet'},org/hub-set", "train_examples": 3}
    text = render(info, "full")
    meta = front_matter(text)
    assert "base_model" not in meta  # the Hub refuses a base_model that is no model id
    assert meta["datasets"] == ["org/hub-set"]
    assert f"`{tmp_path / 'tiny-llama'}`" in text  # the body still says where it came from
    assert "`data.parquet`" in text


def test_failed_chat_template_parity_is_a_warning_with_counts():
    info = copy.deepcopy(ADAPTER_INFO)
    info["chat_template_parity"] = {"matched": 57, "total": 60, "variant": "default", "not_covered": 2,
                                    "first_mismatch": "train.jsonl, line 4, token 1: training ['▁a'], "
                                                      "chat_template ['a']"}
    body = ModelCard(render(info, "adapter")).text
    assert ("> **Warning:** the saved `chat_template` reproduces the training prompt tokens of only 57 of 60 "
            "conversations checked") in body
    assert "differ from training for the other 3" in body
    assert "First difference: train.jsonl, line 4, token 1" in body
    assert "2 conversation(s) the template cannot express were not compared" in body

    info["chat_template_parity"] = {"matched": 0, "total": 0, "note": "no --dataset"}
    body = ModelCard(render(info, "adapter")).text
    assert "was **not checked** against the training prompts: no --dataset." in body


@pytest.mark.parametrize("kind", ["adapter", "merged", "full"])
def test_missing_or_malformed_keys_leave_lines_out(kind):
    for info in ({}, {"data": "x.jsonl", "lora": 5, "chat_template_parity": [], "bits": "4", "global_step": "7",
                      "base_model": None, "merge": "direct", "quantized_modules": "all"}):
        text = render_model_card(info, kind=kind, chat_template=None, example_prompt=None, changed_options={},
                                 final_loss=None, eval_loss=None)
        meta = front_matter(text)
        assert "base_model" not in meta and "datasets" not in meta
        assert meta["library_name"] == ("peft" if kind == "adapter" else "transformers")
        body = ModelCard(text).text
        for absent in ("| Base model", "| Dataset", "| Examples", "| Steps", "| LoRA |", "## Results",
                       "## Prompt format", "## Options", "airo version"):
            assert absent not in body
        assert "| Method |" in body and "## How to use" in body


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="adapter, merged, full"):
        render(ADAPTER_INFO, "gguf")


def test_backticks_in_prompts_keep_the_markdown_intact():
    body = render(ADAPTER_INFO, "adapter", example_prompt="```\nuser: | pipes `and` ticks\n```")
    assert "````\n```\nuser: | pipes `and` ticks\n```\n````" in body


def test_write_model_card_replaces_readme(tmp_path):
    out = tmp_path / "adapter-out"
    out.mkdir()
    (out / "README.md").write_text("peft's card", encoding="utf-8")
    path = write_model_card(out, info=ADAPTER_INFO, kind="adapter", chat_template=None, example_prompt=None,
                            changed_options={}, final_loss=0.5, eval_loss=None)
    assert path == out / "README.md"
    text = path.read_text(encoding="utf-8")
    assert "# adapter-out" in text and 'path = "adapter-out"' in text
    assert front_matter(text)["library_name"] == "peft"
    assert [p.name for p in out.iterdir()] == ["README.md"]  # written in place, no temp file left
    with pytest.raises(ConfigError, match="not a folder"):
        write_model_card(tmp_path / "missing", info={}, kind="full", chat_template=None, example_prompt=None,
                         changed_options={}, final_loss=None, eval_loss=None)


def test_changed_options_leaves_out_defaults_paths_secrets_and_bookkeeping(tmp_path):
    config = build_config(argv=[
        "--model_name_or_path", "m", "--dataset", "d.jsonl", "--output_dir", str(tmp_path / "out"),
        "--working_dir", str(tmp_path / "work"), "--hub_token", "secret", "--lora_r", "8", "--lora_alpha", "16",
        "--bf16", "--learning_rate", "1e-4", "--num_train_epochs", "1", "--logging_steps", "1", "--save_steps", "5",
        "--report_to", "wandb", "--seed", "7"])
    assert changed_options(config) == {"lora_r": 8, "bf16": True, "learning_rate": 1e-4, "num_train_epochs": 1,
                                       "seed": 7}
    assert changed_options(build_config(argv=[])) == {}

"""Merging LoRA adapters: the dequantize path for QLoRA adapters, the direct path, `airo merge`.

The adapter here is built on a real 4-bit bitsandbytes base with *random* LoRA weights
(large enough to matter) and saved by the real ``save`` action, so the numbers below do
not depend on how much a tiny model learns in a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

# Tolerances on logits (the tiny model's logits are O(1)).
LORA_B_SCALE = 0.1  # random LoRA B times this: a clear effect, still a well-conditioned model
FP32_TOL = 1e-4   # fp32 merge vs fp32 PEFT forward: only summation order differs
BF16_REL_TOL = 2e-2  # bf16 merged weights (relative to the largest logit): bf16 rounding, 2 layers


class _Template:
    chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def _bnb_config(quant_type="nf4"):
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16,
                              bnb_4bit_use_double_quant=True, bnb_4bit_quant_type=quant_type)


def _save_adapter(tiny_model_dir, out: Path, *, bits=4, seed=0) -> Path:
    """Random-LoRA adapter on a 4-bit (or 16-bit) base, saved through the `save` action."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from airo.core.config import build_config
    from airo.core.training import TrainContext
    from airo.plugins.quantization import quantized_layout
    from airo.plugins.actions import save

    torch.manual_seed(seed)
    if bits == 4:
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=_bnb_config(),
                                                    dtype=torch.bfloat16)
    else:
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    with torch.no_grad():  # random A and B (init_lora_weights=False), B scaled: moves logits ~0.1
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(LORA_B_SCALE)
    config = build_config(None, ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
                                 "--bits", str(bits), "--bf16"])
    info = {"base_model": str(tiny_model_dir), "peft": True, "bits": bits, "compute_dtype": "bfloat16"}
    if bits == 4:
        info.update(quant_type="nf4", double_quant=True, **quantized_layout(model))
    else:
        info["compute_dtype"] = "float32"

    class Loaded:
        is_peft = True

    ctx = TrainContext(config=config, model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
                       template=_Template(), output_dir=str(out), working_dir=str(out) + "-checkpoints",
                       adapter_dir=str(out), is_main_process=True, loaded=Loaded(), info=info)
    save(ctx)
    return out


@pytest.fixture(scope="module")
def qlora_adapter(tiny_model_dir, tmp_path_factory):
    return _save_adapter(tiny_model_dir, tmp_path_factory.mktemp("merge") / "adapter")


@pytest.fixture(scope="module")
def inputs():
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 590, (2, 24), generator=g)


def _logits(model, x):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=x).logits.float()


def _reference_base(tiny_model_dir):
    """The base exactly as the 4-bit training saw it, built independently of airo's merge code:
    load with bitsandbytes, dequantize each Linear4bit with bitsandbytes, copy into fp32."""
    import bitsandbytes as bnb
    import torch
    from bitsandbytes import functional as F
    from transformers import AutoModelForCausalLM

    quantized = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=_bnb_config(),
                                                     dtype=torch.bfloat16)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    count = 0
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            ref.get_submodule(name).weight.data = F.dequantize_4bit(module.weight.data,
                                                                    module.weight.quant_state).float()
            count += 1
    assert count == 14
    return ref


def _peft_reference(tiny_model_dir, adapter, x):
    from peft import PeftModel

    return _logits(PeftModel.from_pretrained(_reference_base(tiny_model_dir), str(adapter)), x)


def test_save_action_wrote_adapter(qlora_adapter):
    files = {p.name for p in Path(qlora_adapter).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "airo_training.json", "tokenizer_config.json"} <= files
    info = json.loads((Path(qlora_adapter) / "airo_training.json").read_text())
    assert info["bits"] == 4 and info["quant_type"] == "nf4" and len(info["quantized_modules"]) == 14
    assert not [p for p in Path(qlora_adapter).parent.iterdir() if "airo-tmp" in p.name or "airo-old" in p.name]
    # the llama tokenizer's legacy=True survives the save (transformers 5 does not write it)
    assert json.loads((Path(qlora_adapter) / "tokenizer_config.json").read_text())["legacy"] is True


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_cli_merge_dequantize_matches_peft_on_4bit_base(qlora_adapter, tiny_model_dir, tmp_path, inputs):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    proc = run_cli("merge", "--base", tiny_model_dir, "--adapter", qlora_adapter, "--out", out, "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    assert "dequantize path" in proc.stdout and "dequantize merge" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.float32
    reference = _peft_reference(tiny_model_dir, qlora_adapter, inputs)
    diff = (_logits(merged, inputs) - reference).abs().max().item()
    print(f"fp32 dequantize merge vs PEFT on the 4-bit-dequantized base: max |logit diff| = {diff:.3e}")
    assert diff < FP32_TOL
    # The adapter matters: without it the logits are far off.
    base_only = _logits(_reference_base(tiny_model_dir), inputs)
    assert (reference - base_only).abs().max().item() > 100 * FP32_TOL
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == _Template.chat_template
    assert tok.legacy is True and tok("<s>x</s>y")["input_ids"] == AutoTokenizer.from_pretrained(
        tiny_model_dir)("<s>x</s>y")["input_ids"]


def test_direct_merge_is_further_from_what_was_trained(qlora_adapter, tiny_model_dir, tmp_path, inputs):
    from transformers import AutoModelForCausalLM

    from airo.plugins.merge import merge_adapter

    deq = merge_adapter(tiny_model_dir, str(qlora_adapter), str(tmp_path / "deq"), dtype="float32")
    direct = merge_adapter(tiny_model_dir, str(qlora_adapter), str(tmp_path / "direct"), method="direct",
                           dtype="float32")
    assert (deq.method, direct.method) == ("dequantize", "direct")
    reference = _peft_reference(tiny_model_dir, qlora_adapter, inputs)
    d_deq = (_logits(AutoModelForCausalLM.from_pretrained(deq.out), inputs) - reference).abs().max().item()
    d_dir = (_logits(AutoModelForCausalLM.from_pretrained(direct.out), inputs) - reference).abs().max().item()
    print(f"max |logit diff| vs PEFT on 4-bit base: dequantize {d_deq:.3e}, direct {d_dir:.3e}")
    assert d_deq < FP32_TOL < d_dir
    assert d_dir > 100 * d_deq


def test_default_dtype_is_training_compute_dtype(qlora_adapter, tiny_model_dir, tmp_path, inputs):
    """No --dtype: the adapter's recorded compute dtype (bf16 here), base path read from the adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    from airo.plugins.merge import merge_adapter

    result = merge_adapter(None, str(qlora_adapter), str(tmp_path / "bf16"))
    assert result.dtype == "bfloat16" and result.base == str(tiny_model_dir)
    merged = AutoModelForCausalLM.from_pretrained(result.out)
    assert merged.dtype == torch.bfloat16
    reference = _peft_reference(tiny_model_dir, qlora_adapter, inputs)
    diff = (_logits(merged, inputs) - reference).abs().max().item()
    scale = reference.abs().max().item()
    print(f"bf16 dequantize merge vs fp32 PEFT reference: max |logit diff| = {diff:.3e} "
          f"(max |logit| {scale:.3f}, relative {diff / scale:.3e})")
    assert diff / scale < BF16_REL_TOL
    assert "merge path: dequantize" in result.summary() or "dequantize merge" in result.summary()


def test_auto_is_direct_for_16bit_adapters(tiny_model_dir, tmp_path, inputs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from airo.plugins.merge import merge_adapter

    adapter = _save_adapter(tiny_model_dir, tmp_path / "adapter16", bits=16)
    result = merge_adapter(tiny_model_dir, str(adapter), str(tmp_path / "m16"))
    assert result.method == "direct" and result.dtype == "float32"
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter))
    diff = (_logits(AutoModelForCausalLM.from_pretrained(result.out), inputs) - _logits(peft, inputs)).abs().max()
    assert diff.item() < FP32_TOL


def test_merge_replaces_output_atomically(qlora_adapter, tiny_model_dir, tmp_path):
    from airo.plugins.merge import merge_adapter

    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")  # an earlier merge: airo stamped it
    (out / ".airo-owned").write_text("{}")
    (out / "stale.txt").write_text("old")
    merge_adapter(tiny_model_dir, str(qlora_adapter), str(out), dtype="float32")
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert json.loads((out / ".airo-owned").read_text())["kind"] == "merged model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert json.loads((out / "airo_merge.json").read_text())["base"] == str(Path(tiny_model_dir).resolve())


def test_merge_refuses_overlapping_and_user_folders(qlora_adapter, tiny_model_dir, tmp_path):
    """--out must not be (or be inside, or hold) the base or the adapter, and a folder of the
    user's files is never replaced."""
    from airo.core.errors import ConfigError
    from airo.plugins.merge import merge_adapter

    adapter_files = sorted(p.name for p in Path(qlora_adapter).iterdir())
    for out, message in ((qlora_adapter, "--out and --adapter are the same folder"),
                         (Path(qlora_adapter) / "merged", "--out .* is inside --adapter"),
                         (tiny_model_dir, "--out and --base are the same folder"),
                         (Path(qlora_adapter).parent, "--adapter .* is inside --out")):
        with pytest.raises(ConfigError, match=message):
            merge_adapter(tiny_model_dir, str(qlora_adapter), str(out), dtype="float32")
    assert sorted(p.name for p in Path(qlora_adapter).iterdir()) == adapter_files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "config.json").write_text("{}")  # looks like a model, and still is not airo's
    with pytest.raises(ConfigError, match="will not touch"):
        merge_adapter(tiny_model_dir, str(qlora_adapter), str(mine), dtype="float32")
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "notes.txt"]


def test_merge_errors(tmp_path, tiny_model_dir):
    from airo.core.errors import ConfigError
    from airo.plugins.merge import merge_adapter

    with pytest.raises(ConfigError, match="not a LoRA adapter"):
        merge_adapter(tiny_model_dir, str(tiny_model_dir), str(tmp_path / "x"))
    proc = run_cli("merge", "--base", tiny_model_dir, "--adapter", tiny_model_dir, "--out", tmp_path / "y")
    assert proc.returncode != 0 and "not a LoRA adapter" in proc.stderr


def test_merge_with_added_tokens(tiny_model_dir, tmp_path):
    """A run that added a special token (--pad_token) resized the embeddings: the merge does too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from airo.core.config import build_config
    from airo.core.training import TrainContext
    from airo.plugins.merge import merge_adapter
    from airo.plugins.actions import save
    from airo.plugins.loaders import load_qlora

    adapter = tmp_path / "adapter"
    config = build_config(None, ["--model_name_or_path", tiny_model_dir, "--output_dir", str(adapter),
                                 "--bits", "16", "--lora_r", "4", "--pad_token", "<pad>"])
    loaded = load_qlora(config)
    save(TrainContext(config=config, model=loaded.model, tokenizer=loaded.tokenizer, template=_Template(),
                      output_dir=str(adapter), working_dir=str(tmp_path / "work"), adapter_dir=str(adapter),
                      is_main_process=True, loaded=loaded, info={"bits": 16, "compute_dtype": "float32"}))
    result = merge_adapter(tiny_model_dir, str(adapter), str(tmp_path / "merged"))
    assert any("resized" in n for n in result.notes)
    merged = AutoModelForCausalLM.from_pretrained(result.out)
    tok = AutoTokenizer.from_pretrained(result.out)
    assert merged.get_input_embeddings().weight.shape[0] == len(tok) == 601
    assert merged.config.pad_token_id == tok.pad_token_id == 600

"""Model loader plugins: 4-bit/8-bit/16-bit LoRA, full fine-tune, attention fallback, targets."""

from __future__ import annotations

import pytest

from airo.core.config import build_config


def _config(model_dir, *extra):
    return build_config(None, ["--model_name_or_path", str(model_dir), "--output_dir", "/tmp/unused", *extra])


def _modules(model, cls):
    return [name for name, m in model.named_modules() if isinstance(m, cls)]


def test_registered(airo_env):
    from airo.core.plugins import get_registry

    loaders = get_registry().loaders
    assert {"qlora", "full"} <= set(loaders)
    assert loaders["qlora"].plugin == "loaders"


def test_loader_auto_choice(tiny_model_dir, airo_env):
    from airo.core.training import select_loader

    assert select_loader(_config(tiny_model_dir)).name == "qlora"
    assert select_loader(_config(tiny_model_dir, "--full_finetune")).name == "full"
    assert select_loader(_config(tiny_model_dir, "--loader", "full", "--bits", "16")).name == "full"


def test_flash_attention_falls_back_to_sdpa_with_a_message(tiny_model_dir, monkeypatch):
    import importlib.util

    import torch

    from airo.plugins import loaders

    for flags in (["--use_flash_attention_2"], ["--attn_implementation", "flash_attention_2"]):
        impl, notes = loaders.resolve_attention(_config(tiny_model_dir, *flags))
        assert impl == "sdpa"
        assert len(notes) == 1 and "flash_attention_2 was requested" in notes[0] and "using sdpa" in notes[0]
    # flash-attn installed but no GPU: the message says so.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    impl, notes = loaders.resolve_attention(_config(tiny_model_dir, "--use_flash_attention_2"))
    assert impl == "sdpa" and "CUDA" in notes[0]
    # Everything available (simulated): flash-attn is used.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    impl, notes = loaders.resolve_attention(_config(tiny_model_dir, "--use_flash_attention_2"), torch.bfloat16)
    assert impl == "flash_attention_2" and notes == []
    # Default: sdpa, no message.
    assert loaders.resolve_attention(_config(tiny_model_dir)) == ("sdpa", [])


def test_qlora_4bit_real_bitsandbytes_layers(tiny_model_dir, airo_env):
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import LoraLayer

    from airo.plugins.loaders import load_qlora

    loaded = load_qlora(_config(tiny_model_dir, "--bits", "4", "--bf16", "--lora_r", "8", "--lora_alpha", "16",
                                "--gradient_checkpointing", "--use_flash_attention_2"))
    model = loaded.model
    assert loaded.is_peft and loaded.quantized_bits == 4
    four_bit = _modules(model, bnb.nn.Linear4bit)
    assert len(four_bit) == 14  # 2 layers x (q k v o gate up down)
    weight = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)).weight
    assert weight.quant_state.quant_type == "nf4" and weight.quant_state.nested  # double quant
    assert weight.quant_state.dtype == torch.bfloat16
    lora = _modules(model, LoraLayer)
    assert len(lora) == 14 and not any("lm_head" in n for n in lora)
    # lm_head stays a plain, frozen, unquantized Linear
    lm_head = model.get_output_embeddings()
    assert type(lm_head) is torch.nn.Linear and not lm_head.weight.requires_grad
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("flash_attention_2 was requested" in n for n in loaded.notes)
    assert model.config._attn_implementation == "sdpa"
    inner = model.base_model.model
    assert getattr(inner, "is_activation_checkpointing", None) or inner.is_gradient_checkpointing
    x = torch.randint(3, 500, (2, 12), device=model.device)  # on the GPU when bitsandbytes put the model there
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)


def test_qlora_fp4_without_double_quant(tiny_model_dir, airo_env):
    import bitsandbytes as bnb

    from airo.plugins.loaders import load_qlora

    loaded = load_qlora(_config(tiny_model_dir, "--quant_type", "fp4", "--double_quant", "false", "--lora_r", "2"))
    weight = next(m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)).weight
    assert weight.quant_state.quant_type == "fp4" and not weight.quant_state.nested


def test_lora_8bit(tiny_model_dir, airo_env):
    import bitsandbytes as bnb

    from airo.plugins.loaders import load_qlora

    loaded = load_qlora(_config(tiny_model_dir, "--bits", "8", "--lora_r", "4", "--lora_modules", "q_proj,v_proj"))
    assert loaded.quantized_bits == 8
    assert len(_modules(loaded.model, bnb.nn.Linear8bitLt)) == 14
    names = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert names and all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in names)


def test_lora_16bit(tiny_model_dir, airo_env):
    import bitsandbytes as bnb
    import torch

    from airo.plugins.loaders import load_qlora

    loaded = load_qlora(_config(tiny_model_dir, "--bits", "16", "--bf16", "--lora_r", "4"))
    model = loaded.model
    assert loaded.is_peft and loaded.quantized_bits is None
    assert not _modules(model, bnb.nn.Linear4bit)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_target_modules(tiny_model_dir, airo_env):
    import torch
    from transformers import AutoModelForCausalLM

    from airo.core.errors import ConfigError
    from airo.plugins.loaders import linear_module_names, lora_target_modules

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    every = lora_target_modules(model, "all")
    assert every == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert "lm_head" not in every and every == linear_module_names(model)
    assert lora_target_modules(model, "q_proj, v_proj") == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="q_prj.*Did you mean 'q_proj'"):
        lora_target_modules(model, "q_prj")


def test_full_loader(tiny_model_dir, airo_env):
    import torch

    from airo.core.errors import ConfigError
    from airo.plugins.loaders import load_full, load_qlora

    loaded = load_full(_config(tiny_model_dir, "--full_finetune", "--bf16"))
    assert not loaded.is_peft
    params = list(loaded.model.parameters())
    assert all(p.requires_grad for p in params) and params[0].dtype == torch.bfloat16
    fp32 = load_full(_config(tiny_model_dir, "--full_finetune", "--bits", "32"))
    assert next(fp32.model.parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match="--loader full"):
        load_qlora(_config(tiny_model_dir, "--full_finetune"))


def test_full_finetune_dtype_follows_the_seed(tiny_model_dir, airo_env):
    """bf16 weights only with --bf16; with --fp16 the weights stay fp32 (mixed precision needs
    fp32 master weights: fp16 weights train to NaN); otherwise fp32."""
    import torch

    from airo.plugins.loaders import load_full

    for flags, dtype in ((["--bits", "16", "--fp16"], torch.float32), (["--bits", "16", "--bf16"], torch.bfloat16),
                         (["--bits", "16"], torch.float32), (["--bits", "32", "--bf16"], torch.float32),
                         (["--bits", "32", "--fp16"], torch.float32)):
        loaded = load_full(_config(tiny_model_dir, "--full_finetune", *flags))
        assert {p.dtype for p in loaded.model.parameters()} == {dtype}, flags
    fp16 = load_full(_config(tiny_model_dir, "--full_finetune", "--fp16"))
    assert any("fp16 mixed precision needs fp32 master weights" in n for n in fp16.notes)


def test_added_pad_token_resizes_embeddings(tiny_model_dir, airo_env):
    from airo.plugins.loaders import load_full

    loaded = load_full(_config(tiny_model_dir, "--full_finetune", "--bits", "32", "--pad_token", "<pad>"))
    assert loaded.tokenizer.pad_token == "<pad>"
    assert loaded.model.get_input_embeddings().weight.shape[0] == len(loaded.tokenizer) == 601
    assert loaded.model.config.pad_token_id == loaded.tokenizer.pad_token_id == 600
    assert any("resized the token embeddings" in n for n in loaded.notes)


def test_third_party_loader_is_used(tiny_model_dir, airo_env, airo_plugin):
    from airo.core import LoadedModel, hookimpl
    from airo.core.training import select_loader

    class Plugin:
        @hookimpl
        def register_model_loaders(self, register):
            register("mine", lambda config: LoadedModel(model="M", tokenizer="T"), description="test loader")

    airo_plugin(Plugin(), name="my-loader")
    loader = select_loader(_config(tiny_model_dir, "--loader", "mine"))
    assert loader.load(None).model == "M"

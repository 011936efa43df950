"""The llama-1 tokenizer patch: detection rule, the applied settings, the shipped files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from airo.core.config import build_config


def _config(model_dir, *extra):
    return build_config(None, ["--model_name_or_path", str(model_dir), "--output_dir", "/tmp/unused", *extra])


def _checkpoint(tmp_path: Path, tiny_model_dir: str, *, max_positions=2048, tokenizer_config=None,
                special_tokens=None, name="llama1") -> Path:
    """A copy of the tiny model dressed up as a llama conversion with the given tokenizer files."""
    out = tmp_path / name
    out.mkdir()
    for item in ("tokenizer.model", "model.safetensors", "generation_config.json"):
        shutil.copy(Path(tiny_model_dir) / item, out / item)
    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    config.update(max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=1, pad_token_id=-1)
    (out / "config.json").write_text(json.dumps(config))
    if tokenizer_config is not None:
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if special_tokens is not None:
        (out / "special_tokens_map.json").write_text(json.dumps(special_tokens))
    return out


# What decapoda-research/llama-*-hf shipped.
DECAPODA_TOKENIZER_CONFIG = {"bos_token": "", "eos_token": "", "model_max_length": 1000000000000000019884624838656,
                             "tokenizer_class": "LLaMATokenizer", "unk_token": ""}


@pytest.fixture
def decapoda(tmp_path, tiny_model_dir):
    return _checkpoint(tmp_path, tiny_model_dir, tokenizer_config=DECAPODA_TOKENIZER_CONFIG, special_tokens={})


def _assert_patched(tok, *, reloaded=False):
    assert type(tok).__name__ == "LlamaTokenizer"
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<unk>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, 0)
    if not reloaded:  # transformers 5 keeps BOS/EOS in tokenizer.json's post-processor, not these attributes
        assert tok.add_bos_token is True and tok.add_eos_token is False
    assert tok.model_max_length == 2048
    assert tok.padding_side == "right"
    assert tok.clean_up_tokenization_spaces is False
    ids = tok("hello world")["input_ids"]
    assert ids[0] == 1 and ids[-1] != 2


def test_registered_with_detection(airo_env):
    from airo.core.plugins import get_registry

    patch = get_registry().patches["llama1"]
    assert patch.detect is not None and "llama-1" in patch.description


def test_shipped_files_hold_the_spec_settings():
    from airo.plugins import llama1_patch

    files = llama1_patch.patch_files()
    config = json.loads(files["tokenizer_config.json"].read_text())
    special = json.loads(files["special_tokens_map.json"].read_text())
    for key, value in llama1_patch.SETTINGS.items():
        assert config[key] == value, key
    assert special == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}


def test_detects_broken_llama1_checkpoint(decapoda, tmp_path, tiny_model_dir, airo_env):
    from airo.plugins.llama1_patch import detect

    assert detect(_config(decapoda))
    # Missing tokenizer_config.json also counts as broken.
    assert detect(_config(_checkpoint(tmp_path, tiny_model_dir, name="bare")))
    # Empty special tokens without the old class name.
    empty = _checkpoint(tmp_path, tiny_model_dir, name="empty",
                        tokenizer_config={"tokenizer_class": "LlamaTokenizer", "bos_token": "", "eos_token": "</s>",
                                          "unk_token": "<unk>"})
    assert detect(_config(empty))


def test_leaves_healthy_and_llama2_checkpoints_alone(tmp_path, tiny_model_dir, airo_env):
    from airo.plugins.llama1_patch import detect

    # The tiny model is llama with 2048 positions but correct tokenizer files.
    assert not detect(_config(tiny_model_dir))
    # llama-2 (4096 positions) with broken files: not llama-1, only patched on request.
    llama2 = _checkpoint(tmp_path, tiny_model_dir, max_positions=4096, tokenizer_config=DECAPODA_TOKENIZER_CONFIG,
                         special_tokens={}, name="llama2")
    assert not detect(_config(llama2))
    assert not detect(_config("some-org/some-hub-model"))


def test_load_tokenizer_applies_patch_automatically(decapoda, airo_env):
    """transformers cannot even load decapoda's files (empty unk -> recursion); the patch rebuilds them."""
    from airo.core.tokenizer import applied_patches, load_tokenizer

    config = _config(decapoda)
    assert applied_patches(config) == ["llama1"]
    _assert_patched(load_tokenizer(config))


def test_explicit_flag_and_opt_out(tiny_model_dir, decapoda, airo_env):
    from airo.core.errors import ConfigError
    from airo.core.tokenizer import applied_patches, load_tokenizer

    config = _config(tiny_model_dir, "--llama1_tokenizer_patch")
    assert applied_patches(config) == ["llama1"]
    _assert_patched(load_tokenizer(config))
    # --tokenizer_patches none: the broken files are used as they are, and fail clearly.
    with pytest.raises(ConfigError, match="cannot load the tokenizer"):
        load_tokenizer(_config(decapoda, "--tokenizer_patches", "none"))


def test_patched_tokenizer_is_legacy_like_the_seeds(decapoda, tiny_tokenizer_dir, tmp_path, airo_env):
    """The seed's LlamaTokenizer was legacy=True: text after a special token gets a leading
    space piece ("</s>y" -> "</s>", "▁y"). transformers 5 defaults to legacy=False."""
    from transformers import AutoTokenizer, LlamaTokenizer

    from airo.core.tokenizer import load_tokenizer

    text = "<s>[INST] x</s>y"
    legacy = LlamaTokenizer.from_pretrained(tiny_tokenizer_dir, legacy=True)
    expected = legacy(text)["input_ids"]
    assert expected != LlamaTokenizer.from_pretrained(tiny_tokenizer_dir, legacy=False)(text)["input_ids"]
    patched = load_tokenizer(_config(decapoda))
    assert patched(text)["input_ids"] == expected
    assert patched.tokenize(text) == legacy.tokenize(text)
    # airo's outputs keep it (transformers 5's save_pretrained does not write `legacy`)
    from airo.core.tokenizer import save_tokenizer

    save_tokenizer(patched, tmp_path / "saved")
    assert AutoTokenizer.from_pretrained(tmp_path / "saved")(text)["input_ids"] == expected


def test_patched_tokenizer_saves_and_reloads(decapoda, tmp_path, airo_env):
    from transformers import AutoTokenizer

    from airo.core.tokenizer import load_tokenizer

    tok = load_tokenizer(_config(decapoda))
    tok.save_pretrained(tmp_path / "saved")
    _assert_patched(AutoTokenizer.from_pretrained(tmp_path / "saved"), reloaded=True)


def test_loader_fixes_model_token_ids(decapoda, airo_env):
    """decapoda's config.json also had bos=0 eos=1 pad=-1: the loader makes them the tokenizer's."""
    from airo.plugins.loaders import load_qlora

    loaded = load_qlora(_config(decapoda, "--bits", "32", "--lora_r", "2"))
    cfg = loaded.model.config
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 0)

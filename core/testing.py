"""Helpers for testing airo plugins (and airo itself).

    from airo.core.testing import registered_plugin

    def test_my_format():
        with registered_plugin(MyPlugin()) as registry:
            assert "my-format" in registry.formats

The pytest fixture ``airo_plugin`` does the same for the length of one test; enable it
with ``pytest_plugins = ["airo.core.testing"]`` in your ``conftest.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from .plugins import get_plugin_manager
from .registry import Registry


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str | None = None) -> Iterator[Registry]:
    """Register ``plugin`` (a module, class or object with ``@hookimpl`` functions) for
    the duration of the block, and yield the registry that includes it.

    A plugin that is already loaded (a module installed through its entry point) is left
    as it is: the registry already includes it."""
    manager = get_plugin_manager()
    manager.load_entry_points()
    if manager.pm.is_registered(plugin):
        # Already loaded, e.g. through its own installed entry point: the registry has it.
        yield manager.registry()
        return
    plugin_name = manager.register(plugin, name=name)
    try:
        yield manager.registry()
    finally:
        manager.unregister(plugin_name)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    pytest = None

if pytest is not None:

    @pytest.fixture
    def airo_plugin():
        """Call ``airo_plugin(obj)`` to register a plugin until the test ends; returns the registry."""
        with contextlib.ExitStack() as stack:
            def register(plugin: Any, name: str | None = None) -> Registry:
                return stack.enter_context(registered_plugin(plugin, name))

            yield register


# -- tiny real models for tests and demos ---------------------------------------------------

_CORPUS_WORDS = (
    "the a an chat user assistant system what is two plus four five hello world you are unbiased uncensored "
    "helpful instruction response code python def return print list dict json answer question why how when "
    "where who tell me about story poem write explain sky blue because light scatters short wavelengths "
    "cat dog sun moon water fire earth air number count sum add one three six seven eight nine ten good bad "
    "yes no please thanks sure here is an example of a function that returns value"
).split()

_CORPUS_EXTRA = [
    "[INST] <<SYS>>\n<</SYS>>\n\n [/INST] USER: ASSISTANT: PLAINFORMAT ### Instruction: ### Input: ### Response:",
    "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>",
    "A chat. What is 2+2? 4 {}()[]:;.,!?'\"#*-_=+/\\|<>@$%^&~` 0 1 2 3 4 5 6 7 8 9",
    "héllo wörld café naïve 日本語 😀 ünïcödé",
]


def build_tiny_tokenizer(path, *, vocab_size: int = 600, legacy: bool = True) -> str:
    """Train a llama-style SentencePiece tokenizer (``<unk>``=0, ``<s>``=1, ``</s>``=2,
    byte fallback) in a second or two, and save it as a transformers tokenizer folder.

    ``legacy=True`` matches the llama-2 tokenizers people fine-tune: a word-boundary
    marker is prepended to the text after every special token.
    """
    import io
    import json
    import random
    from pathlib import Path

    import sentencepiece as spm

    rng = random.Random(0)
    lines = [" ".join(rng.choice(_CORPUS_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(3000)]
    lines += _CORPUS_EXTRA * 40
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
        split_digits=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, minloglevel=2,
        num_threads=1,
    )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "model_max_length": 2048,
        "clean_up_tokenization_spaces": False, "legacy": legacy, "padding_side": "right",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, indent=2))
    return str(out)


def build_tiny_llama(path, *, hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
                     tokenizer_from: str | None = None) -> str:
    """Save a randomly initialised ``LlamaForCausalLM`` with the tiny tokenizer beside it."""
    import shutil
    from pathlib import Path

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_from:
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(tokenizer_from) / name).exists():
                shutil.copy(Path(tokenizer_from) / name, out / name)
    else:
        build_tiny_tokenizer(out)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False,
    )
    config.airo_untrained = True  # `airo generate`/`chat` say its replies are noise (kept by merges)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out))
    return str(out)

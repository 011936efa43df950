"""`airo generate` / `airo chat` and the functions behind them (airo.plugins.inference).

The output folders are built as airo's save action builds them: a LoRA adapter (random,
non-zero LoRA weights so it visibly changes the model) with the tokenizer, its
chat_template and ``airo_training.json``; a QLoRA adapter trained on a real 4-bit base;
and a full model folder (the tiny llama with the tokenizer and chat_template).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

TEMPLATE = "llama-2"
NEW_TOKENS = 12


def _chat_template() -> str:
    from airo.core import api

    return api.registry().templates[TEMPLATE].template.chat_template


def _save_tokenizer(source: str, out: Path, chat_template: str | None) -> None:
    from transformers import AutoTokenizer

    from airo.core.tokenizer import save_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = chat_template
    save_tokenizer(tokenizer, out)


def _save_adapter(tiny_model_dir: str, out: Path, *, bits: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    info = {"base_model": str(Path(tiny_model_dir).resolve()), "peft": True, "bits": bits,
            "compute_dtype": "float32"}
    if bits == 4:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16,
                                          bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quantization,
                                                    dtype=torch.bfloat16)
    else:
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    if bits == 4:
        from airo.plugins.quantization import quantized_layout

        info.update(quant_type="nf4", double_quant=True, compute_dtype="bfloat16", **quantized_layout(model))
    model.save_pretrained(str(out))
    _save_tokenizer(tiny_model_dir, out, _chat_template())
    (out / "airo_training.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return _save_adapter(tiny_model_dir, tmp_path_factory.mktemp("inference") / "adapter", bits=16)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inference") / "full"
    shutil.copytree(tiny_model_dir, out)
    _save_tokenizer(tiny_model_dir, out, _chat_template())
    return out


@pytest.fixture(scope="module")
def loaded_adapter(adapter_dir):
    from airo.plugins.inference import load_for_inference

    return load_for_inference(adapter_dir)


def _template_ids(folder, messages) -> list[int]:
    """The prompt ids computed straight from the saved tokenizer, without airo."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def _reference_adapter_model(tiny_model_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter_dir)).eval()


def _greedy(model, prompt_ids, n=NEW_TOKENS) -> list[int]:
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


def run_cli_stdin(*args, input_text: str):
    """``run_cli`` with text on stdin (conftest's run_cli has no input)."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "airo.core", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), input=input_text, timeout=900)


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


# -- the CLI -----------------------------------------------------------------------------------

@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_generate_json_uses_chat_template_and_matches_direct_generate(adapter_dir, tiny_model_dir):
    proc = run_cli_stdin("generate", adapter_dir, "--prompt", "-", "--system", "be brief",
                         "--max_new_tokens", NEW_TOKENS, "--json", input_text="what is two plus two\n")
    assert proc.returncode == 0, proc.stderr
    (record,) = _json_lines(proc.stdout)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is two plus two"}]
    expected_prompt = _template_ids(adapter_dir, messages)
    assert record["prompt_ids"] == expected_prompt
    assert record["prompt"] == "what is two plus two"
    assert record["prompt_tokens"] == len(expected_prompt)
    assert "be brief" in record["rendered_prompt"] and "[INST]" in record["rendered_prompt"]
    assert record["completion_ids"] == _greedy(_reference_adapter_model(tiny_model_dir, adapter_dir), expected_prompt)
    assert record["completion_tokens"] == len(record["completion_ids"]) == NEW_TOKENS
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    assert record["completion"] == tokenizer.decode(record["completion_ids"], skip_special_tokens=True)
    assert "loaded LoRA adapter" in proc.stderr


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_chat_keeps_history_and_reset_clears_it(adapter_dir):
    lines = "hello there\nwhat is two plus four\n/reset\ntell me a story\n/exit\nnever read\n"
    proc = run_cli_stdin("chat", adapter_dir, "--max_new_tokens", 6, "--json", input_text=lines)
    assert proc.returncode == 0, proc.stderr
    first, second, third = _json_lines(proc.stdout)
    turn1 = [{"role": "user", "content": "hello there"}]
    assert first["prompt_ids"] == _template_ids(adapter_dir, turn1)
    turn2 = turn1 + [{"role": "assistant", "content": first["completion"].strip()},
                     {"role": "user", "content": "what is two plus four"}]
    assert second["prompt_ids"] == _template_ids(adapter_dir, turn2)
    assert "hello there" in second["rendered_prompt"]
    assert third["prompt_ids"] == _template_ids(adapter_dir, [{"role": "user", "content": "tell me a story"}])
    assert "(history cleared)" in proc.stderr


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_chat_streams_each_reply_of_a_full_model(model_dir):
    from airo.plugins.inference import ChatSession, load_for_inference

    proc = run_cli_stdin("chat", model_dir, "--system", "be kind", "--max_new_tokens", 8,
                         input_text="hi\n\nand you?\n")
    assert proc.returncode == 0, proc.stderr
    model, tokenizer, description = load_for_inference(model_dir)
    assert description.startswith(f"model {model_dir}")
    session = ChatSession(model, tokenizer, system="be kind", max_new_tokens=8)
    replies = [session.ask("hi")[0], session.ask("and you?")[0]]
    assert proc.stdout == "".join(reply + "\n" for reply in replies)


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_missing_folder_is_one_line_error(tmp_path, command):
    extra = ["--prompt", "hi"] if command == "generate" else []
    proc = run_cli_stdin(command, tmp_path / "nope", *extra, input_text="")
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "nope: no such folder" in proc.stderr


def test_bad_option_fails_before_the_model_loads(model_dir):
    proc = run_cli("generate", model_dir, "--prompt", "hi", "--temperature", "-1")
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: --temperature must be 0 (greedy) or more, got -1.0"


def test_folder_without_chat_template_is_one_line_error(tiny_model_dir, tmp_path):
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, folder)
    proc = run_cli("generate", folder, "--prompt", "hi")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert f"{folder}: the tokenizer has no chat_template" in line


# -- the functions -----------------------------------------------------------------------------

def test_greedy_generate_is_deterministic_and_the_adapter_is_applied(loaded_adapter, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from airo.plugins.inference import generate

    model, tokenizer, description = loaded_adapter
    messages = [{"role": "user", "content": "hello world"}]
    first = generate(model, tokenizer, messages, max_new_tokens=NEW_TOKENS)
    assert generate(model, tokenizer, messages, max_new_tokens=NEW_TOKENS) == first
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert (_logits(model, first[1]) - _logits(base, first[1])).abs().max() > 1e-3
    assert "float32 on cpu" in description


def test_sampling_with_a_seed_is_reproducible(loaded_adapter):
    from airo.plugins.inference import generate

    model, tokenizer, _ = loaded_adapter
    messages = [{"role": "user", "content": "tell me a story"}]
    runs = [generate(model, tokenizer, messages, max_new_tokens=10, temperature=1.5, top_k=0, top_p=0.95, seed=s)
            for s in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0][2] != runs[2][2]


def test_generation_stops_at_the_tokenizers_eos(loaded_adapter):
    """The saved tokenizer's EOS stops generation even where the model's generation_config names another."""
    import copy

    from airo.plugins.inference import generate

    model, tokenizer, _ = loaded_adapter
    messages = [{"role": "user", "content": "hello"}]
    _, prompt_ids, free = generate(model, tokenizer, messages, max_new_tokens=NEW_TOKENS)
    assert model.generation_config.eos_token_id not in free
    patched = copy.deepcopy(tokenizer)
    patched.eos_token = tokenizer.convert_ids_to_tokens(free[2])  # as if it were the model's third token
    _, patched_prompt, stopped = generate(model, patched, messages, max_new_tokens=NEW_TOKENS)
    assert patched_prompt == prompt_ids
    assert stopped == free[:free.index(free[2]) + 1]


def test_stream_prints_the_reply(loaded_adapter, capsys):
    from airo.plugins.inference import generate

    model, tokenizer, _ = loaded_adapter
    text, _, _ = generate(model, tokenizer, [{"role": "user", "content": "hi"}], max_new_tokens=8, stream=True)
    assert capsys.readouterr().out == text + "\n"


def test_end_of_turn_tokens_stop_generation(tiny_tokenizer_dir, loaded_adapter):
    from transformers import AutoTokenizer

    from airo.plugins.inference import _stop_ids

    model, _, _ = loaded_adapter
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    assert _stop_ids(model, tokenizer) == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_qlora_adapter_runs_on_the_base_training_saw(tiny_model_dir, tmp_path):
    """On CPU the QLoRA base is loaded in fp32 with each layer through the 4-bit round trip:
    the logits equal the adapter on a base dequantized independently with bitsandbytes, and
    differ from the adapter on the unquantized base."""
    import bitsandbytes as bnb
    import torch
    from bitsandbytes import functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from airo.plugins.inference import load_for_inference

    adapter = _save_adapter(tiny_model_dir, tmp_path / "qlora", bits=4)
    model, tokenizer, description = load_for_inference(adapter)
    assert "QLoRA: 14 base layers through the 4-bit nf4 round trip" in description

    quantized = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16, quantization_config=(
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16,
                           bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")))
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            reference.get_submodule(name).weight.data = F.dequantize_4bit(module.weight.data,
                                                                          module.weight.quant_state).float()
    reference = PeftModel.from_pretrained(reference, str(adapter)).eval()
    unquantized = _reference_adapter_model(tiny_model_dir, adapter)
    ids = _template_ids(adapter, [{"role": "user", "content": "hello world"}])
    got = _logits(model, ids)
    assert torch.allclose(got, _logits(reference, ids), atol=1e-4)
    assert (got - _logits(unquantized, ids)).abs().max() > 1e-3


@pytest.mark.parametrize("make, problem", [
    (lambda d: d / "missing", "no such folder"),
    (lambda d: (d / "file.txt").write_text("x") and d / "file.txt", "is a file"),
    (lambda d: d, "holds neither a LoRA adapter (adapter_config.json) nor a model (config.json)"),
])
def test_folder_kind_errors(tmp_path, make, problem):
    from airo.core.errors import ConfigError
    from airo.plugins.inference import folder_kind

    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        folder_kind(make(tmp_path))


def test_base_problems_are_config_errors(adapter_dir, model_dir, tmp_path):
    from airo.core.errors import ConfigError
    from airo.plugins.inference import load_for_inference

    with pytest.raises(ConfigError, match="--base applies to LoRA adapter folders"):
        load_for_inference(model_dir, base=str(adapter_dir))
    moved = tmp_path / "moved"
    shutil.copytree(adapter_dir, moved)
    info = json.loads((moved / "airo_training.json").read_text())
    (moved / "airo_training.json").write_text(json.dumps({**info, "base_model": str(tmp_path / "gone")}))
    with pytest.raises(ConfigError, match=r"the base model .*gone \(named by .*airo_training.json\) does not exist; "
                                          r"pass --base"):
        load_for_inference(moved)


@pytest.mark.parametrize("option, value", [("max_new_tokens", 0), ("temperature", -0.5), ("top_p", 0.0),
                                           ("top_k", -1), ("repetition_penalty", 0.0)])
def test_bad_generation_options_name_the_option(loaded_adapter, option, value):
    from airo.core.errors import ConfigError
    from airo.plugins.inference import generate

    model, tokenizer, _ = loaded_adapter
    with pytest.raises(ConfigError, match=f"--{option} must be"):
        generate(model, tokenizer, [{"role": "user", "content": "hi"}], **{option: value})


def test_template_that_cannot_render_is_a_config_error(loaded_adapter):
    import copy

    from airo.core.errors import ConfigError
    from airo.plugins.inference import render_prompt

    _, tokenizer, _ = loaded_adapter
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(ConfigError, match="cannot render this conversation: roles must alternate"):
        render_prompt(tokenizer, [{"role": "user", "content": "hi"}])


def test_a_reply_that_shows_nothing_says_what_it_was(tiny_tokenizer):
    """The demo printed 255 spaces as its answer with nothing to say so."""
    from airo.plugins.inference import invisible_reply

    assert invisible_reply(tiny_tokenizer, "4", [5]) is None
    assert invisible_reply(tiny_tokenizer, "", []) == "the model ended its reply at once (no tokens)"
    spaces = invisible_reply(tiny_tokenizer, " " * 255, [29871] * 255)
    assert spaces == "the reply is only whitespace: 255 whitespace characters ('        '...), 255 token(s)"
    assert invisible_reply(tiny_tokenizer, "\n", [13]) == "the reply is only whitespace: '\\n', 1 token(s)"
    special = invisible_reply(tiny_tokenizer, "", [0, 0, 1])
    assert special == "the reply is only special tokens: <unk> <unk> <s>"


def test_the_shipped_demo_model_says_it_is_untrained():
    import json

    from conftest import EXAMPLES

    assert json.loads((EXAMPLES / "tiny-llama" / "config.json").read_text())["airo_untrained"] is True

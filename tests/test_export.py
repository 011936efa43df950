"""GGUF export for llama.cpp and Ollama: the file holds the trained weights (an adapter merged
first), the tokenizer and the chat template; the Modelfile's TEMPLATE rebuilds the training
prompts; llama.cpp itself generates what transformers generates (slow, with llama-cpp-python)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import EXAMPLES

TINY = EXAMPLES / "tiny-llama"


# -- a Go template evaluator for the constructs the export writes ----------------------------------

_ACTION = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.S)


def _parse(template: str):
    """Tokens: ("text", s) or ("action", s)."""
    tokens, pos = [], 0
    for match in _ACTION.finditer(template):
        if match.start() > pos:
            tokens.append(("text", template[pos:match.start()]))
        tokens.append(("action", match.group(1)))
        pos = match.end()
    if pos < len(template):
        tokens.append(("text", template[pos:]))
    return tokens


def render_go(template: str, system: str | None, messages: list[dict]) -> str:
    """Ollama's view: ``.System`` and ``.Messages`` (roles user/assistant, a system message
    among them as Ollama passes it). Supports if/else if/else/end on .System, $later and
    eq .Role, range .Messages, variable set, literal strings."""
    tokens = _parse(template)
    out: list[str] = []
    variables: dict[str, bool] = {}

    def run(i: int, dot: dict, emit: bool, stop: tuple[str, ...]) -> int:
        while i < len(tokens):
            kind, value = tokens[i]
            if kind == "text":
                if emit:
                    out.append(value)
                i += 1
                continue
            if value in stop or any(value.startswith(s + " ") for s in stop if s == "else if"):
                return i
            if value.startswith('"') and value.endswith('"'):
                if emit:
                    out.append(json.loads(value))
                i += 1
            elif value in (".System", ".Content"):
                if emit:
                    out.append((system or "") if value == ".System" else dot["content"])
                i += 1
            elif value.startswith("$") and (":=" in value or "=" in value):
                name, _, literal = value.partition(":=") if ":=" in value else value.partition("=")
                if emit:
                    variables[name.strip()] = literal.strip() == "true"
                i += 1
            elif value.startswith("if "):
                i = run_if(i, dot, emit)
            elif value == "range .Messages":
                body = i + 1
                end = run(body, dot, False, ("end",))
                if emit:
                    for message in messages:
                        run(body, message, True, ("end",))
                i = end + 1
            else:
                raise AssertionError(f"unsupported action {value!r}")
        return i

    def condition(text: str, dot: dict) -> bool:
        if text == ".System":
            return bool(system)
        if text.startswith("$"):
            return variables.get(text, False)
        match = re.fullmatch(r'eq \.Role "(\w+)"', text)
        assert match, text
        return dot["role"] == match.group(1)

    def run_if(i: int, dot: dict, emit: bool) -> int:
        taken = False
        cond = tokens[i][1][3:]
        i += 1
        while True:
            this = emit and not taken and condition(cond, dot)
            i = run(i, dot, this, ("end", "else", "else if"))
            taken = taken or this
            value = tokens[i][1]
            if value == "end":
                return i + 1
            if value == "else":
                i = run(i + 1, dot, emit and not taken, ("end",))
                return i + 1
            cond = value[len("else if "):]
            i += 1

    run(0, {}, True, ())
    return "".join(out)


# -- the Modelfile template ------------------------------------------------------------------------

def _prompt(template, conv, bos: str, eos: str) -> str:
    """What airo's template gives the model before its last reply (BOS left out)."""
    segments = template.render(conv, bos_token=bos, eos_token=eos)
    last = max(i for i, s in enumerate(segments) if s.reply)
    text = "".join(s.text for s in segments[:last])
    return text[len(bos):] if text.startswith(bos) else text


CONVERSATIONS = [
    [("user", "Hi there")],
    [("system", "Be terse."), ("user", "Hi there")],
    [("user", "What is 2+2?"), ("assistant", "4."), ("user", "And 3+3?")],
    [("system", "You add numbers."), ("user", "1+1?"), ("assistant", "2"), ("user", "2+2?"), ("assistant", "4"),
     ("user", "3+3?")],
]


def test_the_modelfile_template_rebuilds_every_training_prompt(airo_env):
    from airo.core.plugins import get_registry
    from airo.core.types import Conversation, Message
    from airo.plugins.export import ollama_template

    registry = get_registry()
    with_form = []
    for name, entry in sorted(registry.templates.items()):
        ollama = ollama_template(entry.template, "<s>", "</s>")
        if ollama is None:
            continue
        with_form.append(name)
        for turns in CONVERSATIONS:
            conv = Conversation([Message(r, c) for r, c in [*turns, ("assistant", "reply")]])
            system = turns[0][1] if turns[0][0] == "system" else None
            messages = [{"role": r, "content": c} for r, c in turns]  # Ollama keeps the system message in them
            assert render_go(ollama.text, system, messages) == _prompt(entry.template, conv, "<s>", "</s>"), name
        assert "</s>" in ollama.stops
    # every built-in template has a Go form (a third party's may not: then Ollama uses the GGUF's)
    assert {"airoboros", "llama-2", "chatml", "llama-3", "alpaca", "vicuna"} <= set(with_form)


def test_a_template_without_a_per_turn_form_gets_none():
    from airo.core.types import Segment
    from airo.plugins.export import ollama_template

    class Reversed:  # renders the turns last to first: no text per turn rebuilds it
        def render(self, conversation, *, bos_token, eos_token):
            return [Segment(m.content, reply=m.role == "assistant") for m in reversed(conversation.messages)]

    assert ollama_template(Reversed(), "<s>", "</s>") is None


# -- the GGUF file ---------------------------------------------------------------------------------

def _reader(path):
    import gguf

    return gguf.GGUFReader(str(path))


def _field(reader, key):
    return reader.fields[key].contents()


def _tensor(reader, name):
    import gguf
    import numpy as np

    t = next(t for t in reader.tensors if t.name == name)
    data = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)]), t.tensor_type


def _permute(weights, n_head):
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


@pytest.mark.parametrize("quant, tolerance", [("f32", 0.0), ("f16", 1e-3), ("q8_0", 2e-2)])
def test_the_gguf_file_holds_the_weights_tokenizer_and_template(tmp_path, airo_env, quant, tolerance):
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from sentencepiece import SentencePieceProcessor

    from airo.plugins.export import export_gguf

    run = tmp_path / "run"
    import shutil

    shutil.copytree(TINY, run)
    config = json.loads((run / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (run / "tokenizer_config.json").write_text(json.dumps(config))
    result = export_gguf(run, tmp_path / "out", quant, log=lambda _: None)
    reader = _reader(result.gguf)

    hf = load_file(str(run / "model.safetensors"))
    q, q_type = _tensor(reader, "blk.0.attn_q.weight")
    np.testing.assert_allclose(q, _permute(hf["model.layers.0.self_attn.q_proj.weight"], 4), atol=tolerance * 4)
    emb, _ = _tensor(reader, "token_embd.weight")
    np.testing.assert_allclose(emb, hf["model.embed_tokens.weight"], atol=tolerance * 4)
    norm, norm_type = _tensor(reader, "blk.1.ffn_norm.weight")
    assert norm_type == gguf.GGMLQuantizationType.F32  # norms stay f32, as llama.cpp's converter keeps them
    np.testing.assert_array_equal(norm, hf["model.layers.1.post_attention_layernorm.weight"])
    expected = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]
    assert q_type == expected
    assert len(reader.tensors) == 2 * 9 + 3  # per block 9, plus embeddings, final norm, output

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(TINY / "tokenizer.model"))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert tokens[:sp.vocab_size()] == [sp.IdToPiece(i) for i in range(sp.vocab_size())]
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 1 and _field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert _field(reader, "tokenizer.chat_template") == config["chat_template"]
    assert _field(reader, "llama.attention.head_count") == 4 and _field(reader, "llama.block_count") == 2
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert f"FROM ./{Path(result.gguf).name}" in modelfile and 'PARAMETER stop "</s>"' in modelfile


def _adapter(tmp_path, template="chatml"):
    """A LoRA adapter on the tiny model with non-zero B (so merging changes the weights), as
    airo's save action leaves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    model.save_pretrained(str(adapter))
    AutoTokenizer.from_pretrained(str(TINY)).save_pretrained(str(adapter))
    (adapter / "airo_training.json").write_text(json.dumps({"base_model": str(TINY.resolve()), "peft": True,
                                                           "bits": None, "prompt_template": template}))
    merged = model.merge_and_unload()
    return adapter, {k: v.detach().numpy() for k, v in merged.state_dict().items()}


def test_an_adapter_is_merged_into_its_base_first(tmp_path, airo_env):
    import numpy as np
    from safetensors.numpy import load_file

    from airo.plugins.export import export_gguf

    adapter, merged = _adapter(tmp_path)
    result = export_gguf(adapter, tmp_path / "gguf", "f32", log=lambda _: None)
    reader = _reader(result.gguf)
    q, _ = _tensor(reader, "blk.0.attn_q.weight")
    base = load_file(str(TINY / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_allclose(q, _permute(merged["model.layers.0.self_attn.q_proj.weight"], 4), atol=1e-6)
    assert np.abs(q - _permute(base, 4)).max() > 1e-2  # the adapter's change is in the file
    modelfile = (tmp_path / "gguf" / "Modelfile").read_text()
    assert "<|im_start|>assistant" in modelfile and "prompt template: chatml" in modelfile
    assert not list(tmp_path.glob("airo-export-*"))


def test_export_refuses_before_writing(tmp_path, airo_env):
    import shutil

    from airo.core.errors import ConfigError
    from airo.plugins.export import export_gguf

    run = tmp_path / "run"
    shutil.copytree(TINY, run)
    with pytest.raises(ConfigError, match="--out .* same folder|inside"):
        export_gguf(run, run, "f16")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not write|airo"):
        export_gguf(run, user, "f16")
    assert (user / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="--quant must be one of"):
        export_gguf(run, tmp_path / "x", "q4_k_m")
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConfigError, match="llama-architecture"):
        export_gguf(other, tmp_path / "y", "f16")
    (run / "tokenizer.model").unlink()
    with pytest.raises(ConfigError, match="tokenizer.model"):
        export_gguf(run, tmp_path / "z", "f16", log=lambda _: None)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


# -- llama.cpp itself ------------------------------------------------------------------------------

def _greedy_transformers(model_dir, prompts_ids, n):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    for ids in prompts_ids:
        with torch.no_grad():
            generated = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                       pad_token_id=0, eos_token_id=None)
        out.append(generated[0, len(ids):].tolist())
    return out


def _greedy_llama_cpp(gguf_file, prompts_ids, n):
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_file), n_ctx=256, n_threads=2, verbose=False, logits_all=True)
    out = []
    for ids in prompts_ids:
        llm.reset()
        llm.eval(ids)
        tokens = []
        for _ in range(n):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tokens.append(token)
            llm.eval([token])
        out.append(tokens)
    return out, llm


@pytest.mark.slow
def test_llama_cpp_generates_what_transformers_generates(tmp_path, airo_env):
    pytest.importorskip("llama_cpp", reason="pip install -e '.[gguf-test]' builds llama.cpp's bindings")
    import shutil

    from transformers import AutoTokenizer

    from airo.plugins.export import export_gguf

    adapter, _ = _adapter(tmp_path, template="llama-2")
    merged_dir = tmp_path / "merged"
    from airo.plugins.merging import merge_adapter

    merge_adapter(None, str(adapter), str(merged_dir), dtype="float32", log=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    prompts = ["[INST] What is 2 + 2? [/INST]", "Once upon a time", "The capital of France is"]
    ids = [tokenizer(p).input_ids for p in prompts]
    expected = _greedy_transformers(merged_dir, ids, 12)

    f16 = export_gguf(adapter, tmp_path / "f16", "f16", log=lambda _: None)
    got, llm = _greedy_llama_cpp(f16.gguf, ids, 12)
    assert got == expected
    # llama.cpp's own tokenizer reads the embedded vocabulary as transformers does
    for prompt, want in zip(prompts, ids):
        assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == want
    llm.close()

    q8 = export_gguf(adapter, tmp_path / "q8", "q8_0", log=lambda _: None)
    got_q8, llm = _greedy_llama_cpp(q8.gguf, ids, 12)
    llm.close()
    agree = sum(a == b for want, have in zip(expected, got_q8) for a, b in zip(want, have))
    print(f"q8_0: {agree} of {12 * len(ids)} greedy tokens as transformers'")
    assert agree >= 0.75 * 12 * len(ids)  # 8-bit weights: small, stated divergence
    shutil.rmtree(tmp_path / "f16")


@pytest.mark.slow
def test_the_gguf_action_exports_a_trained_run(tmp_path, airo_env):
    """`--export_gguf q8_0` on the README demo: the merged model, after the merge action."""
    from conftest import REPO, run_cli

    runs = tmp_path / "runs"
    result = run_cli("train", REPO / "examples" / "demo.yaml", "--max_steps", 2, "--save_steps", 2,
                     "--eval_steps", 2, "--output_dir", runs / "a", "--working_dir", runs / "w",
                     "--merged_output_dir", runs / "m", "--export_gguf", "q8_0", cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    out = runs / "a-gguf"
    assert (out / "a-q8_0.gguf").is_file() and "[INST]" in (out / "Modelfile").read_text()
    reader = _reader(out / "a-q8_0.gguf")
    assert "[INST]" in _field(reader, "tokenizer.chat_template")  # the run's llama-2 chat template
    assert "post-training action: gguf" in result.stdout

"""The saved chat_template reproduces the training prompt ids, on every kind of tokenizer.

Tokenizers (all built here, no hub): SentencePiece llama legacy and non-legacy, the legacy
one re-saved by transformers (tokenizer.json only), and byte-level BPE ones (GPT-2 style
pre-tokenizer with and without an added BOS, and a llama-3 style one).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from airo.core import Conversation, Message
from airo.core.api import load_config
from airo.core.chat_parity import (
    check_chat_template,
    choose_chat_template,
    inference_prompt_ids,
    reload_as_saved,
    training_prompt_ids,
)
from airo.core.data.plan import resolve_plan
from airo.core.data.tokenize import prompt_prefix_length

WORDS = ("the a sky is blue because light scatters what two plus four hello world you are helpful tell me "
         "about story poem write code python def return print answer question why how cat dog sun moon").split()
MARKERS = ("[INST] <<SYS>>\n<</SYS>>\n\n [/INST] USER: ASSISTANT: PLAINFORMAT ### Instruction:\n### Response:\n"
           "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<|start_header_id|>user<|end_header_id|>\n\n"
           "<|eot_id|> A chat. What is 2+2? {}()[]:;.,!?'\"#*-_=+/\\|<>@$%^&~` héllo wörld 日本語 😀")

# Ordinary conversations: multi-turn, with and without a system message, whitespace the
# llama-2 reference strips or keeps, unicode, code, quotes.
CORPUS = [
    [("user", "What is 2+2?"), ("assistant", "4")],
    [("system", "You are a pirate."), ("user", "hello world"), ("assistant", "the sky is blue")],
    [("system", "   "), ("user", " tell me a story "), ("assistant", " once ")],
    [("system", ""), ("user", "q"), ("assistant", "a")],
    [("user", " u1 "), ("assistant", " r1 "), ("user", "\nu2\n"), ("assistant", "\nr2\n"), ("user", "why"),
     ("assistant", "because light scatters")],
    [("system", " Be nice.\n"), ("user", "Write code PLAINFORMAT"), ("assistant", "def f(): return 1"),
     ("user", "more"), ("assistant", "sure")],
    [("system", "héllo wörld"), ("user", "日本語 😀 ünïcödé"), ("assistant", "naïve café")],
    [("user", "```python\ndef f(x):\n    return {'a': x}\n```\n{{ bos_token }} {% if x %}no{% endif %}"),
     ("assistant", "it's \"fine\"")],
    [("user", "Add.\n\n### Input:\n2 and 2"), ("assistant", "4")],
]

TEMPLATES = ["airoboros", "llama-2", "chatml", "alpaca", "vicuna", "llama-3", "plain", "hh-rlhf", "oasst1"]


def conv(messages) -> Conversation:
    return Conversation([Message(role, content) for role, content in messages])


def as_dicts(conversation: Conversation) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in conversation.messages]


def config_for(template: str, **values):
    fmt = "airoboros" if template == "airoboros" else "airoboros_chat"
    return load_config(None, [], include_training=False, dataset_format=fmt, prompt_template=template, **values)


# -- the tokenizers ------------------------------------------------------------------------


def build_byte_level_bpe(*, add_bos: bool, llama3_split: bool = False):
    """A byte-level BPE tokenizer trained in a blink. ``llama3_split``: llama-3's pre-tokenizer
    regex (newline runs stay one piece) instead of GPT-2's."""
    import random

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(500)] + [MARKERS] * 20
    bpe = Tokenizer(models.BPE())
    if llama3_split:
        pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+")
        bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(lines, trainer=trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<s>", "</s>", "<unk>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   add_bos_token=add_bos)


@pytest.fixture(scope="module")
def tokenizers(tiny_tokenizer_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from airo.core.testing import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("parity-tokenizers")
    legacy = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    legacy.save_pretrained(str(root / "resaved"))  # what transformers alone writes: no `legacy`
    return {
        "sp-legacy": legacy,
        "sp-non-legacy": AutoTokenizer.from_pretrained(build_tiny_tokenizer(root / "non-legacy", legacy=False)),
        "sp-resaved": AutoTokenizer.from_pretrained(str(root / "resaved")),
        "bpe": build_byte_level_bpe(add_bos=True),
        "bpe-no-bos": build_byte_level_bpe(add_bos=False),
        "bpe-llama3": build_byte_level_bpe(add_bos=True, llama3_split=True),
    }


def test_the_tokenizers_are_what_the_parity_problem_is_about(tokenizers, tiny_tokenizer_dir):
    """After `<s>` in the text a legacy llama tokenizer adds a word boundary, a non-legacy one
    does not; transformers re-saves a llama tokenizer as tokenizer.json without `legacy`,
    and it comes back non-legacy; training's [BOS] + tok("[INST]") always has the boundary."""
    def pieces(name, text, special=False):
        tok = tokenizers[name]
        return tok.convert_ids_to_tokens(tok(text, add_special_tokens=special)["input_ids"])[:3]

    resaved = Path(tokenizers["sp-resaved"].name_or_path)
    assert (resaved / "tokenizer.json").is_file() and not (resaved / "tokenizer.model").exists()
    assert "legacy" not in json.loads((resaved / "tokenizer_config.json").read_text())
    assert pieces("sp-legacy", "<s>[INST]") == ["<s>", "▁", "["]
    for name in ("sp-non-legacy", "sp-resaved"):
        assert pieces(name, "<s>[INST]") == ["<s>", "[", "I"]
        assert pieces(name, "<s> [INST]") == ["<s>", "▁", "["]
    for name in ("sp-legacy", "sp-non-legacy", "sp-resaved"):
        assert pieces(name, "[INST]", special=True) == ["<s>", "▁", "["]
    assert pieces("bpe", "[INST]", special=True)[0] == "<s>"
    assert pieces("bpe-no-bos", "[INST]", special=True)[0] != "<s>"


# -- every tokenizer x every template ----------------------------------------------------------

# Which rendering of the opening BOS the reference tokenization ([BOS] + tok(source)) needs.
REFERENCE_VARIANT = {"sp-legacy": "default", "sp-non-legacy": "space-after-bos", "sp-resaved": "space-after-bos",
                     "bpe": "default", "bpe-no-bos": "no-bos", "bpe-llama3": "default"}


def _cases():
    for tokenizer in REFERENCE_VARIANT:
        for template in TEMPLATES:
            if template == "llama-3" and tokenizer in ("bpe", "bpe-no-bos"):
                continue  # GPT-2 pre-tokenization cannot give llama-3 parity: see the test below
            yield tokenizer, template, "auto"
        yield tokenizer, "llama-2", "all_replies"  # a source_target template on the whole-text path


@pytest.mark.parametrize("tokenizer_name, template_name, train_on", list(_cases()))
def test_chosen_chat_template_reproduces_training_prompts(tokenizers, tokenizer_name, template_name, train_on):
    tok = tokenizers[tokenizer_name]
    config = config_for(template_name, train_on=train_on)
    plan = resolve_plan(config)
    template = plan.template.template
    conversations = [conv(c) for c in CORPUS]
    result = check_chat_template(tok, template, conversations, plan, config)
    assert (result.matched, result.total) == (len(CORPUS), len(CORPUS)), result.first_mismatch
    reference = plan.tokenization == "reference"
    assert result.variant == (REFERENCE_VARIANT[tokenizer_name] if reference else "default")
    assert result.chat_template == template.chat_template_variants()[result.variant]
    # Independently of the pipeline's labels: the reference source with the tokenizer's own
    # special tokens, or the tokens before the last reply of the text tokenized in one pass.
    for conversation in conversations:
        got = inference_prompt_ids(tok, result.chat_template, as_dicts(conversation)[:-1])
        if reference:
            source, _ = template.source_target(conversation, bos_token=tok.bos_token, eos_token=tok.eos_token)
            assert got == tok(source, add_special_tokens=True)["input_ids"]
        else:
            segments = template.render(conversation, bos_token=tok.bos_token, eos_token=tok.eos_token)
            ids = tok("".join(s.text for s in segments), add_special_tokens=False)["input_ids"]
            assert got == ids[:prompt_prefix_length(tok, segments)]


def test_the_default_rendering_fails_every_conversation_on_a_non_legacy_tokenizer(tokenizers):
    """The observed problem: llama-2's own chat_template, 0 matches; the choice fixes it."""
    config = config_for("llama-2")
    plan = resolve_plan(config)
    result = check_chat_template(tokenizers["sp-resaved"], plan.template.template, [conv(c) for c in CORPUS],
                                 plan, config)
    assert result.counts == {"default": 0, "space-after-bos": len(CORPUS)}
    assert result.ok and result.message().startswith("chat_template reproduces the training prompts of 9 of 9")


def test_a_mismatch_no_rendering_can_fix_is_reported(tokenizers):
    """GPT-2 pre-tokenization splits llama-3's "\\n\\n" before a reply into two tokens, but
    keeps it one token at the end of the generation prompt."""
    config = config_for("llama-3")
    plan = resolve_plan(config)
    conversations = [(conv(c), f"data.jsonl, line {i + 1}") for i, c in enumerate(CORPUS)]
    result = check_chat_template(tokenizers["bpe"], plan.template.template, conversations, plan, config)
    assert (result.matched, result.total, result.variant) == (0, len(CORPUS), "default")
    assert result.first_mismatch.startswith("data.jsonl, line 1, token ")
    assert "'ĊĊ'" in result.first_mismatch
    assert result.message().startswith(f"warning: chat_template matches the training prompts for 0 of {len(CORPUS)} "
                                       "conversations; inference prompts will differ from training (first difference:")


def test_a_reply_glued_to_the_prompt_counts_as_one_mismatch(tokenizers):
    """A last reply starting with a newline merges with chatml's "assistant\\n" in training."""
    config = config_for("chatml")
    plan = resolve_plan(config)
    conversations = [conv(c) for c in CORPUS] + [conv([("user", "q"), ("assistant", "\n\nindented")])]
    result = check_chat_template(tokenizers["bpe"], plan.template.template, conversations, plan, config)
    assert (result.matched, result.total) == (len(CORPUS), len(CORPUS) + 1)
    assert result.first_mismatch.startswith(f"conversation {len(CORPUS) + 1}, token ")
    assert result.message().startswith(f"warning: chat_template matches the training prompts for {len(CORPUS)} of "
                                       f"{len(CORPUS) + 1} conversations; inference prompts will differ from "
                                       "training for the other 1 (first difference: conversation")


def test_airoboros_whole_text_path_drops_the_space_after_assistant(tokenizers):
    """The reference prompt ends with "ASSISTANT: "; tokenized with the reply
    (--train_on all_replies) that space joins the reply's first word."""
    config = config_for("airoboros", train_on="all_replies")
    plan = resolve_plan(config)
    words = [conv([("user", "hello"), ("assistant", "the sky is blue")]),
             conv([("system", "S"), ("user", "u1"), ("assistant", "r1"), ("user", "why"),
                   ("assistant", "because light scatters")])]
    result = check_chat_template(tokenizers["sp-non-legacy"], plan.template.template, words, plan, config)
    assert result.ok and result.variant == "no-space-after-assistant"
    # where the vocabulary has no "▁4", the space stays a token of the prompt
    digit = conv([("user", "What is 2+2?"), ("assistant", "4")])
    result = check_chat_template(tokenizers["sp-non-legacy"], plan.template.template, words + [digit], plan, config)
    assert (result.matched, result.total, result.variant) == (2, 3, "no-space-after-assistant")


def test_conversations_the_chat_template_cannot_express_are_left_out(tokenizers):
    config = config_for("airoboros")
    plan = resolve_plan(config)
    skip = Conversation([Message("user", "Continue: once"), Message("assistant", "upon")],
                        metadata={"skip_prompt_formatting": True})
    result = check_chat_template(tokenizers["sp-legacy"], plan.template.template, [conv(CORPUS[0]), skip], plan,
                                 config)
    assert (result.matched, result.total, result.not_covered) == (1, 1, 1)


@pytest.mark.parametrize("template, values", [
    ("llama-2", {"train_on_source": True}), ("llama-2", {"model_max_len": 16}),
    ("vicuna", {"train_on_source": True}), ("vicuna", {"model_max_len": 16}), ("vicuna", {"train_on": "last_reply"}),
])
def test_training_prompt_ids_do_not_depend_on_what_is_trained_or_the_length_limit(tokenizers, template, values):
    tok = tokenizers["sp-legacy"]
    conversation = conv(CORPUS[4])
    base = config_for(template)
    expected = training_prompt_ids(tok, resolve_plan(base), conversation, base)
    assert expected[0] == tok.bos_token_id and len(expected) > 20
    config = config_for(template, **values)
    assert training_prompt_ids(tok, resolve_plan(config), conversation, config) == expected


# -- from the run's data, as the save action does ------------------------------------------------


def _write_chat_records(path: Path, n: int, *, bad_line: bool = False, turns: int = 2) -> str:
    lines = []
    for i in range(n):
        exchanges = [[{"from": "human", "value": f"tell me about {i}"}, {"from": "gpt", "value": f"answer {i}"}],
                     [{"from": "human", "value": "why"}, {"from": "gpt", "value": "because"}]][:turns]
        lines.append(json.dumps({"id": str(i), "conversations": [{"from": "system", "value": "You are helpful."}]
                                 + [m for exchange in exchanges for m in exchange]}))
        if bad_line and i == 1:
            lines.append('{"conversations": "not a list"}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_choose_chat_template_reads_the_first_records_of_the_dataset(tokenizers, tmp_path):
    data = _write_chat_records(tmp_path / "chat.jsonl", 8, bad_line=True)
    config = load_config(None, [], include_training=False, dataset=data, dataset_format="airoboros_chat")
    tok = tokenizers["sp-non-legacy"]
    template = resolve_plan(config).template.template
    result = choose_chat_template(config, tok, template)
    assert (result.matched, result.total, result.variant) == (8, 8, "space-after-bos")  # the bad line is skipped
    assert choose_chat_template(config, tok, template, limit=4).total == 3  # 4 records, one bad


def test_choose_chat_template_checks_the_tokenizer_inference_will_load(tokenizers, tmp_path):
    """Trained with a legacy tokenizer, saved as one that came back non-legacy: the opening
    BOS can be made up for, a BOS inside the source (llama-2's later turns) cannot."""
    trained, saved = tokenizers["sp-legacy"], tokenizers["sp-resaved"]
    single = _write_chat_records(tmp_path / "single.jsonl", 4, turns=1)
    config = load_config(None, [], include_training=False, dataset=single, dataset_format="airoboros_chat")
    template = resolve_plan(config).template.template
    assert choose_chat_template(config, trained, template).variant == "default"
    result = choose_chat_template(config, trained, template, inference_tokenizer=saved)
    assert (result.matched, result.total, result.variant) == (4, 4, "space-after-bos")
    multi = _write_chat_records(tmp_path / "multi.jsonl", 4, turns=2)
    config = load_config(None, [], include_training=False, dataset=multi, dataset_format="airoboros_chat")
    result = choose_chat_template(config, trained, template, inference_tokenizer=saved)
    assert (result.total, result.counts) == (4, {"default": 0, "space-after-bos": 0, "no-bos": 0})
    assert result.variant == "default"  # nothing better: the template's own rendering is kept
    assert result.first_mismatch.startswith(f"{multi}, line 1, token 1: training ['<s>', '▁', '[']")


def test_choose_chat_template_without_conversations_says_why(tokenizers, tmp_path):
    tok = tokenizers["sp-legacy"]
    preprocessed = tmp_path / "prep"
    preprocessed.mkdir()
    (preprocessed / "airo_preprocessed.json").write_text("{}")
    missing = str(tmp_path / "gone.jsonl")
    for dataset, why in ((str(preprocessed), "`airo preprocess` output"), (missing, "cannot read")):
        config = load_config(None, [], include_training=False, dataset=dataset, dataset_format="airoboros_chat")
        result = choose_chat_template(config, tok, resolve_plan(config).template.template)
        assert result.total == 0 and why in result.note and result.chat_template is None
        assert result.message().startswith("warning: chat_template not checked against the training prompts: ")


def _ctx(config, tokenizer, template):
    logged: list[str] = []
    return SimpleNamespace(config=config, tokenizer=tokenizer, template=template, info={}, log=logged.append,
                           logged=logged)


def test_save_action_saves_the_rendering_that_reproduces_training(tokenizers, tmp_path):
    from transformers import AutoTokenizer

    from airo.core.tokenizer import save_tokenizer
    from airo.plugins.actions import set_chat_template

    data = _write_chat_records(tmp_path / "chat.jsonl", 5)
    config = load_config(None, [], include_training=False, dataset=data, dataset_format="airoboros_chat")
    plan = resolve_plan(config)
    tok = tokenizers["sp-resaved"]
    ctx = _ctx(config, tok, plan.template.template)
    try:
        set_chat_template(ctx)
        assert ctx.tokenizer.chat_template == plan.template.template.chat_template_variants()["space-after-bos"]
        assert ctx.info["chat_template_parity"] == {
            "matched": 5, "total": 5, "variant": "space-after-bos", "counts": {"default": 0, "space-after-bos": 5},
            "not_covered": 0, "skipped": 0, "first_mismatch": None}
        assert ctx.logged == ["chat_template reproduces the training prompts of 5 of 5 conversations "
                              "(rendering: space-after-bos)"]
        # what an inference engine gets from the saved folder
        save_tokenizer(tok, tmp_path / "saved")
        reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
        for record in Path(data).read_text().splitlines():
            conversation = plan.fmt.converter(json.loads(record))
            prompt = reloaded.apply_chat_template(as_dicts(conversation)[:-1], add_generation_prompt=True)
            assert list(prompt["input_ids"]) == training_prompt_ids(tok, plan, conversation, config)
    finally:
        tok.chat_template = None


def test_save_action_warns_when_no_rendering_matches(tokenizers, tmp_path):
    from airo.plugins.actions import set_chat_template

    data = _write_chat_records(tmp_path / "chat.jsonl", 3)
    config = load_config(None, [], include_training=False, dataset=data, dataset_format="airoboros_chat",
                         prompt_template="llama-3")
    template = resolve_plan(config).template.template
    ctx = _ctx(config, build_byte_level_bpe(add_bos=True), template)
    set_chat_template(ctx)
    assert ctx.tokenizer.chat_template == template.chat_template
    assert ctx.info["chat_template_parity"]["matched"] == 0 and ctx.info["chat_template_parity"]["total"] == 3
    assert len(ctx.logged) == 1 and ctx.logged[0].startswith(
        "warning: chat_template matches the training prompts for 0 of 3 conversations; inference prompts will "
        "differ from training")


def test_reload_as_saved_keeps_a_legacy_tokenizer_legacy(tokenizers):
    reloaded = reload_as_saved(tokenizers["sp-legacy"])
    text = "x</s><s>[INST] hi"
    assert reloaded(text)["input_ids"] == tokenizers["sp-legacy"](text)["input_ids"]


# -- batched tokenization gives the examples one call per text gives ------------------------------

def _random_chats(n: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)

    def text(lo, hi):
        pool = WORDS if rng.random() < 0.8 else MARKERS.split()
        return " ".join(rng.choice(pool) for _ in range(rng.randint(lo, hi)))

    records = []
    for i in range(n):
        conv = [{"from": "system", "value": text(1, 6)}] if rng.random() < 0.5 else []
        for _ in range(rng.choice((1, 1, 2, 3))):
            conv += [{"from": "human", "value": text(1, 10)}, {"from": "gpt", "value": text(1, 25)}]
        records.append({"id": str(i), "conversations": conv})
    return records


def _reference_one_call_per_text(tok, source: str, target: str, max_len: int):
    """The fork's algorithm as it wrote it: the length rule on the whole text, then source
    and target tokenized apart (nothing here reaches the truncation rules)."""
    bos, eos = tok.bos_token or "", tok.eos_token or ""
    if len(tok(bos + source + target + eos, add_special_tokens=False)["input_ids"]) >= max_len - 10:
        return None
    src = tok(source, add_special_tokens=True)["input_ids"]
    tgt = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(src) + len(tgt) <= max_len
    return src + tgt, [-100] * len(src) + tgt


def _whole_one_call(tok, segments, max_len: int):
    import bisect

    text = "".join(s.text for s in segments)
    starts = [sum(len(s.text) for s in segments[:i]) for i in range(len(segments))]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) > max_len:
        return None
    labels = [t if segments[max(0, bisect.bisect_right(starts, e - 1 if e > s else s) - 1)].reply else -100
              for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])]
    return list(enc["input_ids"]), labels


@pytest.mark.parametrize("tokenizer_name", ["sp-legacy", "sp-non-legacy", "sp-resaved", "bpe", "bpe-llama3"])
def test_batched_tokenization_equals_one_call_per_text(tokenizers, tokenizer_name, tiny_tokenizer_dir,
                                                       tmp_path, monkeypatch):
    """The pipeline tokenizes in chunks and runs the reference's whole-text length rule only
    near the limit; the examples and drops are those of one tokenizer call per text, on a
    length mix straddling the limit."""
    from airo.core.data import pipeline

    monkeypatch.setenv("AIRO_CACHE", "off")
    monkeypatch.setattr(pipeline, "CHUNK", 7)  # several chunks, one of them partial
    tok = tokenizers[tokenizer_name]
    records = _random_chats(120, seed=3)
    data = tmp_path / "chats.json"
    data.write_text(json.dumps(records))
    for train_on in ("last_reply", "all_replies"):
        def config(max_len):
            return load_config(None, ["--model_name_or_path", tiny_tokenizer_dir, "--output_dir", str(tmp_path / "o"),
                                      "--dataset", str(data), "--dataset_format", "airoboros_chat",
                                      "--train_on", train_on, "--model_max_len", str(max_len),
                                      "--eval_dataset_size", "0"])

        def expected_examples(max_len):
            template = resolve_plan(config(max_len)).template.template
            examples = []
            for record in records:
                conv = Conversation([Message({"human": "user", "gpt": "assistant"}.get(m["from"], m["from"]),
                                             m["value"]) for m in record["conversations"]])
                if train_on == "last_reply":
                    source, target = template.source_target(conv, bos_token=tok.bos_token or "",
                                                            eos_token=tok.eos_token or "")
                    examples.append(_reference_one_call_per_text(tok, source, target, max_len))
                else:
                    segments = template.render(conv, bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
                    examples.append(_whole_one_call(tok, segments, max_len))
            return examples

        # the median length: half the examples are dropped, many of them close to the limit
        max_len = sorted(len(ids) for ids, _ in expected_examples(10**6))[len(records) // 2]
        expected = [e for e in expected_examples(max_len) if e is not None]
        prepared = pipeline.prepare_datasets(config(max_len), tok, use_cache=False)
        got = list(zip(prepared.train["input_ids"], prepared.train["labels"]))
        assert got == [tuple(e) for e in expected], train_on
        assert prepared.report.dropped.get("too_long", 0) == len(records) - len(expected)
        assert 20 < len(expected) < 100, "the mix must straddle the limit"


@pytest.mark.parametrize("tokenizer_name", ["sp-legacy", "sp-non-legacy", "sp-resaved", "bpe", "bpe-llama3"])
def test_source_and_target_apart_are_within_a_few_tokens_of_the_whole_text(tokenizers, tokenizer_name):
    """Why the reference's length rule can be decided from the lengths of source and target
    (tokenized anyway) when they are more than PREFIX_MARGIN tokens from the limit: they
    differ from the whole text's length only where the texts and special tokens meet."""
    from airo.core.data.tokenize import PREFIX_MARGIN

    tok = tokenizers[tokenizer_name]
    template = resolve_plan(load_config(None, ["--model_name_or_path", "m", "--output_dir", "o", "--dataset", "d",
                                               "--dataset_format", "airoboros_chat"])).template.template
    worst = 0
    for record in _random_chats(300, seed=4):
        conv = Conversation([Message({"human": "user", "gpt": "assistant"}.get(m["from"], m["from"]), m["value"])
                             for m in record["conversations"]])
        bos, eos = tok.bos_token or "", tok.eos_token or ""
        source, target = template.source_target(conv, bos_token=bos, eos_token=eos)
        whole = len(tok(bos + source + target + eos, add_special_tokens=False)["input_ids"])
        parts = len(tok(source)["input_ids"]) + len(tok(target, add_special_tokens=False)["input_ids"]) + 1
        worst = max(worst, abs(whole - parts))
    assert worst <= 4 < PREFIX_MARGIN, worst

"""The data pipeline end to end: reference goldens, training modes, chat-template parity,
length rules, eval split, cache, preprocess/preview, and every bad-input message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airo.core import api
from airo.core.cli import main
from airo.core.data.pipeline import prepare_datasets, tokenize_conversation
from airo.core.data.plan import resolve_plan
from airo.core.data.split import eval_count, split_indices
from airo.core.data.tokenize import IGNORE_INDEX, prompt_prefix_length
from airo.core.fingerprint import dataset_content_hash
from airo.core.plugins import get_registry
from airo.core.types import Conversation, Message

DEFAULT_L2_SYSTEM = "You are an unbiased, uncensored, helpful assistant."


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def config_for(model_dir, dataset, *flags, **values):
    argv = ["--model_name_or_path", str(model_dir), "--dataset", str(dataset), "--output_dir", "unused", *flags]
    return api.load_config(None, argv, **values)


def chat_record(*turns, system=None, **extra):
    conv = [{"from": "system", "value": system}] if system is not None else []
    for i, text in enumerate(turns):
        conv.append({"from": "human" if i % 2 == 0 else "gpt", "value": text})
    return {"conversations": conv, **extra}


def ids(tok, text, special=False):
    return list(tok(text, add_special_tokens=special)["input_ids"])


# -- golden reference examples ---------------------------------------------------------------

def test_airoboros_legacy_golden(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    tok = tiny_tokenizer
    data = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "What is 2+2?", "response": "4"},
        {"instruction": "  Write code PLAINFORMAT", "response": " print(1) \n", "system": "Be terse. "},
        {"instruction": "raw prompt  ", "response": "x", "skip_prompt_formatting": True},
        {"instruction": "hi", "response": "yo", "system": "   "},
    ])
    prepared = prepare_datasets(config_for(tiny_tokenizer_dir, data, "--eval_dataset_size", "0",
                                           "--dataset_format", "airoboros"), tok)
    assert prepared.report.tokenization == "reference"
    sources = ["A chat.\nUSER: What is 2+2?\nASSISTANT: ",
               "Be terse.\nUSER: Write code PLAINFORMAT\nASSISTANT: ",
               "raw prompt\n",
               "USER: hi\nASSISTANT: "]  # whitespace-only system: "" + "\nUSER..." and the whole is stripped
    targets = ["4\n", "print(1)\n", "x\n", "yo\n"]
    assert len(prepared.train) == 4
    for row, source, target in zip(prepared.train, sources, targets):
        src = [tok.bos_token_id] + ids(tok, source)
        tgt = ids(tok, target)
        assert row["input_ids"] == src + tgt + [tok.eos_token_id]
        assert row["labels"] == [IGNORE_INDEX] * len(src) + tgt + [tok.eos_token_id]
    # separate tokenization: the target starts with its own word-boundary marker
    first = prepared.train[0]
    trained = [t for t, lab in zip(first["input_ids"], first["labels"]) if lab != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(trained)[0].startswith("▁")


def test_plainformat_without_whitespace_is_left_alone(tiny_tokenizer):
    template = get_registry().templates["airoboros"].template
    conv = Conversation([Message("user", "codePLAINFORMAT"), Message("assistant", "ok")])
    source, _ = template.source_target(conv, bos_token="<s>", eos_token="</s>")
    assert source == "A chat.\nUSER: codePLAINFORMAT PLAINFORMAT\nASSISTANT: "


def test_airoboros_chat_golden_multi_turn(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    tok = tiny_tokenizer
    rec = chat_record(" hello there ", "  general kenobi  ", "  what now? ", " fight \n")
    data = tmp_path / "c.json"
    data.write_text(json.dumps([rec, chat_record("sys q", "sys a", system=" Custom system. ")]))
    prepared = prepare_datasets(config_for(tiny_tokenizer_dir, data, "--eval_dataset_size", "0",
                                           "--dataset_format", "airoboros_chat"), tok)
    source = ("[INST] <<SYS>>\n" + DEFAULT_L2_SYSTEM + "\n<</SYS>>\n\n"
              " hello there  [/INST] general kenobi </s><s>[INST] what now? [/INST]")
    target = " fight \n"  # the last reply is not stripped
    row = prepared.train[0]
    src = ids(tok, source, special=True)
    tgt = ids(tok, target)
    assert src[0] == tok.bos_token_id
    assert row["input_ids"] == src + tgt + [tok.eos_token_id]
    assert row["labels"] == [IGNORE_INDEX] * len(src) + tgt + [tok.eos_token_id]
    # </s><s> inside the source are the special tokens, not characters
    inner = row["input_ids"][1:len(src)]
    pos = inner.index(tok.eos_token_id)
    assert inner[pos + 1] == tok.bos_token_id
    row2 = prepared.train[1]
    src2 = ids(tok, "[INST] <<SYS>>\n Custom system. \n<</SYS>>\n\nsys q [/INST]", special=True)
    assert row2["input_ids"][: len(src2)] == src2


def test_all_replies_trains_every_reply_with_its_eos(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    tok = tiny_tokenizer
    replies = ["first answer", "second answer here", "third one 42"]
    rec = chat_record("q one", replies[0], "q two", replies[1], "q three", replies[2], system="Sys.")
    data = write_jsonl(tmp_path / "c.jsonl", [rec])
    # (`plain` puts no marker between prompt and reply, so one-pass tokenization may merge
    # their characters into one token; it trains through the reference tokenization instead.)
    for template in ("llama-2", "chatml", "vicuna", "llama-3", "alpaca", "airoboros"):
        cfg = config_for(tiny_tokenizer_dir, data, "--eval_dataset_size", "0", "--dataset_format",
                         "airoboros_chat", "--train_on", "all_replies", "--prompt_template", template)
        prepared = prepare_datasets(cfg, tok, use_cache=False)
        row = prepared.train[0]
        spans, current = [], []
        for t, lab in zip(row["input_ids"], row["labels"]):
            if lab != IGNORE_INDEX:
                assert lab == t
                current.append(t)
            elif current:
                spans.append(current)
                current = []
        if current:
            spans.append(current)
        assert len(spans) == 3, (template, [tok.decode(s) for s in spans])
        for span, reply in zip(spans, replies):
            text = tok.decode(span)
            assert text.strip().startswith(reply), (template, text)
            end_marker = text.strip()[len(reply):].strip()
            assert end_marker in (tok.eos_token, "<|im_end|>", "<|eot_id|>"), (template, text)
        assert row["labels"][0] == IGNORE_INDEX  # BOS / first prompt token masked


def test_train_on_source_trains_everything(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a b", "response": "c"}])
    cfg = config_for(tiny_tokenizer_dir, data, "--eval_dataset_size", "0", "--train_on_source")
    row = prepare_datasets(cfg, tiny_tokenizer, use_cache=False).train[0]
    assert row["labels"] == row["input_ids"]


# -- chat_template parity ---------------------------------------------------------------------------

PARITY_CORPUS = [
    [Message("user", "What is 2+2?"), Message("assistant", "4")],
    [Message("system", "You are terse."), Message("user", "hi"), Message("assistant", "hello")],
    [Message("user", "  spaced  "), Message("assistant", " ok "), Message("user", "again\n"),
     Message("assistant", "fine")],
    [Message("system", "Sys"), Message("user", "héllo wörld 日本語 😀"), Message("assistant", "ünïcödé"),
     Message("user", "code:\n```python\ndef f():\n    return {'a': [1, 2]}\n```"), Message("assistant", "nice"),
     Message("user", "last?"), Message("assistant", "yes")],
]


def _chat_ids(tok, template, messages):
    rendered = tok.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                       chat_template=template.chat_template, add_generation_prompt=True,
                                       tokenize=True)
    return list(rendered["input_ids"] if isinstance(rendered, dict) or hasattr(rendered, "keys") else rendered)


@pytest.mark.parametrize("template_name", ["airoboros", "llama-2", "chatml", "alpaca", "vicuna", "llama-3", "plain"])
def test_chat_template_matches_training_prefix(template_name, tiny_tokenizer):
    tok = tiny_tokenizer
    template = get_registry().templates[template_name].template
    for messages in PARITY_CORPUS:
        conv = Conversation(list(messages))
        expected = _chat_ids(tok, template, messages[:-1])
        segments = template.render(conv, bos_token=tok.bos_token, eos_token=tok.eos_token)
        whole = ids(tok, "".join(s.text for s in segments))
        if template_name != "airoboros":
            # The legacy prompt ends in "ASSISTANT: " and SentencePiece glues that space to the
            # reply's first word when the whole text is tokenized at once, so only its reference
            # tokenization (source and target apart, checked below) can match the chat template.
            assert whole[: prompt_prefix_length(tok, segments)] == expected, (template_name, messages)
        if callable(getattr(template, "source_target", None)):
            source, _ = template.source_target(conv, bos_token=tok.bos_token, eos_token=tok.eos_token)
            assert ids(tok, source, special=True) == expected, (template_name, messages)


# -- length rules -------------------------------------------------------------------------------------

def test_excess_length_is_dropped_and_reported(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    long = " ".join(["word"] * 200)
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "short", "response": "ok"},
                                              {"instruction": long, "response": "ok"}])
    cfg = config_for(tiny_tokenizer_dir, data, "--eval_dataset_size", "0", "--model_max_len", "64")
    prepared = prepare_datasets(cfg, tiny_tokenizer, rejects_dir=str(tmp_path / "work"))
    assert len(prepared.train) == 1
    assert prepared.report.dropped == {"too_long": 1}
    rejects = [json.loads(x) for x in (tmp_path / "work" / "rejects.jsonl").read_text().splitlines()]
    assert rejects[0]["reason"] == "too_long" and "line 2" in rejects[0]["location"]


def test_reference_truncation_rules(tiny_tokenizer):
    from airo.core.data.tokenize import tokenize_source_target

    tok = tiny_tokenizer
    short_src, long_tgt = "question", " ".join(["answer"] * 100)
    ex = tokenize_source_target(tok, short_src, long_tgt, model_max_len=40, skip_excess_length=False)
    assert len(ex.input_ids) == 40 and ex.input_ids[-1] != tok.eos_token_id  # target cut, no EOS
    src_len = len(ids(tok, short_src, special=True))
    assert ex.labels[:src_len] == [IGNORE_INDEX] * src_len
    long_src = " ".join(["question"] * 600)
    ex = tokenize_source_target(tok, long_src, "ok", model_max_len=300, skip_excess_length=False)
    assert len(ex.input_ids) == 300 and ex.input_ids[-1] == tok.eos_token_id  # source cut, EOS kept
    assert ex.labels[-4:] == ex.input_ids[-4:] and ex.labels[-5] == IGNORE_INDEX
    ex = tokenize_source_target(tok, long_src, " ".join(["answer"] * 600), model_max_len=700,
                                skip_excess_length=False)
    assert len(ex.input_ids) == 700 and ex.input_ids[-1] != tok.eos_token_id  # both cut to half


# -- eval split ------------------------------------------------------------------------------------------

def test_eval_count_fraction_and_count():
    assert eval_count(0.02, 100) == 2
    assert eval_count(0.02, 10) == 1  # rounded up
    assert eval_count(2, 100) == 2
    assert eval_count(0, 100) == 0
    assert eval_count(500, 10) == 9


def test_split_is_stratified_and_seeded():
    metas = [{"category": "a"}] * 80 + [{"category": "b"}] * 20
    train, evals, key = split_indices(metas, 0.1, seed=11422)
    assert key == "category" and len(evals) == 10
    assert sum(1 for i in evals if metas[i]["category"] == "b") == 2
    assert split_indices(metas, 0.1, seed=11422)[1] == evals
    assert split_indices(metas, 0.1, seed=1)[1] != evals
    assert train == sorted(train)
    by_source = split_indices([{"source": "x"}] * 5 + [{"source": "y"}] * 5, 2, 0)
    assert by_source[2] == "source" and len(by_source[1]) == 2


def test_include_sources_and_expansion(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    rows = [chat_record("a", "b", source="keep", category="c1"),
            chat_record("q1", "r1", "q2", "r2", "q3", source="keep", category="c1"),  # trailing human dropped
            chat_record("x", "y", source="other")]
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    cfg = config_for(tiny_tokenizer_dir, data, "--eval_dataset_size", "0", "--dataset_format", "airoboros_chat",
                     "--include_sources", "keep", "--expand_conversations")
    prepared = prepare_datasets(cfg, tiny_tokenizer, use_cache=False)
    assert prepared.report.excluded_by_source == 1
    assert len(prepared.train) == 3  # 1 + 2 expanded turns
    texts = [tiny_tokenizer.decode([t for t, l in zip(r["input_ids"], r["labels"]) if l != IGNORE_INDEX])
             for r in prepared.train]
    assert [t.replace(tiny_tokenizer.eos_token, "").strip() for t in texts] == ["b", "r1", "r2"]


def test_eval_split_in_prepared_data(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    rows = [{"instruction": f"q{i}", "response": f"r{i}", "category": "even" if i % 2 else "odd"} for i in range(50)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = prepare_datasets(config_for(tiny_tokenizer_dir, data, "--eval_dataset_size", "0.1"), tiny_tokenizer)
    assert len(prepared.eval) == 5 and len(prepared.train) == 45
    assert prepared.report.stratified_by == "category"


# -- cache, preprocess, preview -------------------------------------------------------------------------

def test_second_run_reuses_the_cache(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"q{i}", "response": "r"} for i in range(5)])
    cfg = config_for(tiny_tokenizer_dir, data, "--eval_dataset_size", "0")
    first = prepare_datasets(cfg, tiny_tokenizer)
    assert not first.from_cache

    def boom(*a, **k):
        raise AssertionError("re-tokenized")

    import airo.core.data.pipeline as pipeline

    monkeypatch.setattr(pipeline, "tokenize_rendered", boom)
    second = prepare_datasets(cfg, tiny_tokenizer)
    assert second.from_cache and second.train["input_ids"] == first.train["input_ids"]
    # a changed file is a cache miss
    write_jsonl(tmp_path / "d.jsonl", [{"instruction": "other", "response": "r"}])
    with pytest.raises(AssertionError, match="re-tokenized"):
        prepare_datasets(cfg, tiny_tokenizer)


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_preprocess_writes_datasetdict_and_report(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env, capsys):
    import datasets

    rows = [{"instruction": f"q{i}", "response": f"r{i}"} for i in range(20)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "pre"
    code, stdout, err = run(capsys, "preprocess", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", data,
                            "--eval_dataset_size", "0", "--output", out)
    assert code == 0, err
    loaded = datasets.load_from_disk(str(out))
    assert list(loaded) == ["train"] and {"input_ids", "labels"} <= set(loaded["train"].column_names)
    # input-file order is kept without an eval split
    first_prompt = tiny_tokenizer.decode(loaded["train"][0]["input_ids"])
    assert "q0" in first_prompt and "q1" in tiny_tokenizer.decode(loaded["train"][1]["input_ids"])
    report = json.loads((out / "report.json").read_text())
    assert report["records_read"] == 20 and report["examples"] == {"train": 20} and report["dropped"] == {}
    # a training run can use the folder directly
    cfg = config_for(tiny_tokenizer_dir, out)
    reused = prepare_datasets(cfg, tiny_tokenizer)
    assert reused.from_cache and len(reused.train) == 20
    assert reused.data_fingerprint == dataset_content_hash(str(out)) is not None
    assert json.loads((out / "airo_preprocessed.json").read_text())["data_fingerprint"] == \
        dataset_content_hash(str(data))


def test_preview_json(tmp_path, tiny_tokenizer_dir, airo_env, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "What is 2+2?", "response": "4"}])
    code, stdout, err = run(capsys, "preview", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", data,
                            "--eval_dataset_size", "0", "-n", "1", "--json")
    assert code == 0, err
    (example,) = json.loads(stdout)
    trained = "".join(p["text"] for p in example["tokens"] if p["trained"])
    assert trained == " 4\n</s>" and example["num_trained"] == 4  # "▁", "4", "\n", "</s>"
    # each token shows the text it adds, spaces included, so the pieces spell the example
    assert "".join(p["text"] for p in example["tokens"]) == "<s> A chat.\nUSER: What is 2+2?\nASSISTANT:  4\n</s>"
    code, stdout, err = run(capsys, "preview", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", data,
                            "--eval_dataset_size", "0", "-n", "1")
    assert code == 0 and "trained" in stdout


# -- bad input ----------------------------------------------------------------------------------------------

BAD_CASES = [
    ("malformed.jsonl", b'{"instruction": "a", "response": "b"}\n{"instruction": "a", "response": \n',
     "airoboros", ["malformed.jsonl, line 2", "malformed JSON"]),
    ("missing.jsonl", b'{"instruction": "a"}\n', "airoboros", ["missing.jsonl, line 1", "response"]),
    ("wrongtype.jsonl", b'{"instruction": 5, "response": "b"}\n', "airoboros", ["line 1", "instruction"]),
    ("emptyconv.json", b'[{"conversations": []}]', "airoboros_chat", ["emptyconv.json, record 0", "empty"]),
    ("order.json", b'[{"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]}]',
     "airoboros_chat", ["record 0", "order"]),
    ("enduser.json", b'[{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, '
                     b'{"from": "human", "value": "c"}]}]', "airoboros_chat", ["record 0", "user turn"]),
    ("empty.jsonl", b"", "airoboros", ["empty.jsonl", "no records"]),
    ("utf8.jsonl", b'{"instruction": "ok", "response": "b"}\n{"instruction": "\xff\xfe", "response": "b"}\n',
     "airoboros", ["utf8.jsonl, line 2", "UTF-8"]),
]


@pytest.mark.parametrize("name,content,fmt,needles", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_names_file_line_and_problem(name, content, fmt, needles, tmp_path, tiny_tokenizer_dir,
                                               airo_env, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    code, _, err = run(capsys, "preprocess", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", path,
                       "--dataset_format", fmt, "--output", tmp_path / "out")
    assert code != 0
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_unknown_format_and_template_suggest(tmp_path, tiny_tokenizer_dir, airo_env, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "response": "b"}])
    code, _, err = run(capsys, "preprocess", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", data,
                       "--dataset_format", "airoboros_chta", "--output", tmp_path / "o")
    assert code != 0 and "unknown dataset format 'airoboros_chta'" in err and "airoboros_chat" in err
    code, _, err = run(capsys, "preprocess", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", data,
                       "--prompt_template", "chatlm", "--output", tmp_path / "o")
    assert code != 0 and "unknown prompt template 'chatlm'" in err and "chatml" in err


def test_skip_mode_counts_and_writes_rejects(tmp_path, tiny_tokenizer_dir, airo_env, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"instruction": "a", "response": "b"}\n'
                     b'{"instruction": "a", "response": \n'
                     b'{"instruction": "a"}\n'
                     b'{"instruction": "c", "response": "d"}\n'
                     b'\xff\n')
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "preprocess", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", path,
                            "--on_bad_record", "skip", "--eval_dataset_size", "0", "--output", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["records_read"] == 5 and report["examples"] == {"train": 2}
    assert report["dropped"] == {"malformed_json": 1, "invalid_record": 1, "invalid_utf8": 1}
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"].split(", ")[-1] for r in rejects] == ["line 2", "line 3", "line 5"]
    assert "response" in rejects[1]["problem"] and rejects[1]["record"] == {"instruction": "a"}
    assert "dropped" in stdout


@pytest.mark.parametrize("limit", [None, "3"])
def test_one_pass_without_eval_split_equals_two_passes(limit, tmp_path, tiny_tokenizer_dir, tiny_tokenizer,
                                                       airo_env, monkeypatch):
    """Without an eval split the data is read once; what comes out (examples, counts, drops,
    also of records past --max_train_samples) is what the two-pass path makes."""
    from airo.core.data import pipeline

    rows = [chat_record(f"question {i}", f"answer {i} " * (i % 7)) for i in range(1500)]
    rows[4] = {"conversations": [{"from": "human"}]}
    rows[1400] = {"conversations": "nope"}  # past the limit: still checked and counted
    rows[700] = chat_record("long " * 400, "x")
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    flags = ["--eval_dataset_size", "0", "--dataset_format", "airoboros_chat", "--on_bad_record", "skip",
             "--model_max_len", "256"] + (["--max_train_samples", limit] if limit else [])
    one = prepare_datasets(config_for(tiny_tokenizer_dir, data, *flags), tiny_tokenizer, use_cache=False)
    calls = []
    monkeypatch.setattr(pipeline, "_one_pass", lambda *a: calls.append(1) or pipeline._two_passes(*a))
    two = prepare_datasets(config_for(tiny_tokenizer_dir, data, *flags), tiny_tokenizer, use_cache=False)
    assert calls and one.eval is None and two.eval is None
    assert one.train[:] == two.train[:]
    assert len(one.train) == (int(limit) if limit else 1497)
    for field in ("records_read", "conversations", "dropped", "examples", "tokens", "trained_tokens"):
        assert getattr(one.report, field) == getattr(two.report, field), field
    assert one.report.records_read == 1500 and one.report.conversations == 1498
    # past the limit nothing is tokenized, so a record too long is not known to be
    assert one.report.dropped == {"invalid_record": 2, **({} if limit else {"too_long": 1})}


def test_other_file_types(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    import csv

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": "q1", "response": "r1"}, {"instruction": "q2", "response": "r2"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["instruction", "response"])
        w.writeheader()
        w.writerows(rows)
    with open(tmp_path / "d.tsv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["instruction", "response"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "saved"))
    reference = None
    for name in ("d.parquet", "d.csv", "d.tsv", "d.json"):
        prepared = prepare_datasets(config_for(tiny_tokenizer_dir, tmp_path / name, "--eval_dataset_size", "0"),
                                    tiny_tokenizer, use_cache=False)
        reference = reference or prepared.train["input_ids"]
        assert prepared.train["input_ids"] == reference, name
    saved = prepare_datasets(config_for(tiny_tokenizer_dir, tmp_path / "saved"), tiny_tokenizer, use_cache=False)
    assert len(saved.train) == 2 and len(saved.eval) == 1  # the dataset's own split is used


def test_hub_name_fails_clearly_offline(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env, monkeypatch):
    from airo.core.errors import DataError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot load dataset 'someone/nonexistent-dataset' from the Hub"):
        prepare_datasets(config_for(tiny_tokenizer_dir, "someone/nonexistent-dataset"), tiny_tokenizer,
                         use_cache=False)


# -- hostile and odd input (found in review) ------------------------------------------------------

def test_preprocess_never_deletes_a_foreign_folder(tmp_path, tiny_tokenizer_dir, airo_env, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "response": "b"}])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    code, _, err = run(capsys, "preprocess", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", data,
                       "--output", precious)
    assert code != 0 and "will not touch them" in err
    assert (precious / "thesis.txt").read_text() == "years of work"
    out = tmp_path / "pre"
    for _ in range(2):  # an earlier preprocess output is replaced
        code, _, err = run(capsys, "preprocess", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", data,
                           "--output", out, "--eval_dataset_size", "0")
        assert code == 0, err


def test_single_record_json_bom_and_csv_details(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    single = tmp_path / "one.json"
    single.write_text(json.dumps(chat_record("hi", "hello")))
    prepared = prepare_datasets(config_for(tiny_tokenizer_dir, single, "--dataset_format", "airoboros_chat"),
                                tiny_tokenizer, use_cache=False)
    assert len(prepared.train) == 1
    for name, payload in (("bom.jsonl", '{"instruction": "a", "response": "b"}\n'),
                          ("bom.json", '[{"instruction": "a", "response": "b"}]')):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + payload.encode())
        assert len(prepare_datasets(config_for(tiny_tokenizer_dir, tmp_path / name), tiny_tokenizer,
                                    use_cache=False).train) == 1
    (tmp_path / "d.csv").write_text('instruction,response,skip_prompt_formatting\n'
                                    'hello,world,False\n"form\x0cfeed",ok,\n', newline="")
    prepared = prepare_datasets(config_for(tiny_tokenizer_dir, tmp_path / "d.csv", "--eval_dataset_size", "0"),
                                tiny_tokenizer, use_cache=False)
    assert len(prepared.train) == 2  # \x0c inside a field does not split the row
    assert "USER: hello" in tiny_tokenizer.decode(prepared.train[0]["input_ids"])  # "False" is false


def test_converter_crash_is_a_bad_record_with_its_line(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    from airo.core.errors import DataError

    data = write_jsonl(tmp_path / "c.jsonl", [chat_record("a", "b"),
                                              {"conversations": [{"from": {"a": 1}, "value": "x"}]}])
    cfg = config_for(tiny_tokenizer_dir, data, "--dataset_format", "airoboros_chat", "--eval_dataset_size", "0")
    with pytest.raises(DataError, match=r"c.jsonl, line 2: .*'from'"):
        prepare_datasets(cfg, tiny_tokenizer, use_cache=False)
    skip = config_for(tiny_tokenizer_dir, data, "--dataset_format", "airoboros_chat", "--eval_dataset_size", "0",
                      "--on_bad_record", "skip")
    assert len(prepare_datasets(skip, tiny_tokenizer, use_cache=False).train) == 1


def test_all_bad_in_skip_mode_still_writes_rejects(tmp_path, tiny_tokenizer_dir, airo_env, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"instruction": "a"}\n{"nope": 1}\n')
    out = tmp_path / "out"
    args = ("preprocess", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", path, "--on_bad_record", "skip",
            "--output", out, "--eval_dataset_size", "0")
    code, _, err = run(capsys, *args)
    assert code != 0 and "no training examples left" in err and "bad.jsonl, line 1" in err
    # The rejects go beside the output folder, which is not created: a re-run is not blocked.
    beside = tmp_path / "out.rejects.jsonl"
    assert str(beside) in err and not out.exists()
    assert len(beside.read_text().splitlines()) == 2
    path.write_bytes(b'{"instruction": "a", "response": "b"}\n{"nope": 1}\n')
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 1
    assert not beside.exists()  # the failed run's rejects are gone with the failure
    before = sorted(p.name for p in out.iterdir())
    path.write_bytes(b'{"nope": 1}\n')  # a failing run leaves the earlier output as it was
    code, _, err = run(capsys, *args)
    assert code != 0 and str(beside) in err and len(beside.read_text().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == before
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 1


def test_reused_folder_refuses_other_data_options(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env, capsys):
    from airo.core.errors import ConfigError

    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"q{i}", "response": "r"} for i in range(4)])
    out = tmp_path / "pre"
    assert run(capsys, "preprocess", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", data,
               "--output", out, "--eval_dataset_size", "0")[0] == 0
    with pytest.raises(ConfigError, match="--train_on_source True"):
        prepare_datasets(config_for(tiny_tokenizer_dir, out, "--train_on_source"), tiny_tokenizer)
    source = config_for(tiny_tokenizer_dir, data, "--train_on_source", "--eval_dataset_size", "0")
    assert prepare_datasets(source, tiny_tokenizer, use_cache=False).train_on == "everything"


def test_cache_key_follows_the_template_values(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    from airo.core import hookimpl
    from airo.core.plugins import get_plugin_manager
    from airo.core.templating import MarkerTemplate

    data = write_jsonl(tmp_path / "c.jsonl", [chat_record("q", "a")])

    def plugin(marker):
        class Plugin:
            @hookimpl
            def register_prompt_templates(self, register):
                register("mine", MarkerTemplate(name="mine", description="", user=marker + "{content}\n",
                                                assistant_open="", reply="{content}{eos}"))
        return Plugin()

    results = []
    for marker in ("Q: ", "Question: "):
        name = get_plugin_manager().register(plugin(marker), name=f"mine-{len(marker)}")
        # the config checks --prompt_template against the registered templates
        cfg = config_for(tiny_tokenizer_dir, data, "--dataset_format", "airoboros_chat", "--prompt_template", "mine",
                         "--eval_dataset_size", "0")
        results.append(prepare_datasets(cfg, tiny_tokenizer))
        get_plugin_manager().unregister(name)
    assert not results[1].from_cache
    assert results[0].train["input_ids"] != results[1].train["input_ids"]


def test_odd_option_values(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    import datasets

    from airo.core.errors import ConfigError, DataError

    for argv, message in ((["--eval_dataset_size", "nan"], "eval_dataset_size"),
                          (["--max_train_samples", "0"], "at least 1"),
                          (["--max_train_samples", "1.5"], "invalid value .1.5.")):
        with pytest.raises(ConfigError, match=message):
            config_for(tiny_tokenizer_dir, "x.jsonl", *argv)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("include_sources: [a, b]\noutput_dir: o\n")
    assert api.load_config(str(yaml_file)).data.include_sources == "a,b"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list([{"instruction": "a", "response": "b"}])}) \
        .save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match="no 'train' split.*validation"):
        prepare_datasets(config_for(tiny_tokenizer_dir, tmp_path / "saved"), tiny_tokenizer, use_cache=False)


def test_tokenizer_without_offsets_is_a_clear_error(tiny_tokenizer):
    from airo.core.data.tokenize import tokenize_segments
    from airo.core.errors import ConfigError
    from airo.core.types import Segment

    class SlowTokenizer:
        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            if return_offsets_mapping:
                raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
            return tiny_tokenizer(text, add_special_tokens=add_special_tokens)

    with pytest.raises(ConfigError, match="cannot map tokens to characters"):
        tokenize_segments(SlowTokenizer(), [Segment("q "), Segment("a", reply=True)], mode="all_replies",
                          model_max_len=64)


def test_split_indices_are_pinned():
    """The eval split of a seed never changes (values from before the split was streamed)."""
    metas = [{"category": c} for c in "aabacbbbcaaaaccbabab"] + [{}] * 3 + [{"category": 5}, {"category": "5"}]
    assert split_indices(metas, 0.3, 11422)[1:] == ([1, 3, 9, 13, 15, 17, 20, 24], "category")
    assert split_indices([{"source": s} for s in "xyxxyyzx"], 3, 7)[1:] == ([0, 1, 3], "source")
    assert split_indices([{}] * 30, 0.2, 3)[1:] == ([4, 7, 11, 17, 18, 19], None)


def test_truncate_excess_keeps_the_start_of_long_examples(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    from airo.core.errors import ConfigError

    long_reply = " ".join(["the answer is long"] * 60)
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"q{i}", "response": long_reply if i % 2 else "short"}
                                              for i in range(6)])
    for train_on in ("last_reply", "all_replies"):
        common = ("--eval_dataset_size", "0", "--model_max_len", "64", "--train_on", train_on)
        dropped = prepare_datasets(config_for(tiny_tokenizer_dir, data, *common), tiny_tokenizer, use_cache=False)
        assert len(dropped.train) == 3 and dropped.report.dropped["too_long"] == 3
        assert any("--truncate_excess" in line for line in dropped.report.summary_lines())
        kept = prepare_datasets(config_for(tiny_tokenizer_dir, data, *common, "--truncate_excess"), tiny_tokenizer,
                                use_cache=False)
        assert len(kept.train) == 6 and not kept.report.dropped
        assert sorted(len(ids) for ids in kept.train["input_ids"])[-3:] == [64, 64, 64]
        same = prepare_datasets(config_for(tiny_tokenizer_dir, data, *common, "--skip_excess_length", "false"),
                                tiny_tokenizer, use_cache=False)
        assert same.train["input_ids"] == kept.train["input_ids"] and same.train["labels"] == kept.train["labels"]
    assert config_for(tiny_tokenizer_dir, data, "--truncate_excess").data.skip_excess_length is False
    assert config_for(tiny_tokenizer_dir, data, "--skip_excess_length", "false").data.truncate_excess is True
    with pytest.raises(ConfigError, match="--skip_excess_length.*--truncate_excess"):
        config_for(tiny_tokenizer_dir, data, "--skip_excess_length", "true", "--truncate_excess")

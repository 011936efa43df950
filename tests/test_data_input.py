"""Hostile and odd input: huge CSV fields, deep JSON, streamed JSON arrays at every chunk
boundary, template crashes, content-keyed cache, rejects kept on disk, and the length
check that drops a huge record without tokenizing it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from airo.core import Segment, api, hookimpl
from airo.core.data import io as data_io
from airo.core.data.pipeline import prepare_datasets
from airo.core.errors import DataError


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def config_for(model_dir, dataset, *flags):
    return api.load_config(None, ["--model_name_or_path", str(model_dir), "--dataset", str(dataset),
                                  "--output_dir", "unused", "--eval_dataset_size", "0", *flags])


def records_of(path):
    out = []
    for item in data_io.read_file(str(path)):
        out.append(("error", item.location, item.reason) if isinstance(item, DataError)
                   else ("record", item.location, item.record))
    return out


# -- CSV --------------------------------------------------------------------------------------------

def test_csv_field_over_128_kb_just_works(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    big = "word " * 60_000  # 300 KB, over the csv module's default 128 KB field limit
    (tmp_path / "d.csv").write_text(f'instruction,response\nhi,"{big}"\nq,a\n', newline="")
    prepared = prepare_datasets(config_for(tiny_tokenizer_dir, tmp_path / "d.csv", "--model_max_len", "64"),
                                tiny_tokenizer, use_cache=False)
    assert len(prepared.train) == 1 and prepared.report.dropped == {"too_long": 1}


def test_csv_error_is_a_located_skippable_bad_record(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env,
                                                     monkeypatch):
    import csv

    monkeypatch.setattr(data_io, "_CSV_FIELD_LIMIT", 1000)  # any csv.Error will do; this one is easy to make
    (tmp_path / "d.csv").write_text(f"instruction,response\nq1,a1\nq2,{'x' * 2000}\nq3,a3\n", newline="")
    previous = csv.field_size_limit()
    try:
        with pytest.raises(DataError, match=r"d\.csv, line 3: malformed CSV: field larger than field limit"):
            prepare_datasets(config_for(tiny_tokenizer_dir, tmp_path / "d.csv"), tiny_tokenizer, use_cache=False)
        prepared = prepare_datasets(config_for(tiny_tokenizer_dir, tmp_path / "d.csv", "--on_bad_record", "skip"),
                                    tiny_tokenizer, use_cache=False)
    finally:
        csv.field_size_limit(previous)
    assert len(prepared.train) == 2 and prepared.report.dropped == {"malformed_csv": 1}
    assert prepared.report.rejects[0]["location"].endswith("d.csv, line 3")


def test_csv_invalid_utf8_names_its_line(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"instruction,response\nq,a\nq2,\xff\n")
    with pytest.raises(DataError, match=r"d\.csv, line 3: invalid UTF-8"):
        records_of(tmp_path / "d.csv")


# -- deep JSON ----------------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def test_deep_jsonl_line_is_a_located_bad_record(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "q", "response": "a"}\n{"x": ' + DEEP + "}\n"
                    '{"instruction": "q2", "response": "a2"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl, line 2: JSON nested too deeply"):
        prepare_datasets(config_for(tiny_tokenizer_dir, path), tiny_tokenizer, use_cache=False)
    skip = prepare_datasets(config_for(tiny_tokenizer_dir, path, "--on_bad_record", "skip"), tiny_tokenizer,
                            use_cache=False)
    assert len(skip.train) == 2 and skip.report.dropped == {"too_deeply_nested": 1}


@pytest.mark.parametrize("chunk", [16, 1 << 20])
def test_deep_json_element_is_skipped_and_the_array_goes_on(chunk, tmp_path, monkeypatch):
    monkeypatch.setattr(data_io, "_CHUNK", chunk)
    path = tmp_path / "d.json"
    path.write_text('[{"a": 1}, {"deep": ' + DEEP + ', "s": "]]}\\""}, {"b": 2}]')
    assert records_of(path) == [("record", f"{path}, record 0", {"a": 1}),
                                ("error", f"{path}, record 1", "too_deeply_nested"),
                                ("record", f"{path}, record 2", {"b": 2})]
    path.write_text("{\"deep\": " + DEEP + "}")  # a lone record
    assert records_of(path) == [("error", f"{path}, record 0", "too_deeply_nested")]


# -- streamed JSON arrays -----------------------------------------------------------------------------

SHAPES = {
    "array": '\ufeff[{"a": "x\\u00e9\\ud83d\\ude00"}, 5, {"b": [1, 2.5e3, -7]}, {"c": "\\" ] } ,"} ]',
    "wrapper": '{ "data" : [{"a": 1}, {"b": 2}] }\n',
    "wrapper_with_more_keys": '{"data": [{"a": 1}], "meta": 2}',
    "lines": '{"a": 1}\n{"b": 2}\n',
    "wrapper_then_lines": '{"data": [{"a": 1}]}\n{"b": 2}\n',
    "lone": '{"conversations": [{"from": "human", "value": "hi"}]}',
    "empty_array": "[ ]",
    "blank": " \n",
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_json_reader_gives_the_same_records_at_every_chunk_size(name, tmp_path, monkeypatch):
    text = SHAPES[name]
    path = tmp_path / "d.json"
    path.write_text(text, encoding="utf-8")
    expected = records_of(path)
    for chunk in (1, 2, 3, 5, 8, 13):
        monkeypatch.setattr(data_io, "_CHUNK", chunk)
        assert records_of(path) == expected, chunk
    if name in ("lines", "wrapper_then_lines"):  # JSON Lines saved as .json
        assert [r[1] for r in expected] == [f"{path}, line 1", f"{path}, line 2"]
        return
    whole = json.loads(text.lstrip("\ufeff")) if text.strip() else None
    if name == "array":
        assert [r[2] for r in expected if r[0] == "record"] == [w for w in whole if isinstance(w, dict)]
        assert expected[1] == ("error", f"{path}, record 1", "not_an_object")
    elif name == "wrapper":
        assert [r[2] for r in expected] == whole["data"]
    elif name in ("wrapper_with_more_keys", "lone"):
        assert expected == [("record", f"{path}, record 0", whole)]
    else:
        assert expected == []


def test_json_array_is_read_one_element_at_a_time(tmp_path, monkeypatch):
    """The reader never holds more than the current element and a chunk."""
    monkeypatch.setattr(data_io, "_CHUNK", 64)
    path = tmp_path / "d.json"
    path.write_text("[" + ",".join(json.dumps({"i": i, "pad": "x" * 40}) for i in range(2000)) + "]")
    longest = 0
    original = data_io._JsonText._more

    def watched(self, at_least=0):
        nonlocal longest
        original(self, at_least)
        longest = max(longest, len(self.buf))

    monkeypatch.setattr(data_io._JsonText, "_more", watched)
    assert [r.record["i"] for r in data_io.read_json(str(path))] == list(range(2000))
    assert longest < 256  # the file is 110 KB


@pytest.mark.parametrize("text,line,column", [
    ('[{"a": 1},\n {"a": 2}\n {"a": 3}]', 3, 2),
    ('[{"a": 1},\n {"a": }]', 2, 8),
    ('[{"a": 1}] x', 1, 12),
])
def test_malformed_json_array_names_line_and_column(text, line, column, tmp_path, monkeypatch):
    path = tmp_path / "d.json"
    path.write_text(text)
    for chunk in (4, 1 << 20):
        monkeypatch.setattr(data_io, "_CHUNK", chunk)
        with pytest.raises(DataError, match=rf"d\.json, line {line}: malformed JSON at column {column}"):
            records_of(path)


def test_invalid_utf8_in_json_names_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data_io, "_CHUNK", 8)
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"a": 1},\n{"a": "\xff"}]')
    with pytest.raises(DataError, match=r"d\.json, line 2: invalid UTF-8"):
        records_of(path)


# -- templates that crash -------------------------------------------------------------------------------

class CrashingTemplate:
    """Renders like `plain`, but raises on a user turn that says "boom"."""

    chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

    def render(self, conversation, *, bos_token, eos_token):
        user, reply = conversation.turns()[-1]
        if user == "boom":
            raise KeyError("no such placeholder")
        return [Segment(bos_token + user + "\n"), Segment(reply + eos_token, reply=True)]


class CrashingTemplatePlugin:
    @hookimpl
    def register_prompt_templates(self, register):
        register("crashing", CrashingTemplate(), description="raises on 'boom'")


def test_template_crash_is_a_located_bad_record(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env,
                                                 airo_plugin):
    airo_plugin(CrashingTemplatePlugin(), name="crashing-template")
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "response": "a"},
                                              {"instruction": "boom", "response": "a"},
                                              {"instruction": "q3", "response": "a3"}])
    flags = ("--prompt_template", "crashing")
    with pytest.raises(DataError) as excinfo:
        prepare_datasets(config_for(tiny_tokenizer_dir, data, *flags), tiny_tokenizer, use_cache=False)
    message = str(excinfo.value)
    assert message.startswith(f"{data}, line 2: template 'crashing' (plugin crashing-template) failed")
    assert "KeyError" in message and "no such placeholder" in message
    skip = prepare_datasets(config_for(tiny_tokenizer_dir, data, *flags, "--on_bad_record", "skip"),
                            tiny_tokenizer, use_cache=False)
    assert len(skip.train) == 2 and skip.report.dropped == {"template_error": 1}
    assert skip.report.rejects[0]["location"] == f"{data}, line 2"


def test_template_returning_the_wrong_type_is_a_plugin_error(tmp_path, tiny_tokenizer_dir, tiny_tokenizer,
                                                             airo_env, airo_plugin):
    from airo.core.errors import PluginError

    class Broken:
        chat_template = ""

        def render(self, conversation, *, bos_token, eos_token):
            return "a string, not segments"

    class Plugin:
        @hookimpl
        def register_prompt_templates(self, register):
            register("broken", Broken())

    airo_plugin(Plugin(), name="broken-template")
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "response": "a"}])
    with pytest.raises(PluginError, match=r"template 'broken' \(plugin broken-template\): render\(\) returned str"):
        prepare_datasets(config_for(tiny_tokenizer_dir, data, "--prompt_template", "broken",
                                    "--on_bad_record", "skip"), tiny_tokenizer, use_cache=False)


# -- the cache is keyed by content ----------------------------------------------------------------------------

def test_record_edited_in_place_same_size_and_mtime_misses_the_cache(tmp_path, tiny_tokenizer_dir, tiny_tokenizer,
                                                                     airo_env):
    from airo.core.fingerprint import dataset_content_hash

    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"instruction": "what is nine", "response": "four"}])
    cfg = config_for(tiny_tokenizer_dir, path)
    first = prepare_datasets(cfg, tiny_tokenizer)
    assert not first.from_cache and first.data_fingerprint == dataset_content_hash(str(path))
    assert prepare_datasets(cfg, tiny_tokenizer).from_cache
    stat = path.stat()
    write_jsonl(path, [{"instruction": "what is five", "response": "four"}])  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    edited = prepare_datasets(cfg, tiny_tokenizer)
    assert not edited.from_cache and edited.data_fingerprint != first.data_fingerprint
    assert "five" in tiny_tokenizer.decode(edited.train[0]["input_ids"])
    assert edited.train["input_ids"] != first.train["input_ids"]


def test_cached_examples_equal_fresh_ones_and_name_this_dataset(tmp_path, tiny_tokenizer_dir, tiny_tokenizer,
                                                                airo_env):
    rows = [{"instruction": f"q{i}", "response": f"a{i}", "category": "ab"[i % 2]} for i in range(30)]
    a, b = write_jsonl(tmp_path / "a.jsonl", rows), write_jsonl(tmp_path / "b.jsonl", rows)
    fresh = prepare_datasets(config_for(tiny_tokenizer_dir, a, "--eval_dataset_size", "0.2"), tiny_tokenizer,
                             use_cache=False)
    built = prepare_datasets(config_for(tiny_tokenizer_dir, a, "--eval_dataset_size", "0.2"), tiny_tokenizer)
    copy = prepare_datasets(config_for(tiny_tokenizer_dir, b, "--eval_dataset_size", "0.2"), tiny_tokenizer)
    assert copy.from_cache and copy.report.dataset == b  # same content, another path
    for prepared in (built, copy):
        assert prepared.train["input_ids"] == fresh.train["input_ids"]
        assert prepared.eval["labels"] == fresh.eval["labels"] and len(fresh.eval) == 6


# -- rejects stay on disk ------------------------------------------------------------------------------------

def test_rejects_go_to_a_file_and_memory_keeps_a_few(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    from airo.core.data.report import KEPT_REJECTS

    rows = [{"instruction": "ok", "response": "fine"}] + [{"instruction": f"q{i}"} for i in range(40)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = prepare_datasets(config_for(tiny_tokenizer_dir, data, "--on_bad_record", "skip"), tiny_tokenizer,
                                rejects_dir=str(tmp_path / "work"), use_cache=False)
    assert prepared.report.dropped == {"invalid_record": 40}
    assert len(prepared.report.rejects) == KEPT_REJECTS < 40
    lines = [json.loads(x) for x in (tmp_path / "work" / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"] for r in lines] == [f"{data}, line {i}" for i in range(2, 42)]
    assert lines[-1]["record"] == {"instruction": "q39"}


# -- a record far too long is dropped without tokenizing it ---------------------------------------------------

def test_huge_record_is_dropped_before_tokenizing_it(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env,
                                                     monkeypatch):
    from airo.core.data import tokenize

    calls = []
    original = tokenize._ids
    monkeypatch.setattr(tokenize, "_ids", lambda tok, text, add_special_tokens: calls.append(len(text)) or
                        original(tok, text, add_special_tokens))
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "hello " * 200_000, "response": "ok"},
                                              {"instruction": "q", "response": "a"}])
    for template in ("airoboros", "chatml"):  # the reference and the whole-conversation tokenization
        calls.clear()
        prepared = prepare_datasets(config_for(tiny_tokenizer_dir, data, "--model_max_len", "64",
                                               "--prompt_template", template), tiny_tokenizer, use_cache=False)
        assert len(prepared.train) == 1 and prepared.report.dropped == {"too_long": 1}
        assert "first" in prepared.report.rejects[0]["problem"]
        if template == "airoboros":
            assert max(calls) < 10_000  # a bounded prefix, not 1.2 million characters


@pytest.mark.parametrize("template", ["airoboros", "chatml"])
def test_truncating_a_cut_text_gives_the_same_example(template, tiny_tokenizer, monkeypatch):
    from airo.core.data import tokenize
    from airo.core.data.tokenize import Dropped, max_chars_per_token, tokenize_segments, tokenize_source_target
    from airo.core.plugins import get_registry
    from airo.core.types import Conversation, Message

    tok = tiny_tokenizer
    shortened = []
    original_cut = tokenize._cut
    monkeypatch.setattr(tokenize, "_cut", lambda *a: shortened.append(len(original_cut(*a)) < len(a[1])) or
                        original_cut(*a))
    entry = get_registry().templates[template].template

    def example(conv, chars_per_token):
        try:
            if template == "airoboros":
                source, target = entry.source_target(conv, bos_token=tok.bos_token, eos_token=tok.eos_token)
                result = tokenize_source_target(tok, source, target, model_max_len=600, skip_excess_length=False,
                                                chars_per_token=chars_per_token)
            else:
                segments = entry.render(conv, bos_token=tok.bos_token, eos_token=tok.eos_token)
                result = tokenize_segments(tok, segments, mode="all_replies", model_max_len=600,
                                           skip_excess_length=False, chars_per_token=chars_per_token)
        except Dropped as exc:
            return exc.reason
        return result.input_ids, result.labels

    cut = 0
    for user_words, reply_words in ((3, 5000), (5000, 3), (5000, 5000), (100, 100), (30, 700)):
        conv = Conversation([Message("user", " ".join(["what is two plus four"] * user_words)),
                             Message("assistant", " ".join(["the answer is six"] * reply_words))])
        whole = example(conv, None)
        assert example(conv, max_chars_per_token(tok)) == whole, (user_words, reply_words)
        cut += not isinstance(whole, str) and len(whole[0]) == 600
    assert cut >= 2 and sum(shortened) >= 3  # texts were cut, and truncated after, not only dropped


def test_prefix_count_only_proves_what_it_sees():
    from airo.core.data.tokenize import PREFIX_MARGIN, prefix_tokens

    class WordTokenizer:  # a normalizer that collapses spaces: many characters, one token
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1] * len(text.split())}

    class CharTokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1] * len(text)}

    spaces = "a" + " " * 100_000 + "b"
    assert prefix_tokens(WordTokenizer(), spaces, 100, 1) is None  # not proven long: tokenize it all
    assert prefix_tokens(CharTokenizer(), "a" * 100_000, 100, 1) == 100 + PREFIX_MARGIN
    assert prefix_tokens(CharTokenizer(), "a" * 100, 100, 1) is None  # short: nothing to prove
    assert prefix_tokens(CharTokenizer(), "a" * 100_000, 100, None) is None


# -- two passes, same examples ----------------------------------------------------------------------------

def test_streamed_build_equals_the_list_pipeline(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    """Read all, split the list, tokenize each (the pipeline before streaming) == what is built."""
    from airo.core.data.io import open_dataset
    from airo.core.data.pipeline import read_conversations, tokenize_conversation
    from airo.core.data.plan import resolve_plan
    from airo.core.data.report import DataReport
    from airo.core.data.split import content_key, split_indices
    from airo.core.data.tokenize import Dropped

    rows = []
    for i in range(60):
        turns = [{"from": "human", "value": f"q{i} what is two"}, {"from": "gpt", "value": f"four {i}"}]
        if i % 3 == 0:
            turns += [{"from": "human", "value": "and five"}, {"from": "gpt", "value": "six " * (i % 7) * 30}]
        rows.append({"conversations": turns, "category": "abc"[i % 3] if i % 4 else None, "id": i})
    rows[7] = {"conversations": []}  # a bad record, skipped
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    flags = ("--dataset_format", "airoboros_chat", "--eval_dataset_size", "0.25", "--on_bad_record", "skip",
             "--expand_conversations", "--model_max_len", "96", "--max_train_samples", "40",
             "--max_eval_samples", "9", "--seed", "3")
    cfg = config_for(tiny_tokenizer_dir, data, *flags)
    built = prepare_datasets(cfg, tiny_tokenizer, use_cache=False)

    plan = resolve_plan(cfg)
    items = read_conversations(open_dataset(data)["train"], cfg, plan.fmt, DataReport())
    records = [id(raw) for _, raw in items]  # the expansions of one record are one group
    train_idx, eval_idx, _ = split_indices([conv.metadata for conv, _ in items], 0.25, 3,
                                           [content_key(conv) for conv, _ in items], records)
    expected = {}
    for split, indices, limit in (("train", train_idx, 40), ("eval", eval_idx, 9)):
        ids = []
        for i in indices:
            if len(ids) >= limit:
                break
            try:
                ids.append(tokenize_conversation(tiny_tokenizer, plan, items[i][0], cfg).input_ids)
            except Dropped:
                pass
        expected[split] = ids
    assert built.train["input_ids"] == expected["train"] and len(expected["train"]) == 40
    assert built.eval["input_ids"] == expected["eval"] and len(expected["eval"]) == 9
    assert built.report.stratified_by == "category" and built.report.dropped["too_long"] > 0


def test_no_examples_left_names_the_rejects_file(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q"}, {"nope": 1}])
    work = tmp_path / "work"
    for use_cache in (True, False):
        with pytest.raises(DataError, match=rf"no training examples left.*{work / 'rejects.jsonl'}"):
            prepare_datasets(config_for(tiny_tokenizer_dir, data, "--on_bad_record", "skip"), tiny_tokenizer,
                             rejects_dir=str(work), use_cache=use_cache)
        assert len((work / "rejects.jsonl").read_text().splitlines()) == 2
        (work / "rejects.jsonl").unlink()
    assert not any((tmp_path / "airo-cache").rglob("*.arrow"))  # nothing half-built is left in the cache


@pytest.mark.parametrize("text,column", [
    ('{"instruction": "x", "output": "y"\n', 35),   # unclosed at the line's end: not "column 1"
    ('{"instruction": "x", "output": "y"\r\n', 35),
    ('{"instruction": "x" "output": "y"}\n', 21),
])
def test_malformed_jsonl_names_the_column_on_its_line(text, column, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n' + text, newline="")
    errors = [item for item in data_io.read_file(str(path)) if isinstance(item, DataError)]
    assert len(errors) == 1
    assert re.search(rf"d\.jsonl, line 2: malformed JSON at column {column}:", str(errors[0])), str(errors[0])

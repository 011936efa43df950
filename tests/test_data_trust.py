"""The data as read: its hash is of the bytes parsed, the eval split is by content, each format
is read by its own rules, and every reader meets generated malformed input with a located
DataError (counted under --on_bad_record skip) or a correct read: never a traceback, never a
record lost without a word."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airo.core import api
from airo.core.data import io as data_io
from airo.core.data.io import ReadLedger, dataset_sources
from airo.core.data.pipeline import iter_conversations, prepare_datasets
from airo.core.data.plan import resolve_plan
from airo.core.data.report import DataReport
from airo.core.data.split import StratumKeys, content_key, split_indices
from airo.core.errors import DataError
from airo.core.fingerprint import dataset_content_hash
from airo.core.types import Conversation, Message


def config_for(model_dir, dataset, *flags):
    return api.load_config(None, ["--model_name_or_path", str(model_dir), "--dataset", str(dataset),
                                  "--output_dir", "unused", "--eval_dataset_size", "0", *flags])


ROWS = [{"instruction": f"question {i}", "response": f"answer {i}", "category": "ab"[i % 2]} for i in range(40)]


def write(path: Path, rows=ROWS) -> Path:
    """``rows`` in the format of ``path``'s suffix (a folder name without one: a saved dataset)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    suffix = path.suffix
    cols = list(rows[0])
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        path.write_text(",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in rows))
    elif suffix == ".tsv":
        path.write_text("\t".join(cols) + "\n" + "".join("\t".join(str(r[c]) for c in cols) + "\n" for r in rows))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import datasets

        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:-4]),
                              "test": datasets.Dataset.from_list(rows[-4:])}).save_to_disk(str(path))
    return path


def read_all(spec: str, ledger: ReadLedger) -> dict[str, list]:
    return {split: list(source()) for split, source in dataset_sources(spec, ledger).items()}


# -- 1. the hash of the data as read ------------------------------------------------------------------

def _layout(kind: str, tmp_path: Path) -> str:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    if kind in ("jsonl", "json", "csv", "tsv", "parquet"):
        return str(write(data / f"d.{kind}"))
    if kind == "comma-list":
        return f"{write(data / 'a.jsonl')},{write(data / 'b.csv', ROWS[:7])}, {write(data / 'c.tsv', ROWS[3:9])}"
    if kind == "saved-folder":
        return str(write(data / "saved"))
    if kind == "symlinked-file":
        os.symlink(write(outside / "real.jsonl"), data / "link.jsonl")
        return str(data / "link.jsonl")
    if kind == "folder-with-file-outside":  # a saved dataset whose Arrow file lives elsewhere
        saved = write(data / "saved")
        arrow = next((saved / "train").glob("*.arrow"))
        os.replace(arrow, outside / arrow.name)
        os.symlink(outside / arrow.name, arrow)
        return str(saved)
    if kind == "folder-with-split-outside":  # a symlinked split folder (and a loop beside it)
        saved = write(data / "saved")
        os.replace(saved / "test", outside / "test")
        os.symlink(outside / "test", saved / "test")
        os.symlink(saved, saved / "test" / "loop")
        return str(saved)
    raise AssertionError(kind)


LAYOUTS = ["jsonl", "json", "csv", "tsv", "parquet", "comma-list", "saved-folder", "symlinked-file",
           "folder-with-file-outside", "folder-with-split-outside"]


@pytest.mark.parametrize("kind", LAYOUTS)
def test_hash_as_read_equals_the_content_hash(kind, tmp_path):
    """The invariant old markers and the cache key rely on: same algorithm, same bytes."""
    spec = _layout(kind, tmp_path)
    ledger = ReadLedger()
    splits = read_all(spec, ledger)
    assert all(isinstance(r, data_io.RawRecord) for rows in splits.values() for r in rows)
    assert sum(len(rows) for rows in splits.values()) >= 36
    assert ledger.content_hash(spec) == dataset_content_hash(spec) is not None
    read_all(spec, ledger)  # a second pass through the same ledger: checked, same value
    assert ledger.content_hash(spec) == dataset_content_hash(spec)


def test_a_symlinked_split_folder_is_part_of_the_hash(tmp_path):
    spec = _layout("folder-with-split-outside", tmp_path)
    before = dataset_content_hash(spec)
    arrow = next((tmp_path / "elsewhere" / "test").glob("*.arrow"))
    write(tmp_path / "other", ROWS[:5])
    os.replace(next((tmp_path / "other" / "test").glob("*.arrow")), arrow)
    assert dataset_content_hash(spec) != before


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "tsv", "parquet", "saved-folder"])
@pytest.mark.parametrize("change", ["same-size", "grown", "shrunk"])
def test_a_file_changed_between_two_reads_is_an_error(kind, change, tmp_path):
    spec = _layout(kind, tmp_path)
    ledger = ReadLedger()
    read_all(spec, ledger)
    target = Path(spec) if kind != "saved-folder" else next((Path(spec) / "train").glob("*.arrow"))
    data = bytearray(target.read_bytes())
    if change == "same-size":
        i = data.rindex(b"3")  # a digit of a record, near the end
        data[i:i + 1] = b"4"
    elif change == "grown":
        data += b"\n"
    else:
        del data[-1:]
    target.write_bytes(bytes(data))
    with pytest.raises(DataError) as caught:
        read_all(spec, ledger)
        ledger.content_hash(spec)
    assert caught.value.reason == "changed_during_read" and "changed while airo was reading it" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_prepare_datasets_returns_the_hash_of_what_it_read(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    spec = _layout("symlinked-file", tmp_path)
    for use_cache in (False, True, True):  # a build without cache, a build into it, a hit
        prepared = prepare_datasets(config_for(tiny_tokenizer_dir, spec, "--eval_dataset_size", "0.1"),
                                    tiny_tokenizer, use_cache=use_cache)
        assert prepared.data_fingerprint == prepared.report.content_hash == dataset_content_hash(spec)
    assert prepared.from_cache


def test_data_changed_after_the_cache_key_is_refused(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env,
                                                     monkeypatch):
    """A writer in the window between the key's hash and the read: the read is the truth."""
    from airo.core.data import pipeline

    data = write(tmp_path / "d.jsonl")
    real = pipeline.dataset_content_hash

    def then_edit(spec):
        digest = real(spec)
        data.write_text(data.read_text().replace("answer 3", "answer 4"))
        return digest

    monkeypatch.setattr(pipeline, "dataset_content_hash", then_edit)
    cfg = config_for(tiny_tokenizer_dir, data)
    with pytest.raises(DataError, match="the dataset changed while airo was reading it") as caught:
        prepare_datasets(cfg, tiny_tokenizer)
    assert caught.value.reason == "changed_during_read"
    cache = Path(os.environ["AIRO_CACHE"]) / "datasets"
    assert not cache.exists() or not any(p.name.endswith("airo_preprocessed.json") for p in cache.rglob("*"))
    monkeypatch.setattr(pipeline, "dataset_content_hash", real)
    assert prepare_datasets(cfg, tiny_tokenizer).data_fingerprint == dataset_content_hash(str(data))


# -- 2. train and eval never share an example ---------------------------------------------------------

def _conv(text: str, *more: str) -> Conversation:
    msgs = [Message("user", text), Message("assistant", f"reply to {text}")]
    for t in more:
        msgs += [Message("user", t), Message("assistant", f"reply to {t}")]
    return Conversation(msgs)


def _sides(groups: list[list[Conversation]], size: float, seed: int, labels=None):
    """(eval flags per conversation, content keys, record ordinals) for conversations given by record."""
    metas, contents, records = [], [], []
    for r, convs in enumerate(groups):
        for conv in convs:
            metas.append({"category": labels[r]} if labels else {})
            contents.append(content_key(conv))
            records.append(r)
    train, evals, _ = split_indices(metas, size, seed, contents, records)
    side = [None] * len(metas)
    for i in train:
        side[i] = "train"
    for i in evals:
        side[i] = "eval"
    return side, contents, records, evals


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.integers(0, 12), min_size=2, max_size=60),
       expand=st.lists(st.integers(1, 3), min_size=60, max_size=60),
       labels=st.lists(st.sampled_from("abc"), min_size=60, max_size=60),
       size=st.sampled_from([0.1, 0.3, 0.5, 3, 7]), seed=st.integers(0, 2**31))
def test_split_keeps_duplicates_and_expansions_on_one_side(texts, expand, labels, size, seed):
    from airo.core.data.split import eval_count

    groups = []
    for r, t in enumerate(texts):  # records with repeated texts; some expanded into turns (prefixes)
        turns = [f"q{t}-{j}" for j in range(expand[r])]
        full = _conv(f"q{t}", *turns[1:])
        groups.append([Conversation(full.messages[:2 * (j + 1)]) for j in range(len(turns))])
    side, contents, records, evals = _sides(groups, size, seed, labels)
    assert None not in side
    by_key: dict[int, set] = {}
    by_record: dict[int, set] = {}
    for s, key, rec in zip(side, contents, records):
        by_key.setdefault(key, set()).add(s)
        by_record.setdefault(rec, set()).add(s)
    assert all(len(s) == 1 for s in by_key.values()), "a duplicate on both sides"
    assert all(len(s) == 1 for s in by_record.values()), "a conversation's expansions on both sides"
    assert len(evals) <= eval_count(size, len(side)) and len(evals) < len(side)
    assert _sides(groups, size, seed, labels)[3] == evals  # seeded: the same split every time


def test_split_size_is_exact_without_duplicates_and_counts_them():
    keys = StratumKeys()
    for i in range(100):
        keys.add({"category": "ab"[i % 2]}, content_key(_conv(f"q{i % 90}")), i)
    assert keys.duplicates == 10
    evals, key = keys.split(0.2, 5)
    assert key == "category" and len(evals) == 20  # singles and pairs fill it exactly
    unique = StratumKeys()
    for i in range(100):
        unique.add({}, content_key(_conv(f"q{i}")))
    assert unique.duplicates == 0 and len(unique.split(0.25, 1)[0]) == 25


def test_content_key_normalises_whitespace_and_ignores_metadata():
    a = Conversation([Message("user", "what  is\n two?"), Message("assistant", " four ")], {"id": 1, "category": "x"})
    b = Conversation([Message("user", "what is two?"), Message("assistant", "four")], {"id": 2})
    c = Conversation([Message("user", "what is two?"), Message("assistant", "Four")])
    assert content_key(a) == content_key(b) != content_key(c)


def test_pipeline_split_shares_no_example(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    rows = []
    for i in range(30):
        turns = [{"from": "human", "value": f"q{i % 12}"}, {"from": "gpt", "value": f"a{i % 12}"}]
        if i % 4 == 0:
            turns += [{"from": "human", "value": f"more {i}"}, {"from": "gpt", "value": f"yes {i}"}]
        rows.append({"conversations": turns, "category": "xy"[i % 2], "id": i})
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in ("1", "2", "3"):
        prepared = prepare_datasets(config_for(tiny_tokenizer_dir, data, "--dataset_format", "airoboros_chat",
                                               "--eval_dataset_size", "0.3", "--expand_conversations",
                                               "--seed", seed), tiny_tokenizer, use_cache=False)
        train = {tuple(x) for x in prepared.train["input_ids"]}
        evals = {tuple(x) for x in prepared.eval["input_ids"]}
        assert evals and not train & evals
        assert prepared.report.duplicates > 0 and prepared.report.to_dict()["duplicates"] == prepared.report.duplicates
        assert any("duplicates:" in line for line in prepared.report.summary_lines())


# -- 3. each format by its own rules --------------------------------------------------------------------

def test_tsv_is_not_csv(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_bytes(b'instruction\tresponse\r\n"quoted" words\tsay "hi", then, go\r\n\r\nx\t\r\n')
    records = [r.record for r in data_io.read_file(str(path))]
    assert records == [{"instruction": '"quoted" words', "response": 'say "hi", then, go'},
                       {"instruction": "x", "response": ""}]


@pytest.mark.parametrize("suffix,header", [(".csv", b"a,b,a\n"), (".tsv", b"a\tb\ta\n"),
                                           (".csv", b"\xef\xbb\xbfb,b\n"), (".tsv", b"x\t\t\n")])
def test_a_repeated_column_header_is_an_error(suffix, header, tmp_path):
    path = tmp_path / f"d{suffix}"
    sep = b"," if suffix == ".csv" else b"\t"
    path.write_bytes(header + sep.join([b"1"] * header.count(sep)) + b"1\n")
    with pytest.raises(DataError) as caught:
        list(data_io.read_file(str(path)))
    e = caught.value
    assert (e.path, e.line, e.reason) == (str(path), 1, "duplicate_column")
    assert "twice" in e.problem and "'" in e.problem and "\n" not in str(e)


@pytest.mark.parametrize("text,line", [('{"a": 1, "b": 2, "a": 3}\n', 1), ('{"x": 1}\n{"n": {"k": 1, "k": 2}}\n', 2)])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_repeated_json_key_is_an_error(text, line, suffix, tmp_path):
    path = tmp_path / f"d{suffix}"
    if suffix == ".json":
        text = "[\n" + ",\n".join(text.splitlines()) + "\n]"
        line += 1
    path.write_text(text)
    errors = [r for r in data_io.read_file(str(path)) if isinstance(r, DataError)]
    assert [(e.line, e.reason) for e in errors] == [(line, "duplicate_key")]
    assert ("'a'" in errors[0].problem) or ("'k'" in errors[0].problem)


@pytest.mark.parametrize("nested", [False, True])
def test_a_repeated_arrow_column_is_an_error(nested, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if nested:
        inner = pa.StructArray.from_arrays([pa.array([1]), pa.array([2])], names=["k", "k"])
        table = pa.Table.from_arrays([pa.array(["q"]), inner], names=["instruction", "meta"])
    else:
        table = pa.Table.from_arrays([pa.array(["q"]), pa.array(["r"]), pa.array(["s"])],
                                     names=["instruction", "response", "instruction"])
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(DataError, match="appears twice") as caught:
        list(data_io.read_file(str(tmp_path / "d.parquet")))
    assert caught.value.reason == "duplicate_column"


# -- 4. generated malformed input, every reader ---------------------------------------------------------
#
# Each case writes N records in one format and breaks it in one way (at one record, or the whole
# file). The oracle: the reader raises nothing but a located, one-line DataError; what it yields
# is, in order, the intact records (equal to what was written) and located errors; and the
# records read plus the errors account for every record written (a file-level error stops the
# read: then the records read are the intact ones before it).

N = 6
FIELDS = ("instruction", "response")


def _records(n=N):
    return [{"instruction": f"q{i} what", "response": f"r{i} ok"} for i in range(n)]


def _line(fmt: str, rec: dict) -> bytes:
    if fmt == "jsonl":
        return json.dumps(rec).encode()
    sep = "," if fmt == "csv" else "\t"
    return sep.join(str(rec[f]) for f in FIELDS).encode()


# record-level breaks of line formats: (bytes of the broken line, the record as read or None for an error)
def _break(fmt: str, how: str, rec: dict):
    sep = b"," if fmt == "csv" else b"\t"
    line = _line(fmt, rec)
    if how == "invalid-utf8":
        return line.replace(b"ok", b"o\xff\xfek"), None
    if how == "nul-byte":  # a raw control character is not JSON; a CSV or TSV field may hold it
        return line.replace(b"ok", b"o\x00k"), \
            (None if fmt == "jsonl" else {**rec, "response": rec["response"].replace("ok", "o\x00k")})
    if how == "ragged-more":
        return (line[:-1] + b', "x": 1}' if fmt == "jsonl" else line + sep + b"extra"), \
            ({**rec, "x": 1} if fmt == "jsonl" else None)
    if how == "ragged-fewer":
        return (json.dumps({"instruction": rec["instruction"]}).encode() if fmt == "jsonl"
                else line.split(sep)[0]), ({"instruction": rec["instruction"]} if fmt == "jsonl" else None)
    if how == "truncated-record":
        return (line[: len(line) // 2] if fmt == "jsonl" else line.split(sep)[0] + sep), \
            (None if fmt == "jsonl" else {**rec, "response": ""})
    if how == "wrong-type":
        return (b"[1, 2]" if fmt == "jsonl" else line.replace(b"ok", b"123")), \
            (None if fmt == "jsonl" else {**rec, "response": rec["response"].replace("ok", "123")})
    if how == "duplicate-key":
        return (line[:-1] + b', "response": "again"}' if fmt == "jsonl" else line), \
            (None if fmt == "jsonl" else rec)
    if how == "deep-nesting":
        deep = b"[" * 100_000 + b"]" * 100_000
        return (b'{"instruction": "q", "response": ' + deep + b"}" if fmt == "jsonl" else line), \
            (None if fmt == "jsonl" else rec)
    if how == "huge-line":
        big = "w" * 3_000_000
        return _line(fmt, {**rec, "response": big}), {**rec, "response": big}
    if how == "stray-quote":  # JSON: malformed; CSV and TSV: a quote inside a field is a character
        if fmt == "jsonl":
            return b'{"instruction": "q", "response": "o"k"}', None
        return line.replace(b"ok", b'o"k"'), {**rec, "response": rec["response"].replace("ok", 'o"k"')}
    if how == "quote-after-quote":  # CSV: text after a closing quote is malformed; TSV: characters
        if fmt == "jsonl":
            return line, rec
        return line.split(sep)[0] + sep + b'"r"x', (None if fmt == "csv" else {**rec, "response": '"r"x'})
    raise AssertionError(how)


RECORD_BREAKS = ["invalid-utf8", "nul-byte", "ragged-more", "ragged-fewer", "truncated-record", "wrong-type",
                 "duplicate-key", "deep-nesting", "huge-line", "stray-quote", "quote-after-quote"]
LINE_FORMATS = ["jsonl", "csv", "tsv"]
ENDINGS = {"lf": b"\n", "crlf": b"\r\n"}


def _check_located(e: DataError, path: Path) -> None:
    assert isinstance(e, DataError), e
    assert e.path == str(path) and (e.line is not None or e.index is not None), e
    assert e.reason and "\n" not in str(e) and "Traceback" not in str(e)


def _read(path: Path) -> tuple[list, DataError | None]:
    """What the reader yields, and the DataError that stopped it (anything else fails the test)."""
    items = []
    try:
        for item in data_io.read_file(str(path), ReadLedger()):
            items.append(item)
    except DataError as stopped:
        return items, stopped
    return items, None


@pytest.mark.parametrize("fmt,how,at,ending,bom", [
    (fmt, how, at, ending, bom)
    for fmt, how, at, ending, bom in itertools.product(LINE_FORMATS, RECORD_BREAKS, (0, 3, N - 1), ENDINGS,
                                                       (False, True))])
def test_line_formats_meet_a_broken_record(fmt, how, at, ending, bom, tmp_path):
    recs = _records()
    path = tmp_path / f"d.{fmt}"
    eol = ENDINGS[ending]
    lines, expected = [], []
    if fmt != "jsonl":
        lines.append(("\t" if fmt == "tsv" else ",").join(FIELDS).encode())
    for i, rec in enumerate(recs):
        if i == at:
            line, as_read = _break(fmt, how, rec)
        else:
            line, as_read = _line(fmt, rec), rec
        lines.append(line)
        expected.append(as_read)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + eol.join(lines) + eol)
    items, stopped = _read(path)
    if stopped is not None:
        _check_located(stopped, path)
        # a file-level stop only where the file cannot be read on (CSV and TSV: not for one record)
        assert fmt == "csv" and how == "invalid-utf8", stopped
        assert [i.record for i in items] == [r for r in expected[:len(items)]]
        return
    records = [i for i in items if not isinstance(i, DataError)]
    errors = [i for i in items if isinstance(i, DataError)]
    for e in errors:
        _check_located(e, path)
    assert len(records) + len(errors) == N, "a record lost without a word"
    assert [r.record for r in records] == [r for r in expected if r is not None]
    assert len(errors) == sum(r is None for r in expected)
    if errors:
        assert errors[0].line == at + 1 + (fmt != "jsonl")
    if fmt == "tsv" and ending == "crlf":
        assert all(not v.endswith("\r") for r in records for v in r.record.values())


FILE_BREAKS = ["empty", "only-header", "blank-lines", "truncated", "garbage", "nul-file", "bom-only"]
ALL_FORMATS = ["jsonl", "json", "csv", "tsv", "parquet", "saved"]


def _whole_file(fmt: str, tmp_path: Path, recs) -> Path:
    if fmt == "saved":
        import datasets

        datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "saved"))
        return tmp_path / "saved"
    return write(tmp_path / f"d.{fmt}", recs)


@pytest.mark.parametrize("fmt,how,cut", [(f, h, c) for f, h in itertools.product(ALL_FORMATS, FILE_BREAKS)
                                         for c in ((0.3, 0.6, 0.97) if h == "truncated" else (None,))])
def test_every_reader_meets_a_broken_file(fmt, how, cut, tmp_path):
    recs = _records()
    spec = _whole_file(fmt, tmp_path, recs)
    target = spec if fmt != "saved" else next(spec.glob("*.arrow"))
    data = target.read_bytes()
    header = data.split(b"\n", 1)[0] + b"\n" if fmt in ("csv", "tsv") else b""
    new = {"empty": b"", "only-header": header or data[:0], "garbage": bytes(range(256)) * 8,
           "blank-lines": data.replace(b"\n", b"\n\n\n") if fmt not in ("parquet", "saved") else data,
           "nul-file": b"\x00" * 4096, "bom-only": b"\xef\xbb\xbf",
           "truncated": data[: int(len(data) * (cut or 1))]}[how]
    target.write_bytes(new)
    try:
        splits = read_all(str(spec), ReadLedger())
    except DataError as stopped:
        assert stopped.path and str(stopped.path).startswith(str(spec)) and stopped.reason
        assert "\n" not in str(stopped) and "Traceback" not in str(stopped)
        return
    items = splits["train"]
    records = [i.record for i in items if not isinstance(i, DataError)]
    errors = [i for i in items if isinstance(i, DataError)]
    for e in errors:
        assert e.path and (e.line is not None or e.index is not None) and "\n" not in str(e)
    # what was read is what was written, in order (a cut file: its intact start; a CSV or TSV
    # cut inside its last line has no way to tell: that record reads as a prefix of itself)
    if how == "truncated" and fmt in ("csv", "tsv") and records:
        last = records.pop()
        original = recs[len(records)]
        assert all(original[k].startswith(v) for k, v in last.items() if v is not None), last
    assert records == recs[:len(records)] or how == "garbage" and not records
    if how in ("empty", "only-header", "bom-only", "nul-file", "garbage") and not errors:
        assert records == [] or how == "only-header" and fmt in ("jsonl", "json")
    if how == "blank-lines":
        assert records == recs and not errors
    if how == "truncated" and fmt in ("jsonl", "csv", "tsv"):
        assert len(records) + len(errors) >= int(N * cut) - 1  # every line there is a record or an error


def test_folders_and_links_that_are_not_data(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("a.jsonl", "b.csv", "notes.txt"):
        (mixed / name).write_text("x\n")
    loop = tmp_path / "loop.jsonl"
    os.symlink(loop, loop)
    (tmp_path / "d.txt").write_text("{}\n")
    os.mkfifo(tmp_path / "fifo.jsonl") if hasattr(os, "mkfifo") else None
    cases = {str(mixed): "unsupported_file", str(loop): "file_not_found", str(tmp_path / "d.txt"): "unsupported_file"}
    for spec, reason in cases.items():
        with pytest.raises(DataError) as caught:
            read_all(spec, ReadLedger())
        assert caught.value.reason == reason and "\n" not in str(caught.value)
    assert dataset_content_hash(str(tmp_path)) is not None  # a folder with a symlink loop: hashed, no hang
    (mixed / "sub").mkdir()
    os.symlink(mixed, mixed / "sub" / "up")
    assert dataset_content_hash(str(mixed)) == dataset_content_hash(str(mixed))


@pytest.mark.parametrize("fmt", LINE_FORMATS + ["json"])
def test_skip_counts_every_bad_record_with_its_reason(fmt, tmp_path, tiny_tokenizer_dir, airo_env):
    """Through the pipeline: records in = conversations out + counted skips, by reason."""
    recs = _records(12)
    path = tmp_path / f"d.{fmt}"
    if fmt == "json":
        broken = [json.dumps(r) for r in recs]
        broken[2] = '{"instruction": "q", "instruction": "again", "response": "r"}'
        broken[5] = "[1]"
        broken[9] = '{"instruction": 5}'
        path.write_text("[" + ",\n".join(broken) + "]")
        expected = {"duplicate_key": 1, "not_an_object": 1, "invalid_record": 1}
    else:
        lines = [] if fmt == "jsonl" else [("\t" if fmt == "tsv" else ",").join(FIELDS).encode()]
        expected = {}
        for i, rec in enumerate(recs):
            how = {2: "invalid-utf8", 5: "ragged-more" if fmt != "jsonl" else "duplicate-key",
                   9: "truncated-record" if fmt == "jsonl" else "ragged-fewer"}
            if i in how and not (fmt == "csv" and how[i] == "invalid-utf8"):
                line, as_read = _break(fmt, how[i], rec)
                lines.append(line)
            else:
                lines.append(_line(fmt, rec))
        path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = config_for(tiny_tokenizer_dir, path, "--on_bad_record", "skip")
    plan = resolve_plan(cfg)
    report = DataReport()
    convs = list(iter_conversations(dataset_sources(str(path), ReadLedger())["train"](), cfg, plan.fmt, report))
    assert report.records_read == len(convs) + sum(report.dropped.values())
    assert len(convs) + sum(report.dropped.values()) == 12
    assert sum(report.dropped.values()) >= 2 and all(r["location"].startswith(str(path)) for r in report.rejects)
    if fmt == "json":
        assert dict(report.dropped) == expected
    cfg = config_for(tiny_tokenizer_dir, path)  # --on_bad_record error: the first one, located
    with pytest.raises(DataError) as caught:
        list(iter_conversations(dataset_sources(str(path), ReadLedger())["train"](), cfg, plan.fmt, DataReport()))
    assert caught.value.path == str(path) and "\n" not in str(caught.value)


@settings(max_examples=80, deadline=None)
@given(fmt=st.sampled_from(["jsonl", "tsv", "csv", "json"]),
       cells=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), min_size=1, max_size=8),
       noise=st.binary(max_size=6), at=st.integers(0, 200))
def test_random_bytes_in_a_file_never_escape_as_a_traceback(fmt, cells, noise, at, tmp_path_factory):
    """Whatever bytes land anywhere in a file, the reader reads, or gives located DataErrors."""
    path = tmp_path_factory.mktemp("h") / f"d.{fmt}"
    recs = [{"instruction": a, "response": b} for a, b in cells]
    if fmt == "jsonl":
        data = b"".join(json.dumps(r).encode() + b"\n" for r in recs)
    elif fmt == "json":
        data = json.dumps(recs).encode()
    else:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, delimiter="," if fmt == "csv" else "\t")
        w.writerow(FIELDS)
        w.writerows([a, b] for a, b in cells)
        data = buf.getvalue().encode("utf-8", "surrogatepass")
    at = min(at, len(data))
    path.write_bytes(data[:at] + noise + data[at:])
    items, stopped = _read(path)
    if stopped is not None:
        _check_located_or_file(stopped, path)
    for item in items:
        if isinstance(item, DataError):
            _check_located(item, path)
        else:
            assert isinstance(item.record, dict)


def _check_located_or_file(e: DataError, path: Path) -> None:
    assert isinstance(e, DataError) and e.path == str(path) and e.reason and "\n" not in str(e)

"""Many datasets in one run (issue 18): the ``datasets:`` list, mixing by weight / records /
epochs, dedup across sources, decontamination, template lists, the ``text`` format, the
per-source cache, parallel tokenization, and the per-source report."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from airo.core import api
from airo.core.data import pipeline
from airo.core.data.pipeline import prepare_datasets
from airo.core.errors import ConfigError


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def qa(n, start=0, answer="answer"):
    return [{"instruction": f"question number {i}", "response": f"{answer} {i}"} for i in range(start, start + n)]


def mix_config(tmp_path, model_dir, entries, *flags, **top):
    """A YAML config with ``datasets: entries`` (and ``top`` options), loaded with ``flags``."""
    import yaml

    doc = {"model_name_or_path": str(model_dir), "output_dir": str(tmp_path / "out"), "eval_dataset_size": 0,
           **top, "datasets": entries}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return api.load_config(str(path), list(flags))


def texts(tokenizer, dataset) -> list[str]:
    return [tokenizer.decode(ids) for ids in dataset["input_ids"]]


def which(text: str) -> tuple[str, int]:
    """(source tag, record number) of a rendered example of ``qa``/plain-text records."""
    import re

    found = re.search(r"(answer|other|third|fourth|plain text) (\d+)", text)
    return found[1], int(found[2])


# -- mixing ---------------------------------------------------------------------------------------

def _four(tmp_path):
    return [
        {"path": write_jsonl(tmp_path / "a.jsonl", qa(10, answer="answer")), "weight": 3},
        {"path": write_jsonl(tmp_path / "b.jsonl", qa(10, 100, answer="other")), "weight": 1},
        {"path": write_jsonl(tmp_path / "c.jsonl", qa(5, 200, answer="third")), "records": 7},
        {"path": write_jsonl(tmp_path / "d.jsonl", qa(4, 300, answer="fourth")), "epochs": 2.5},
    ]


def test_mix_by_weight_records_and_epochs_gives_exact_counts(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    """Weights share out the weighted sources' own total (20: 15 and 5); records: 7 of 5 is
    the source once and 2 drawn again; epochs 2.5 of 4 is twice and 2 drawn; nothing else."""
    cfg = mix_config(tmp_path, tiny_tokenizer_dir, _four(tmp_path), "--seed", "7")
    prepared = prepare_datasets(cfg, tiny_tokenizer)
    got = [which(t) for t in texts(tiny_tokenizer, prepared.train)]
    per_source = Counter(tag for tag, _ in got)
    assert per_source == {"answer": 15, "other": 5, "third": 7, "fourth": 10}
    repeats = {tag: Counter(Counter(n for t, n in got if t == tag).values()) for tag in per_source}
    assert repeats["answer"] == {1: 5, 2: 5}  # 15 of 10: each once, 5 of them twice
    assert repeats["other"] == {1: 5}  # 5 of 10, none twice
    assert repeats["third"] == {1: 3, 2: 2}
    assert repeats["fourth"] == {2: 2, 3: 2}
    assert [row["train_examples"] for row in prepared.sources] == [15, 5, 7, 10]
    assert prepared.report.examples["train"] == 37 == len(prepared.train)
    shares = [row["share_of_trained_tokens"] for row in prepared.sources]
    assert abs(sum(shares) - 1) < 1e-3 and all(s > 0 for s in shares)

    # the same config and seed: the same examples in the same order (from the cache or not)
    again = prepare_datasets(cfg, tiny_tokenizer, use_cache=False)
    assert again.train["input_ids"] == prepared.train["input_ids"]
    assert list(again.source_of) == list(prepared.source_of)
    # another seed: the same counts, another draw or order
    other = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, _four(tmp_path), "--seed", "8"), tiny_tokenizer)
    assert Counter(which(t)[0] for t in texts(tiny_tokenizer, other.train)) == per_source
    assert other.train["input_ids"] != prepared.train["input_ids"]


def test_weights_are_normalised_and_max_train_samples_cuts_the_mix(tmp_path, tiny_tokenizer_dir, tiny_tokenizer,
                                                                  airo_env):
    entries = [{"path": write_jsonl(tmp_path / "a.jsonl", qa(6)), "weight": 0.5},
               {"path": write_jsonl(tmp_path / "b.jsonl", qa(6, 100, answer="other")), "weight": 0.25}]
    prepared = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, entries), tiny_tokenizer)
    assert Counter(which(t)[0] for t in texts(tiny_tokenizer, prepared.train)) == {"answer": 8, "other": 4}
    cut = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, entries, "--max_train_samples", "5"),
                           tiny_tokenizer)
    assert cut.train["input_ids"] == prepared.train["input_ids"][:5]


def test_each_source_keeps_its_own_eval_split(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    entries = [{"path": write_jsonl(tmp_path / "a.jsonl", qa(20)), "eval_size": 4},
               {"path": write_jsonl(tmp_path / "b.jsonl", qa(10, 100, answer="other")), "records": 30}]
    prepared = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, entries), tiny_tokenizer)
    assert len(prepared.eval) == 4 and {which(t)[0] for t in texts(tiny_tokenizer, prepared.eval)} == {"answer"}
    assert [r["eval_examples"] for r in prepared.sources] == [4, 0]
    train = {which(t) for t in texts(tiny_tokenizer, prepared.train)}
    assert not train & {which(t) for t in texts(tiny_tokenizer, prepared.eval)}


def test_split_and_max_records_choose_what_a_source_reads(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(qa(6)),
                          "extra": datasets.Dataset.from_list(qa(9, 100, answer="other"))}).save_to_disk(str(saved))
    entries = [{"path": str(saved), "split": "extra", "max_records": 4, "epochs": 1},
               {"path": write_jsonl(tmp_path / "a.jsonl", qa(10, 200, answer="third")), "max_records": 3,
                "epochs": 1}]
    prepared = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, entries), tiny_tokenizer)
    assert sorted(which(t) for t in texts(tiny_tokenizer, prepared.train)) == \
        [("other", i) for i in range(100, 104)] + [("third", i) for i in range(200, 203)]
    assert [r["records_read"] for r in prepared.sources] == [4, 3]
    with pytest.raises(Exception, match="has no 'nope' split"):
        prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, [{"path": str(saved), "split": "nope"},
                                                                    entries[1]]), tiny_tokenizer)


# -- dedup ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["prompt", "conversation"])
def test_duplicates_across_sources_first_in_list_order_wins(mode, tmp_path, tiny_tokenizer_dir, tiny_tokenizer,
                                                            airo_env):
    a = qa(10)  # question number 0..9
    # b: 5 prompts of a with other answers, 2 records of a exactly (whitespace and case aside
    # for the normalisation: runs of spaces), one record twice, 3 of its own
    b = [{"instruction": f"question number {i}", "response": f"other {i}"} for i in range(5)]
    b += [{"instruction": f"question  number {i} ", "response": f"answer {i}"} for i in (7, 8)]
    b += [{"instruction": "question number 500", "response": "other 500"}] * 2
    b += [{"instruction": f"question number {i}", "response": f"other {i}"} for i in (501, 502, 503)]
    entries = [{"path": write_jsonl(tmp_path / "a.jsonl", a), "epochs": 1},
               {"path": write_jsonl(tmp_path / "b.jsonl", b), "epochs": 1}]
    prepared = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, entries, dedup=mode), tiny_tokenizer)
    got = Counter(which(t) for t in texts(tiny_tokenizer, prepared.train))
    removed = {"prompt": 5 + 2 + 1, "conversation": 2 + 1}[mode]
    assert [r["duplicates_removed"] for r in prepared.sources] == [0, removed]
    assert prepared.report.duplicates_removed == removed
    assert all(got[("answer", i)] >= 1 for i in range(10))  # the first occurrences stay
    if mode == "prompt":
        assert not any(tag == "other" and n < 5 for tag, n in got)
    else:
        assert all(("other", i) in got for i in range(5))
    # each source once: what is left of it
    assert len(prepared.train) == 10 + len(b) - removed
    line = next(x for x in prepared.report.summary_lines() if x.strip().startswith("[1]"))
    assert f"duplicates removed {removed}" in line


def test_dedup_none_keeps_everything(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    entries = [{"path": write_jsonl(tmp_path / "a.jsonl", qa(4))}, {"path": write_jsonl(tmp_path / "b.jsonl", qa(4))}]
    prepared = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, entries), tiny_tokenizer)
    assert len(prepared.train) == 8 and prepared.report.duplicates_removed == 0


# -- decontamination --------------------------------------------------------------------------------

QUESTION = "Which planet in the solar system has the largest number of known moons orbiting it today?"


def test_decontamination_removes_records_that_hold_a_benchmark_question(tmp_path, tiny_tokenizer_dir,
                                                                         tiny_tokenizer, airo_env):
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": QUESTION}, {"question": "x" * 5}])
    a = qa(6) + [{"instruction": f"Quiz: {QUESTION.upper()}", "response": "answer 90"}]
    b = qa(3, 100, answer="other") + [{"instruction": "tell me", "response": f"other 91. {QUESTION}"}]
    entries = [{"path": write_jsonl(tmp_path / "a.jsonl", a), "epochs": 1},
               {"path": write_jsonl(tmp_path / "b.jsonl", b), "epochs": 1}]
    work = tmp_path / "work"
    cfg = mix_config(tmp_path, tiny_tokenizer_dir, entries, "--decontaminate", bench, "--on_bad_record", "skip")
    prepared = prepare_datasets(cfg, tiny_tokenizer, rejects_dir=str(work))
    got = {which(t) for t in texts(tiny_tokenizer, prepared.train)}
    assert ("answer", 90) not in got and ("other", 91) not in got and len(got) == 9
    assert [r["decontaminated"] for r in prepared.sources] == [1, 1]
    rejects = [json.loads(x) for x in (work / "rejects.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rejects} == {"decontaminated"} and len(rejects) == 2
    assert any("exact match" in r["problem"] for r in rejects)
    # one --dataset is screened as well
    single = api.load_config(None, ["--model_name_or_path", tiny_tokenizer_dir, "--output_dir", "o", "--dataset",
                                    entries[0]["path"], "--decontaminate", bench, "--eval_dataset_size", "0"])
    one = prepare_datasets(single, tiny_tokenizer)
    assert one.report.dropped == {"decontaminated": 1} and len(one.train) == 6
    # another question file is another cache entry
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "a question that no training record contains at all"}])
    single.data.decontaminate = other
    assert len(prepare_datasets(single, tiny_tokenizer).train) == 7


# -- templates and the text format -------------------------------------------------------------------

def test_template_lists_every_and_random(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    data = write_jsonl(tmp_path / "a.jsonl", qa(12))
    every = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, [
        {"path": data, "format": "airoboros", "template": ["airoboros", "chatml"], "template_choice": "every"}],
        dedup="prompt"), tiny_tokenizer)
    shown = texts(tiny_tokenizer, every.train)
    assert len(shown) == 24  # one example per template, kept together by dedup (one record)
    assert sum("<|im_start|>" in t for t in shown) == 12
    random = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, [
        {"path": data, "template": ["airoboros", "chatml"], "template_choice": "random"}], dedup="prompt"),
        tiny_tokenizer)
    chosen = ["<|im_start|>" in t for t in texts(tiny_tokenizer, random.train)]
    assert len(chosen) == 12 and 0 < sum(chosen) < 12
    again = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, [
        {"path": data, "template": ["airoboros", "chatml"]}], dedup="prompt"), tiny_tokenizer, use_cache=False)
    assert again.train["input_ids"] == random.train["input_ids"]


def test_text_format_trains_every_token_and_packs(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    from airo.core.data.packing import pack_dataset

    data = write_jsonl(tmp_path / "t.jsonl", [{"text": f"plain text {i} about nothing much"} for i in range(6)]
                       + [{"text": "   "}])
    cfg = api.load_config(None, ["--model_name_or_path", tiny_tokenizer_dir, "--output_dir", "o", "--dataset", data,
                                 "--dataset_format", "text", "--eval_dataset_size", "0", "--on_bad_record", "skip"])
    prepared = prepare_datasets(cfg, tiny_tokenizer)
    assert len(prepared.train) == 6 and prepared.report.dropped == {"skipped_by_format": 1}
    for ids, labels in zip(prepared.train["input_ids"], prepared.train["labels"]):
        assert ids[0] == tiny_tokenizer.bos_token_id and ids[-1] == tiny_tokenizer.eos_token_id
        assert labels[1:] == ids[1:]  # every token of the text (and the EOS) is trained
    assert tiny_tokenizer.decode(prepared.train["input_ids"][0], skip_special_tokens=True) == \
        "plain text 0 about nothing much"
    packed, stats = pack_dataset(prepared.train, 64, seed=1, workdir=tmp_path)
    assert stats.examples == 6 and stats.rows < 6


# -- the per-source cache -----------------------------------------------------------------------------

def test_a_changed_share_re_mixes_and_an_edited_file_re_tokenizes_only_its_source(
        tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env, monkeypatch):
    a = write_jsonl(tmp_path / "a.jsonl", qa(8))
    b = write_jsonl(tmp_path / "b.jsonl", qa(8, 100, answer="other"))
    first = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, [{"path": a}, {"path": b}]), tiny_tokenizer)
    assert not first.from_cache
    tokenized: list[str] = []
    real = pipeline.tokenize_rendered

    def counting(tokenizer, plan, rendered, config, **kw):
        tokenized.extend(str(r) for r in rendered)
        return real(tokenizer, plan, rendered, config, **kw)

    monkeypatch.setattr(pipeline, "tokenize_rendered", counting)
    remixed = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, [{"path": a, "weight": 3},
                                                                         {"path": b, "records": 2}]), tiny_tokenizer)
    assert tokenized == [], "an unchanged source was tokenized again"
    assert remixed.from_cache and [r["from_cache"] for r in remixed.sources] == [True, True]
    assert Counter(which(t)[0] for t in texts(tiny_tokenizer, remixed.train)) == {"answer": 8, "other": 2}
    write_jsonl(tmp_path / "b.jsonl", qa(9, 100, answer="other"))  # edited
    edited = prepare_datasets(mix_config(tmp_path, tiny_tokenizer_dir, [{"path": a}, {"path": b}]), tiny_tokenizer)
    assert [r["from_cache"] for r in edited.sources] == [True, False]
    assert len(tokenized) == 9 and all("other" in t for t in tokenized)
    assert len(edited.train) == 17


# -- parallel tokenization -------------------------------------------------------------------------------

def test_parallel_tokenization_equals_serial_token_for_token(tmp_path, tiny_tokenizer_dir, tiny_tokenizer,
                                                             airo_env, monkeypatch):
    from airo.core.data import maker

    rows = [{"instruction": f"question {i} " + "word " * (i % 37), "response": "reply " * (i % 23) + str(i)}
            for i in range(400)]
    rows[17] = {"instruction": "long " * 600, "response": "x"}  # dropped: too long
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    monkeypatch.setattr(pipeline, "CHUNK", 16)  # many chunks
    started = []
    real_start = maker._start_pool
    monkeypatch.setattr(maker, "_start_pool", lambda *a: started.append(a[1]) or real_start(*a))

    def run(workers):
        cfg = api.load_config(None, ["--model_name_or_path", tiny_tokenizer_dir, "--output_dir", "o", "--dataset",
                                     data, "--eval_dataset_size", "0.1", "--model_max_len", "256", "--on_bad_record",
                                     "skip", "--preprocessing_num_workers", str(workers)])
        return prepare_datasets(cfg, tiny_tokenizer, use_cache=False)

    serial, parallel = run(1), run(3)
    assert started == [3]  # the pool ran (one worker: none)
    for split in ("train", "eval"):
        a, b = getattr(serial, split), getattr(parallel, split)
        assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
    for field in ("records_read", "conversations", "dropped", "examples", "tokens", "trained_tokens"):
        assert getattr(serial.report, field) == getattr(parallel.report, field), field
    assert serial.report.dropped == {"too_long": 1}


def test_workers_default_to_the_cores_available(tiny_tokenizer_dir):
    from airo.core.data.maker import available_cores, workers_for

    cfg = api.load_config(None, ["--model_name_or_path", tiny_tokenizer_dir, "--output_dir", "o", "--dataset", "x"])
    assert workers_for(cfg) == available_cores() >= 1
    cfg.data.preprocessing_num_workers = 2
    assert workers_for(cfg) == 2


# -- the config -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, message", [
    ({"path": "b.jsonl", "weight": 1, "records": 5}, r"line \d+: datasets\[1\]\.records: give exactly one of weight"),
    ({"path": "b.jsonl", "weight": -1}, r"line \d+: datasets\[1\]\.weight must be a number above 0, got -1"),
    ({"path": "b.jsonl", "records": 2.5}, r"datasets\[1\]\.records must be a whole number of at least 1"),
    ({"path": "b.jsonl", "epochs": 0}, r"datasets\[1\]\.epochs must be a number above 0"),
    ({"path": "b.jsonl", "wieght": 2}, r"datasets\[1\]\.wieght: unknown field\. Did you mean 'weight'\?"),
    ({"weight": 2}, r"datasets\[1\]: path is required"),
    ({"path": "b.jsonl", "format": "alpacca"}, r"datasets\[1\]\.format: unknown dataset format 'alpacca'\. "
                                               r"Did you mean 'alpaca'\?"),
    ({"path": "b.jsonl", "template": ["chatml", "nope"]}, r"datasets\[1\]\.template: unknown prompt template 'nope'"),
    ({"path": "b.jsonl", "template_choice": "all"}, r"datasets\[1\]\.template_choice must be one of random, every"),
    ({"path": "b.jsonl", "train_on": "replies"}, r"datasets\[1\]\.train_on must be one of"),
    ({"path": "b.jsonl", "eval_size": 2.5}, r"datasets\[1\]\.eval_size must be a fraction below 1, a count, or 0"),
    ({"path": "b.jsonl", "max_records": 0}, r"datasets\[1\]\.max_records must be a whole number of at least 1"),
    ("", r"datasets\[1\]\.path: expected a file, folder or Hub name, got ''"),
])
def test_every_entry_is_checked_before_anything_loads(entry, message, tmp_path, airo_env):
    with pytest.raises(ConfigError, match=message):
        mix_config(tmp_path, "m", [{"path": "a.jsonl"}, entry])


def test_the_error_names_the_line_of_the_field(tmp_path, airo_env):
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: m\noutput_dir: o\ndatasets:\n  - path: a.jsonl\n  - path: b.jsonl\n"
                    "    format: alpaca\n    epochs: -2\n")
    with pytest.raises(ConfigError, match=rf"{path}, line 7: datasets\[1\]\.epochs must be a number above 0"):
        api.load_config(str(path), [])


def test_repeated_dataset_flag_is_a_list_and_one_stays_the_seed_flag(tmp_path, airo_env):
    cfg = api.load_config(None, ["--model_name_or_path", "m", "--output_dir", "o", "--dataset", "a.jsonl",
                                 "--dataset", "b.jsonl,c.jsonl"])
    assert cfg.data.datasets == [{"path": "a.jsonl"}, {"path": "b.jsonl,c.jsonl"}]
    assert cfg.data.dataset == "a.jsonl,b.jsonl,c.jsonl"
    one = api.load_config(None, ["--model_name_or_path", "m", "--output_dir", "o", "--dataset", "a.jsonl"])
    assert one.data.datasets is None and one.data.dataset == "a.jsonl"
    with pytest.raises(ConfigError, match="both name the data; give one"):
        mix_config(tmp_path, "m", [{"path": "a.jsonl"}], "--dataset", "z.jsonl")
    with pytest.raises(ConfigError, match="--dedup must be none, prompt or conversation"):
        api.load_config(None, ["--model_name_or_path", "m", "--output_dir", "o", "--dataset", "a", "--dedup", "x"])


def test_a_mix_holds_the_records_its_objective_trains_on(tmp_path, airo_env):
    with pytest.raises(ConfigError, match=r"datasets\[1\] has format preference, which gives preference records; "
                                          r"--objective sft trains on conversations"):
        mix_config(tmp_path, "m", [{"path": "a.jsonl"}, {"path": "p.jsonl", "format": "preference"}])
    with pytest.raises(ConfigError, match=r"--objective dpo trains on preference records from one --dataset"):
        mix_config(tmp_path, "m", [{"path": "a.jsonl", "format": "preference"}], objective="dpo")


def test_preflight_checks_every_source_and_question_file(tmp_path, tiny_tokenizer_dir, airo_env):
    from airo.core.errors import DataError
    from airo.core.preflight import preflight

    a = write_jsonl(tmp_path / "a.jsonl", qa(2))
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        preflight(mix_config(tmp_path, tiny_tokenizer_dir, [{"path": a}, {"path": str(tmp_path / "missing.jsonl")}]))
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        preflight(mix_config(tmp_path, tiny_tokenizer_dir, [{"path": a}], decontaminate=str(tmp_path / "nope.jsonl")))


# -- what each source gave: the report, `airo preview`, the model card ---------------------------------

def test_report_preview_and_model_card_show_each_source(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, airo_env):
    from airo.plugins.model_card import write_card

    a = write_jsonl(tmp_path / "a.jsonl", qa(6) + [{"instruction": "bad"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"plain text {i}"} for i in range(4)])
    cfg = mix_config(tmp_path, tiny_tokenizer_dir, [{"path": a}, {"path": b, "format": "text", "epochs": 2}],
                     "--on_bad_record", "skip")
    prepared = prepare_datasets(cfg, tiny_tokenizer)
    row = prepared.report.to_dict()["sources"][0]
    assert row["records_read"] == 7 and row["skipped"] == {"invalid_record": 1} and row["train_examples"] == 6
    assert prepared.sources[1]["train_examples"] == 8
    lines = "\n".join(prepared.report.summary_lines())
    assert "sources (2, dedup none: 0 removed)" in lines and "[1] " in lines and "% of the mix's" in lines

    examples = api.preview(cfg, 3)
    assert all(ex["source"]["index"] in (0, 1) for ex in examples)
    assert any("a.jsonl" in line for line in examples.report_lines)

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "data_report.json").write_text(json.dumps(prepared.report.to_dict()))
    card = write_card(folder, {"data": {"dataset": cfg.data.dataset}}, kind="adapter", name="m",
                      chat_template=None).read_text()
    assert "## Data" in card and "| `a.jsonl` | airoboros / airoboros | weight 1 | 7 | 1 (invalid_record 1) |" in card
    assert "| `b.jsonl` | text / plain | epochs 2 | 4 | 0 |" in card
    assert str(tmp_path) not in card  # file names, not the training machine's paths


# -- under torchrun ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_mix_with_sample_packing_under_torchrun_two_processes(tiny_model_dir, tmp_path, airo_env):
    """Three sources in three formats, dedup and packing, two processes: the run trains, each
    process takes whole batches of the packed mix, the tokens trained are the mix's once per
    epoch, and the mix is the one a single process prepares from the same config."""
    import math
    import re
    import sys

    from conftest import EXAMPLES
    from test_distributed import _free_port, _run

    a = write_jsonl(tmp_path / "a.jsonl", qa(40))
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"plain text {i} " + "words " * (i % 9)} for i in range(30)])
    entries = [{"path": str(EXAMPLES / "data" / "conversations.json"), "format": "airoboros_chat", "weight": 2},
               {"path": a, "weight": 1, "template": ["airoboros", "chatml"]},
               {"path": b, "format": "text", "epochs": 1.5}]
    cfg = mix_config(tmp_path, tiny_model_dir, entries, dedup="prompt", model_max_len=200, sample_packing=True)
    proc, elapsed = _run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", "-m", "airo.core", "train", cfg.config_file,
                          "--full_finetune", "--bits", "16", "--num_train_epochs", "1",
                          "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                          "--logging_steps", "1", "--save_steps", "50", "--optim", "adamw_torch",
                          "--learning_rate", "2e-5", "--report_to", "none"])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"torchrun x2 packed mix of 3 sources: {elapsed:.1f}s")
    out = proc.stdout
    assert "x 2 process(es)" in out and out.count("sources (3, dedup prompt") == 1
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert [row["index"] for row in report["sources"]] == [0, 1, 2]
    from airo.core.tokenizer import load_tokenizer

    single = prepare_datasets(cfg, load_tokenizer(cfg), use_cache=False)
    assert report["examples"]["train"] == len(single.train)
    assert report["tokens"]["train"] == single.report.tokens["train"]
    assert [r["train_examples"] for r in report["sources"]] == [r["train_examples"] for r in single.sources]
    line = re.search(r"packing: +([\d,]+) examples in ([\d,]+) rows of 200 tokens", out)
    assert line and int(line[1].replace(",", "")) == len(single.train)
    rows = int(line[2].replace(",", ""))
    assert rows % 4 == 0  # whole batches of 2 on each of the 2 processes
    work = tmp_path / "out-checkpoints"
    logged = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert max(r.get("num_input_tokens_seen", 0) for r in logged) == single.report.tokens["train"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Data" in card and "`a.jsonl`" in card

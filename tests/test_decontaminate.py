"""Decontamination (core/data/decontaminate.py, core/data/benchmark_questions.py): the
normalisation, exact containment, the n-gram threshold at and around its boundary, short
questions, the fast matcher against a slow reference on generated texts, every question
file format (the MMLU layouts included) and located errors for bad files."""

from __future__ import annotations

import json
import pickle
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airo.core.data import decontaminate as dc
from airo.core.data.decontaminate import QuestionIndex, load_benchmark_questions, normalize
from airo.core.errors import ConfigError, DataError

WORDS = [f"w{i}x" for i in range(400)]  # distinct words no test text uses by accident
FAST = settings(max_examples=60, deadline=None)


def reference_normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])", r" \1 ", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def reference_match(questions, texts, ngram, threshold, min_chars=0):
    """Slow and obvious: every question against every text, grams as tuples."""
    indexed = []
    for q in questions:
        words = normalize(q).split()
        if len(" ".join(words)) < max(min_chars, 1):
            continue
        grams = {tuple(words)} if len(words) < ngram else {tuple(words[i:i + ngram])
                                                           for i in range(len(words) - ngram + 1)}
        indexed.append((" ".join(words), grams))
    out = []
    for text in texts:
        words = normalize(text).split()
        present = {tuple(words[i:i + k]) for k in {len(g) for _, gs in indexed for g in gs}
                   for i in range(len(words) - k + 1)}
        kind = None
        for q, grams in indexed:
            if f" {q} " in f" {' '.join(words)} ":
                kind = "exact"
                break
            if sum(g in present for g in grams) / len(grams) >= threshold:
                kind = "ngram"
        out.append(kind)
    return out


# -- normalisation ------------------------------------------------------------------------------------

def test_normalize_casefolds_nfkc_strips_punctuation_and_collapses_whitespace():
    assert normalize("  What IS\tthe  Capital\n of France?! ") == "what is the capital of france"
    assert normalize("ＷＨＡＴ ｉｓ ﬁne") == "what is fine"  # full-width forms and the fi ligature (NFKC)
    assert normalize("Straße") == "strasse"  # casefold, not lower
    assert normalize("end.Next  snake_case (x+y)=z") == "end next snake case x y z"
    assert normalize("日本語のテスト") == "日 本 語 の テ ス ト"
    assert normalize("...!!!") == ""


@FAST
@given(st.text(max_size=60))
def test_normalize_fast_ascii_path_equals_the_general_one(text):
    assert normalize(text) == reference_normalize(text)
    ascii_text = text.encode("ascii", "replace").decode()
    assert normalize(ascii_text) == reference_normalize(ascii_text)


# -- matching -----------------------------------------------------------------------------------------

QUESTION = "Which planet of the solar system has the largest number of known moons orbiting it today?"


def test_exact_containment_after_normalisation():
    index = QuestionIndex.from_texts([QUESTION], ngram=5)
    assert index.match(QUESTION) == "exact"
    assert index.match("Quiz time. WHICH planet, of the solar-system, has the largest number of known moons "
                       "orbiting it today... Answer: Saturn") == "exact"
    assert index.match("which planet of the solar system has the largest number of known moons") == "ngram"
    # containment is on word boundaries: a word glued to the question's first word is another word
    assert index.match("xwhich planet of the solar system has the largest number of known moons orbiting it "
                       "today") == "ngram"
    assert index.match("The solar wind carries charged particles away from the sun.") is None
    kind, origin, question = index.explain(f"Q: {QUESTION}")
    assert (kind, origin, question) == ("exact", "question 0", normalize(QUESTION))
    assert index.explain("nothing to see") is None


@FAST
@given(extra=st.integers(0, 12), ngram=st.integers(1, 6), kept=st.data(), nudge=st.sampled_from([-1e-9, 0, 1e-9]))
def test_ngram_threshold_at_and_around_the_boundary(extra, ngram, kept, nudge):
    words = WORDS[:ngram + extra]
    grams = len(words) - ngram + 1
    shown = kept.draw(st.integers(0, len(words) - 1))  # a prefix of the question, never all of it
    hits = max(shown - ngram + 1, 0)
    threshold = min(max(hits / grams + nudge, 1e-6), 1.0) if hits else 0.5
    index = QuestionIndex.from_texts([" ".join(words)], ngram=ngram, threshold=threshold, min_chars=0)
    text = "filler " + " ".join(words[:shown]) + " more filler"
    expected = "ngram" if hits and hits / grams >= threshold else None
    assert index.match(text) == expected
    assert index.match("filler " + " ".join(words) + ".") == "exact"


def test_threshold_counts_distinct_grams_once():
    index = QuestionIndex.from_texts(["a b c a b c a b"], ngram=2, threshold=1.0, min_chars=0)
    assert index.describe()["grams"] == 3  # ab, bc, ca
    assert index.match("c a b c") == "ngram"  # all three grams, not the whole question
    assert index.match("a b c") is None  # two of three


def test_short_questions_are_one_gram_of_all_their_words():
    index = QuestionIndex.from_texts(["Who wrote Hamlet?", "What is the boiling point of water at sea level?"],
                                     ngram=13, min_chars=0)
    assert index.match("Trivia: who WROTE hamlet - Shakespeare") == "exact"
    assert index.match("who wrote the play hamlet") is None  # all its words, not next to each other
    assert index.match("what is the boiling point of water") is None
    assert index.match("So: what is the boiling point of water at sea level? 100 C") == "exact"


def test_too_short_and_duplicate_questions_are_counted_not_indexed():
    index = QuestionIndex.from_texts(["Why?", "Who wrote Hamlet, the play?", "who wrote hamlet the play"],
                                     min_chars=10)
    d = index.describe()
    assert (d["questions"], d["too_short"], d["duplicates"]) == (1, 1, 1)
    assert d["too_short_examples"] == ["question 0"]
    assert index.match("why?") is None


def test_no_false_positive_on_unrelated_text():
    index = QuestionIndex.from_texts([QUESTION, "Name the author of the novel Pride and Prejudice, published 1813.",
                                      " ".join(WORDS[:40])], ngram=8)
    texts = ["The quick brown fox jumps over the lazy dog. " * 30, " ".join(WORDS[:40][::-1]),
             " ".join(WORDS[i] for i in range(0, 40, 2)), "", "   ", "Which planet?"]
    assert index.match_many(texts) == [None] * len(texts)


def test_grams_never_span_two_texts_and_batches_agree(monkeypatch):
    words = WORDS[:30]
    index = QuestionIndex.from_texts([" ".join(words)], ngram=5)
    halves = [" ".join(words[:14]), " ".join(words[14:])]
    assert index.match_many(halves) == [None, None]
    texts = [f"text {i} " + (" ".join(words) if i % 7 == 3 else "nothing") for i in range(50)]
    one_batch = index.match_many(texts)
    monkeypatch.setattr(dc, "_CHUNK_CHARS", 64)
    assert index.match_many(texts) == one_batch == [index.match(t) for t in texts]
    assert one_batch.count("exact") == 7


def test_index_pickles_for_worker_processes():
    index = QuestionIndex.from_texts([QUESTION], ngram=5)
    clone = pickle.loads(pickle.dumps(index))
    assert clone.match(QUESTION.upper()) == "exact" and clone.describe() == index.describe()


def test_bad_options_are_config_errors():
    for options in ({"ngram": 0}, {"ngram": True}, {"threshold": 0}, {"threshold": 1.5}, {"min_chars": -1}):
        with pytest.raises(ConfigError, match="decontamination"):
            QuestionIndex.from_texts(["a question here"], **options)


@settings(max_examples=120, deadline=None)
@given(questions=st.lists(st.lists(st.sampled_from("abcde"), min_size=1, max_size=9).map(" ".join), min_size=1,
                          max_size=6),
       texts=st.lists(st.lists(st.sampled_from("abcdef,. "), max_size=40).map(" ".join), min_size=1, max_size=6),
       ngram=st.integers(1, 5), threshold=st.sampled_from([0.1, 1 / 3, 0.5, 0.7, 0.75, 1.0]))
def test_fast_matcher_equals_slow_reference(questions, texts, ngram, threshold):
    index = QuestionIndex.from_texts(questions, ngram=ngram, threshold=threshold, min_chars=0)
    expected = reference_match(questions, texts, ngram, threshold)
    assert index.match_many(texts) == expected
    with pytest.MonkeyPatch.context() as mp:  # tiny batches: long texts in overlapping pieces
        mp.setattr(dc, "_CHUNK_CHARS", 16)
        mp.setattr(dc, "_MB", 8)
        assert index.match_many(texts) == expected
        assert [normalize(t) for t in texts] == [reference_normalize(t) for t in texts]


# -- question files -----------------------------------------------------------------------------------

Q1, Q2 = "What is the capital city of Australia today?", "Which gas do plants absorb from the air?"


def questions_of(path, **kw):
    index = load_benchmark_questions(path, min_chars=0, **kw)
    return index.questions, index.origins


def test_reads_jsonl_json_wrapper_and_json_lines_named_json(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"question": Q1}) + "\n\n" + json.dumps({"prompt": Q2}) + "\n")
    where = tmp_path / "a.jsonl"
    assert questions_of(where) == ([normalize(Q1), normalize(Q2)], [f"{where}, line 1", f"{where}, line 3"])
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": Q1, "input": "x"}, {"text": Q2}], indent=1))
    assert questions_of(tmp_path / "b.json")[0] == [normalize(Q1), normalize(Q2)]
    (tmp_path / "c.json").write_text(json.dumps({"data": [{"input": Q1}]}))
    assert questions_of(tmp_path / "c.json")[0] == [normalize(Q1)]
    (tmp_path / "d.json").write_text(json.dumps({"question": Q2}) + "\n" + json.dumps({"question": Q1}) + "\n")
    assert questions_of(tmp_path / "d.json")[0] == [normalize(Q2), normalize(Q1)]


def test_reads_csv_tsv_parquet_and_folders(tmp_path):
    (tmp_path / "q.csv").write_text(f'id,Question,answer\n1,"{Q1}",x\n2,"{Q2}\nsecond line",y\n')
    assert questions_of(tmp_path / "q.csv") == ([normalize(Q1), normalize(Q2 + " second line")],
                                                [f"{tmp_path / 'q.csv'}, line 2", f"{tmp_path / 'q.csv'}, line 3"])
    (tmp_path / "q.tsv").write_text(f"prompt\tother\n{Q2}\t1\n")
    assert questions_of(tmp_path / "q.tsv")[0] == [normalize(Q2)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"n": [1, 2], "question": [Q1, Q2]}), tmp_path / "q.parquet")
    assert questions_of(tmp_path / "q.parquet") == ([normalize(Q1), normalize(Q2)],
                                                    [f"{tmp_path / 'q.parquet'}, record 0",
                                                     f"{tmp_path / 'q.parquet'}, record 1"])
    index = load_benchmark_questions([tmp_path], min_chars=0)
    assert [f["path"] for f in index.describe()["files"]] == sorted(str(p) for p in tmp_path.iterdir())
    assert index.describe()["questions"] == 3 and index.describe()["duplicates"] == 2


def test_reads_mmlu_csv_layout_and_the_evaluation_plugins_json(tmp_path):
    # MMLU's own files: no header; question, four choices, answer letter
    (tmp_path / "astronomy_test.csv").write_text(
        f'"{Q1}",Sydney,Canberra,Melbourne,Perth,B\n"{Q2}","Oxygen","Carbon dioxide",Nitrogen,Helium,B\n')
    index = load_benchmark_questions(tmp_path / "astronomy_test.csv", min_chars=0)
    assert index.questions == [normalize(Q1), normalize(Q2)]
    assert index.match(f"Here is a quiz. {Q1} (a) Sydney (b) Canberra") == "exact"
    # the evaluation plugin's five-shot prompt: the question asked last, without its choices
    five_shot = ("The following are multiple choice questions (with answers) about geography.\n\n"
                 f"{Q2}\nA. Oxygen\nB. Carbon dioxide\nC. Nitrogen\nD. Helium\nAnswer: B\n\n"
                 f"{Q1}\nA. Sydney\nB. Canberra\nC. Melbourne\nD. Perth\nAnswer:")
    (tmp_path / "five_shot_mmlu_val.json").write_text(json.dumps([{"input": five_shot, "output": "B",
                                                                     "subject": "geography"}]))
    index = load_benchmark_questions(tmp_path / "five_shot_mmlu_val.json", min_chars=0)
    assert index.questions == [normalize(Q1)]


def error_of(path, content: str | bytes):
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(DataError) as info:
        load_benchmark_questions(path)
    return str(info.value)


@pytest.mark.parametrize("name, content, where, problem", [
    ("bad.jsonl", '{"question": "fine one"}\n\n{"question": oops}\n', ", line 3:", "malformed JSON"),
    ("bad.jsonl", '{"question": "fine one"}\n{"answer": "x"}\n', ", line 2:", "no question field"),
    ("bad.jsonl", '{"question": null}\n', ", line 1:", "holds null, not a string"),
    ("bad.jsonl", '["a list"]\n', ", line 1:", "expected an object"),
    ("bad.json", '[\n {"question": "ok"},\n\n {"q": "x"}\n]', ", line 4:", "no question field"),
    ("bad.json", '[\n {"question": "ok"},\n {"question": "x"\n]', ", line 4:", "malformed JSON"),
    ("bad.csv", 'question,b\nfine,1\nragged,1,2\n', ", line 3:", "3 fields, the first row has 2"),
    ("bad.csv", 'what,is,this\n', ", line 1:", "no header naming a question column"),
    ("bad.csv", '"q one",a,b,c,d,A\n"q two",a,b,c,d,E\n', ", line 2:", "not a letter naming one of the 4"),
    ("bad.csv", 'question\n"never closed\n', ", line 2:", "malformed CSV"),
    ("bad.tsv", b'question\nfine\n\xff\xfe bad\n', ", line 3:", "invalid UTF-8"),
])
def test_bad_files_are_located_errors(tmp_path, name, content, where, problem):
    message = error_of(tmp_path / name, content)
    assert message.startswith(str(tmp_path / name) + where) and problem in message, message


def test_bad_files_without_lines(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": [1, 2]}), tmp_path / "ints.parquet")
    assert "column 'question' holds int64, not strings" in error_of(tmp_path / "ints.parquet",
                                                                     (tmp_path / "ints.parquet").read_bytes())
    pq.write_table(pa.table({"question": ["a", None]}), tmp_path / "null.parquet")
    assert "null.parquet, record 1: field 'question' holds null" in error_of(tmp_path / "null.parquet",
                                                                            (tmp_path / "null.parquet").read_bytes())
    assert "not.parquet: cannot read parquet" in error_of(tmp_path / "not.parquet", b"nope")
    assert "unsupported file type '.txt'" in error_of(tmp_path / "q.txt", "a question")
    assert "empty.jsonl: holds no questions" in error_of(tmp_path / "empty.jsonl", "\n")
    with pytest.raises(DataError, match="no such file or folder"):
        load_benchmark_questions(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="no benchmark question files"):
        load_benchmark_questions([])


def test_an_index_of_no_questions_matches_nothing():
    index = QuestionIndex.from_texts(["?", "ok"], min_chars=5)
    assert len(index) == 0 and index.describe()["too_short"] == 2
    assert index.match_many(["ok", "anything at all", ""]) == [None, None, None]


def test_non_ascii_questions_match_through_normalisation():
    index = QuestionIndex.from_texts(["Qu'est-ce que la photosynthèse des plantes vertes ?", "光合作用是什么过程"],
                                     ngram=3, min_chars=0)
    assert index.match("Question : QU’EST-CE QUE LA PHOTOSYNTHÈSE des plantes vertes") == "exact"
    assert index.match("Ｑｕ'est-ce que la photosynthèse des plantes") == "ngram"  # full-width letters (NFKC)
    assert index.match("请回答：光合作用是什么过程？") == "exact"  # no spaces around it: each character is a word
    assert index.match("光合作用是什么") == "ngram"  # 5 of its 7 character trigrams
    assert index.match("光合作用") is None  # 2 of 7


def test_iter_match_is_lazy_and_in_order(monkeypatch):
    monkeypatch.setattr(dc, "_CHUNK_CHARS", 200)
    index = QuestionIndex.from_texts([QUESTION], ngram=5)
    read = []

    def stream():
        for i in range(40):
            read.append(i)
            yield QUESTION if i % 3 == 0 else f"record {i} says nothing in particular about anything at all"

    results = index.iter_match(stream())
    assert next(results) == "exact" and len(read) < 40  # a batch ahead, not the whole stream
    assert [None, None, "exact"] == [next(results) for _ in range(3)]
    assert list(results) == [None if i % 3 else "exact" for i in range(4, 40)]


def test_a_text_longer_than_a_batch_is_matched_in_overlapping_pieces(monkeypatch):
    monkeypatch.setattr(dc, "_CHUNK_CHARS", 300)
    index = QuestionIndex.from_texts([" ".join(WORDS[:30])], ngram=13)
    filler = " ".join(WORDS[100:400])  # about 1,500 characters: several pieces
    for at in range(0, 300, 37):  # the question starts in every part of a piece
        text = " ".join(WORDS[100:100 + at]) + " " + " ".join(WORDS[:30]) + " " + filler
        assert index.match(text) == "exact", at
        assert index.match(text.replace(WORDS[29], "changed")) == "ngram", at
    assert index.match(filler) is None


def test_a_json_list_of_strings_is_a_list_of_questions(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([Q1, Q2]))
    assert questions_of(tmp_path / "q.json")[0] == [normalize(Q1), normalize(Q2)]

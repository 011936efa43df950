"""Decontamination speed: training records/s against 100,000 benchmark questions.

Synthetic data (nothing is downloaded): a Zipf-distributed vocabulary shared by the
questions and the training texts (the hard case: almost every window of a text is made of
words some question uses), questions of 4 to 80 words, training records of 60 to 400 words.
Of the records, ``--contaminated`` (share) hold a whole question with its case and
punctuation changed (must be ``exact``) and as many hold 70% of a long question's words in
a row (must be ``ngram``); the rest are clean. Reported: index build time, records/s of
``match_many`` and of ``match`` one record per call, the naive baseline (every question's
normalised text searched in every record with ``in``) on a small subset of the same records
in the same run, the ratio, and peak RSS (VmHWM) before and after each stage.

    python decontamination.py --records 200000
"""

from __future__ import annotations

import argparse
import pickle
import random
import time

import numpy as np
from _proc import status_mib

from airo.core.data.decontaminate import QuestionIndex, normalize


def vocabulary(size: int, rng: random.Random) -> list[str]:
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"]
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def sampler(words: list[str], seed: int):
    gen = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, len(words) + 1))
    cdf /= cdf[-1]
    arr = np.array(words, dtype=object)
    return lambda n: arr[np.minimum(np.searchsorted(cdf, gen.random(n)), len(words) - 1)].tolist()


def disguise(text: str, rng: random.Random) -> str:
    """The same words with other case and punctuation (what normalisation must see through)."""
    out = []
    for w in text.split():
        w = w.upper() if rng.random() < 0.2 else w.capitalize() if rng.random() < 0.2 else w
        out.append(w + rng.choice(["", "", "", ",", ".", "?", " -", ";"]))
    return " ".join(out)


_INDEX = None


def _match_part(part: list[str]) -> list:
    return _INDEX.match_many(part)


def in_processes(index, records: list[str], processes: int) -> tuple[list, float]:
    """match_many over ``processes`` forked workers (the index inherited, not pickled)."""
    import multiprocessing

    global _INDEX
    _INDEX = index
    step = -(-len(records) // (processes * 8))
    parts = [records[i:i + step] for i in range(0, len(records), step)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        found = [m for part in pool.map(_match_part, parts) for m in part]
    return found, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=100_000)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--contaminated", type=float, default=0.01, help="share of records per kind of contamination")
    ap.add_argument("--naive", type=int, default=200, help="records for the naive baseline")
    ap.add_argument("--processes", type=int, default=2, help="also time match_many in this many processes (0: skip)")
    ap.add_argument("--small-index", type=int, default=2000,
                    help="also time an index of only this many of the questions on the same records (0: skip)")
    ap.add_argument("--single", type=int, default=5000, help="records matched one call each")
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--ngram", type=int, default=13)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    draw = sampler(vocabulary(args.vocab, rng), args.seed)

    t0 = time.perf_counter()
    questions = [" ".join(draw(rng.choice([rng.randint(4, 12), rng.randint(13, 80)]))) + "?"
                 for _ in range(args.questions)]
    plantable = [q for q in questions if len(normalize(q)) >= 20]  # what the index keeps (min_chars 20)
    records, expected = [], []
    for i in range(args.records):
        body = draw(rng.randint(60, 400))
        kind = None
        roll = rng.random()
        if roll < args.contaminated:
            kind, q = "exact", disguise(rng.choice(plantable), rng)
        elif roll < 2 * args.contaminated:
            long = [q for q in (rng.choice(plantable) for _ in range(20)) if len(q.split()) >= 40][:1]
            if long:
                words = long[0].split()
                keep = int(len(words) * 0.7)
                kind, q = "ngram", " ".join(words[:keep]) + " " + " ".join(draw(len(words) - keep))
        if kind:
            at = rng.randint(0, len(body))
            body[at:at] = [q]
        records.append(" ".join(body))
        expected.append(kind)
    chars = sum(map(len, records))
    print(f"generated {len(questions):,} questions, {len(records):,} records ({chars / 2**20:,.0f} MiB of text) "
          f"in {time.perf_counter() - t0:.1f} s; peak RSS {status_mib('VmHWM'):,.0f} MiB")

    rss0 = status_mib("VmHWM")
    t0 = time.perf_counter()
    index = QuestionIndex.from_texts(questions, ngram=args.ngram, threshold=args.threshold)
    build = time.perf_counter() - t0
    rss1 = status_mib("VmHWM")
    d = index.describe()
    size = len(pickle.dumps(index)) / 2 ** 20
    print(f"index: {d['questions']:,} questions, {d['grams']:,} grams, built in {build:.1f} s; "
          f"peak RSS {rss1:,.0f} MiB (+{rss1 - rss0:,.0f} while building); the index pickled (what a worker "
          f"process receives) {size:,.0f} MiB")

    t0 = time.perf_counter()
    found = index.match_many(records)
    scan = time.perf_counter() - t0
    rss2 = status_mib("VmHWM")
    fast = len(records) / scan
    print(f"match_many: {len(records):,} records in {scan:.1f} s = {fast:,.0f} records/s; "
          f"peak RSS {rss2:,.0f} MiB (+{rss2 - rss1:,.0f} over the build)")

    missed = sum(1 for e, f in zip(expected, found) if e and not f)
    weaker = sum(1 for e, f in zip(expected, found) if e == "exact" and f != "exact")
    extra = [i for i, (e, f) in enumerate(zip(expected, found)) if f and not e]
    verified = 0
    for i in extra:  # a clean record that holds a (short) question by chance: check it really does
        kind, _, q = index.explain(records[i])
        words, text = q.split(), normalize(records[i]).split()
        grams = {tuple(words[j:j + args.ngram]) for j in range(max(len(words) - args.ngram + 1, 1))}
        present = sum(any(tuple(text[k:k + len(g)]) == g for k in range(len(text))) for g in grams)
        verified += (f" {q} " in f" {' '.join(text)} ") if kind == "exact" else present / len(grams) >= args.threshold
    print(f"planted: exact {expected.count('exact'):,}, ngram {expected.count('ngram'):,}; found exact "
          f"{found.count('exact'):,}, ngram {found.count('ngram'):,}; planted but missed {missed}, planted exact "
          f"found weaker {weaker}; found in records not planted {len(extra):,} (checked by hand: {verified:,} "
          "really hold the question)")

    small = None
    if args.small_index:
        few = QuestionIndex.from_texts(questions[:args.small_index], ngram=args.ngram, threshold=args.threshold)
        part = records[:len(records) // 4]
        t0 = time.perf_counter()
        few.match_many(part)
        small = len(part) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        index.match_many(part)
        again = len(part) / (time.perf_counter() - t0)
        print(f"on {len(part):,} of the records: {small:,.0f} records/s against {len(few):,} questions, then "
              f"{again:,.0f} against all {len(index):,}")

    multi = None
    if args.processes:
        split, wall = in_processes(index, records, args.processes)
        assert split == found
        multi = len(records) / wall
        print(f"match_many in {args.processes} processes: {multi:,.0f} records/s ({multi / fast:.2f}x one)")

    one = records[:args.single]
    t0 = time.perf_counter()
    singles = [index.match(text) for text in one]
    single = len(one) / (time.perf_counter() - t0)
    assert singles == found[:len(one)]
    print(f"match(), one record per call: {single:,.0f} records/s on {len(one):,} records")

    subset = records[:args.naive]
    padded = [f" {normalize(q)} " for q in plantable]
    t0 = time.perf_counter()
    naive = []
    for text in subset:
        t = f" {normalize(text)} "
        naive.append("exact" if any(q in t for q in padded) else None)
    slow = len(subset) / (time.perf_counter() - t0)
    agree = sum((a == "exact") == (b == "exact") for a, b in zip(naive, found[:len(subset)]))
    print(f"naive substring scan (exact only): {slow:,.1f} records/s on {len(subset)} records "
          f"(agrees on exact for {agree}/{len(subset)})")

    print()
    print("| matcher | records/s | vs naive | 1M records, 1 core (extrapolated) | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| naive: each question `in` each record (exact only) | {slow:,.1f} | 1 | "
          f"{1e6 / slow / 3600:,.1f} h | |")
    print(f"| `QuestionIndex.match_many` (exact + {args.ngram}-gram) | {fast:,.0f} | {fast / slow:,.0f} | "
          f"{1e6 / fast:,.0f} s | {rss2:,.0f} MiB |")
    if small:
        print(f"| `match_many` against only {args.small_index:,} questions (a quarter of the records) | {small:,.0f} "
              f"| {small / slow:,.0f} | {1e6 / small:,.0f} s |  |")
    if multi:
        print(f"| `match_many` in {args.processes} processes | {multi:,.0f} | {multi / slow:,.0f} | "
              f"{1e6 / multi:,.0f} s ({args.processes} cores) | |")
    print(f"| `QuestionIndex.match`, one record per call | {single:,.0f} | {single / slow:,.0f} | "
          f"{1e6 / single:,.0f} s | |")


if __name__ == "__main__":
    main()

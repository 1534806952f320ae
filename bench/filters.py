"""How fast the automatic filters are: near_duplicate_groups over N synthetic dialogues, and check_dialogue per dialogue.

    .venv/bin/python bench/filters.py [--n 100000] [--words 250] [--copies 0.01]

Dialogues are random text drawn from a Zipf-shaped vocabulary (common words repeat, as in real English), about
--words words each; a fraction --copies of them get a planted near-copy (one word changed). Prints the machine
facts, the wall time of each phase and whether every planted copy was found. No database: the numbers are the
pure pieces the corpus pass (flag_near_duplicates) and the export's near-duplicate collapse spend their time in.
"""
import argparse
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from collection.filters import check_dialogue, near_duplicate_groups  # noqa: E402


def corpus(n, words, copies, seed=1):
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(rng.randint(1, 4)))
                  for _ in range(20_000)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf: a few words are very common
    texts = [" ".join(rng.choices(vocabulary, weights=weights, k=words)) for _ in range(n)]
    planted = {}
    for original in rng.sample(range(n), int(n * copies)):
        tokens = texts[original].split()
        tokens[rng.randrange(len(tokens))] = "changed"
        planted[len(texts)] = original
        texts.append(" ".join(tokens))
    return texts, planted


def machine():
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
            f"{os.cpu_count()} cpus, load average {' '.join(f'{x:.2f}' for x in load)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="dialogues (before planted copies)")
    parser.add_argument("--words", type=int, default=250, help="words per dialogue")
    parser.add_argument("--copies", type=float, default=0.01, help="fraction of dialogues given a near-copy")
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--num-perm", type=int, default=128)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    started = time.perf_counter()
    texts, planted = corpus(args.n, args.words, args.copies)
    print(f"generated {len(texts)} dialogues of {args.words} words ({len(planted)} planted near-copies) "
          f"in {time.perf_counter() - started:.1f} s")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    groups = near_duplicate_groups(enumerate(texts), threshold=args.threshold, num_perm=args.num_perm)
    elapsed = time.perf_counter() - started
    found = sum(1 for copy, original in planted.items() if groups.get(copy) == original)
    extra = sum(1 for dup in groups if dup not in planted)
    print(f"near_duplicate_groups: {elapsed:.2f} s for {len(texts)} dialogues "
          f"({len(texts) / elapsed:,.0f} dialogues/s); planted copies found {found}/{len(planted)}, "
          f"other dialogues grouped {extra}")
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss_before:.0f} MB with the corpus in memory, {rss_after:.0f} MB after grouping "
          f"(+{rss_after - rss_before:.0f} MB)")

    sample = texts[:2000]
    started = time.perf_counter()
    for text in sample:
        check_dialogue(turns=[{"role": "human", "text": "Question?"}, {"role": "ai", "text": text}],
                       parse_error="", finish_reason="stop", seed_text="Question?", language="en", min_turns=2)
    elapsed = time.perf_counter() - started
    print(f"check_dialogue: {elapsed / len(sample) * 1000:.2f} ms per dialogue over {len(sample)} "
          f"(includes the language model's one-off load)")
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()

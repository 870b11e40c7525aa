"""The ``long_stream`` suite: many small classification stages, cheap to train and to score.

A stream for measuring what a long run costs (``benchmarks/long_stream.py``) and how methods
behave over a hundred stages. Every stage is a short-prompt classification task scored by
option log-likelihood (no decoding) with labels invented for that stage, so each stage has to be
learned and a later stage that reuses a category under another name interferes with it:

* odd stages sort words into categories (animals, fruits, vehicles, colours: the words of the
  ``classify`` task, with its held-out test words), ``labels`` categories per stage;
* even stages sort numbers 1..999 by their remainder modulo ``labels`` (numbers whose stable
  hash falls in the test fraction are test numbers in every stage).

A prompt names its stage and its labels, e.g. ``"S7 sort 'otter': dabo, kire"`` (about a dozen
tokens); the answer is one label. Stage *k* depends only on the seed, *k* and the options, never
on the number of stages asked for: stages 1..10 of a 100-stage stream equal a 10-stage stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from everlearn.data.builtin.base import stable_unit
from everlearn.data.builtin.classify import TEST_WORDS, WORDS
from everlearn.data.records import Record
from everlearn.schema import field

CATEGORIES = list(WORDS)  # classify's categories (named there vorn/glim/tesk/drub)
NUMBERS = range(1, 1000)
TEST_FRACTION = 0.2
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass
class LongStreamOptions:
    """Options of the long_stream suite (stage field ``builtin_options``)."""

    labels: int = field(2, "Classes per stage (2..4); chance accuracy is 1 / labels.")
    train_size: int = field(32, "Training examples per stage (before the stage's max_train).")
    test_size: int = field(8, "Test examples per stage (before the stage's max_test).")

    def check(self) -> tuple[str, str] | None:
        """(field, problem) for the first bad value, else None."""
        if not 2 <= self.labels <= len(CATEGORIES):
            return "labels", f"expected 2..{len(CATEGORIES)}, got {self.labels}"
        for name in ("train_size", "test_size"):
            if getattr(self, name) < 1:
                return name, f"expected an integer >= 1, got {getattr(self, name)}"
        return None


def _label_names(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct invented two-syllable words (consonant-vowel-consonant-vowel)."""
    names: list[str] = []
    while len(names) < n:
        word = "".join(rng.choice(s) for s in (_CONSONANTS, _VOWELS, _CONSONANTS, _VOWELS))
        if word not in names:
            names.append(word)
    return names


def _is_test_number(n: int) -> bool:
    return stable_unit(f"long_stream\0{n}") < TEST_FRACTION


def _pools(stage: int, rng: random.Random, n_labels: int, split: str) -> list[list[str]]:
    """Per class (in label order): the subjects of ``split`` that belong to it."""
    test = split == "test"
    if stage % 2:  # odd stage: word categories
        cats = rng.sample(CATEGORIES, n_labels)
        return [[f"'{w}'" for w in WORDS[c] if (w in TEST_WORDS) == test] for c in cats]
    return [[str(n) for n in NUMBERS if n % n_labels == r and _is_test_number(n) == test]
            for r in range(n_labels)]


def _draw(stage: int, prompt_rng: random.Random, pools: list[list[str]], labels: list[str],
          n: int) -> list[Record]:
    """``n`` balanced records; prompts unique while the pools allow it."""
    out: list[Record] = []
    seen: set[str] = set()
    misses = 0
    while len(out) < n:
        k = len(out) % len(labels) if misses < 1000 else prompt_rng.randrange(len(labels))
        subject = prompt_rng.choice(pools[k])
        prompt = f"S{stage} sort {subject}: {', '.join(labels)}"
        if prompt in seen and misses < 1000:
            misses += 1
            continue
        seen.add(prompt)
        out.append(Record(prompt=prompt, response=labels[k], options=list(labels),
                          meta={"stage": stage}))
    prompt_rng.shuffle(out)
    return out


def stage_data(stage: int, seed: int, opt: LongStreamOptions) -> tuple[list[Record], list[Record]]:
    """(train, test) of stage ``stage`` (1-based)."""
    rng = random.Random(f"long_stream:{seed}:{stage}")
    labels = _label_names(rng, opt.labels)
    state = rng.getstate()  # the same categories for both splits
    train_pools = _pools(stage, rng, opt.labels, "train")
    rng.setstate(state)
    test_pools = _pools(stage, rng, opt.labels, "test")
    train = _draw(stage, random.Random(f"long_stream:{seed}:{stage}:train"), train_pools,
                  labels, opt.train_size)
    test = _draw(stage, random.Random(f"long_stream:{seed}:{stage}:test"), test_pools,
                 labels, opt.test_size)
    return train, test


def build_stages(stages: int, seed: int,
                 opt: LongStreamOptions) -> list[tuple[list[Record], list[Record]]]:
    """(train, test) for every stage 1..``stages``."""
    if stages < 1:
        raise ValueError(f"periods must be >= 1, got {stages}")
    return [stage_data(k, seed, opt) for k in range(1, stages + 1)]


def sample_test(records: list[Record], n: int | None, seed: int, key: str) -> list[Record]:
    """At most ``n`` test records, drawn by seed, in their original order."""
    if n is None or n >= len(records):
        return records
    rng = random.Random(f"{seed}:{key}:test")
    return [records[i] for i in sorted(rng.sample(range(len(records)), n))]

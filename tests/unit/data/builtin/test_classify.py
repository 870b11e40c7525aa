"""The built-in classify task: labels match the categories, the test set is balanced, no word is
ambiguous."""

from __future__ import annotations

import re

from everlearn.data.builtin import get_builtin_task
from everlearn.data.builtin.classify import CATEGORIES


def test_classify_labels_match_categories():
    task = get_builtin_task("classify")
    assert len(set(task.labels)) == len(task.labels) == len(CATEGORIES)
    word_label = {w: lab for lab, words in CATEGORIES.items() for w in words.split()}
    train_words, test_words = set(), set()
    for split, seen in (("train", train_words), ("test", test_words)):
        for r in task.generate(100, seed=0, split=split):
            word = re.search(r"'(\w+)'", r.prompt).group(1)
            assert r.response == word_label[word]
            seen.add(word)
    assert not train_words & test_words  # test words are never seen in training


def test_classify_test_set_balanced():
    task = get_builtin_task("classify")
    answers = [r.response for r in task.generate(40, seed=0, split="test")]
    assert sorted(answers) == sorted(task.labels * 10)  # always answering one label scores 1/4


def test_classify_words_unambiguous():
    words = [w for ws in CATEGORIES.values() for w in ws.split()]
    assert len(words) == len(set(words))

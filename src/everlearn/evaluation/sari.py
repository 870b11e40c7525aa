"""SARI (Xu et al. 2016, "Optimizing Statistical Machine Translation for Text Simplification",
TACL 4), the score TRACE gives 20Minuten, computed as TRACE computes it.

TRACE (github.com/BeyonderXX/TRACE at commit 462e39f: ``evaluations/eval_20Minuten.py`` ->
``metrics.caculate_sari``) calls ``datasets.load_metric("sari")`` with the test prompt as the
source, the raw generation as the prediction and the answer as the one reference. That metric is
the Hugging Face script ``metrics/sari/sari.py`` (its copy in ``evaluate`` is the same), which
follows tensor2tensor's ``sari_hook.py`` port of Xu's ``SARI.py``; this module computes what it
computes:

* each text is lowercased and tokenised by sacrebleu's ``13a`` tokenizer, then split on single
  spaces (so an empty text is one empty token);
* for n = 1..4, with the source's and the prediction's n-gram counts multiplied by the number
  of references and the references' counts summed: keep F1 (precision over the kept n-grams,
  recall over the source n-grams the references keep, counted with multiplicity), deletion
  precision, addition F1 over sets of n-grams; a ratio with nothing to count is 1;
* SARI = (mean keep F1 + mean deletion precision + mean addition F1) / 3 over n, per record;
  the stage's score is the mean over records (TRACE's mean over the test set), times 100.

Written here rather than called: ``datasets`` no longer has ``load_metric`` (removed in its 3.0;
the project needs datasets >= 3) and ``evaluate.load("sari")`` downloads the script from the
Hugging Face Hub when a run scores, which an offline run cannot and the project does not do at
run time; ``easse`` is not on PyPI (and its ``corpus_sari`` averages the n-gram statistics
over the corpus, not TRACE's mean of sentence scores). The tokenizer is sacrebleu's own.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence

__all__ = ["normalize", "sari"]

MAX_N = 4


@functools.cache
def _tokenizer():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def normalize(text: str) -> str:
    """Lowercased, then sacrebleu's ``13a`` tokenisation (punctuation split off, single
    spaces), as the SARI script prepares every source, prediction and reference."""
    return _tokenizer()(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _operation_scores(source: list, prediction: list, references: list[list]
                      ) -> tuple[float, float, float]:
    """(keep F1, deletion precision, addition F1) for one n-gram order."""
    times = len(references)
    src = Counter({g: c * times for g, c in Counter(source).items()})
    pred = Counter({g: c * times for g, c in Counter(prediction).items()})
    refs = Counter(g for ref in references for g in ref)

    kept = src & pred  # what the prediction keeps of the source
    kept_right = kept & refs  # ... and the references keep too
    ref_kept = src & refs  # what the references keep of the source
    keep_p = (sum(kept_right[g] / kept[g] for g in kept_right) / len(kept)) if kept else 1.0
    keep_r = sum(kept_right.values()) / sum(ref_kept.values()) if ref_kept else 1.0

    deleted = src - pred  # what the prediction deletes of the source
    deleted_right = deleted - refs  # ... beyond what the references keep
    del_p = (sum(deleted_right[g] / deleted[g] for g in deleted_right) / len(deleted)
             if deleted else 1.0)

    added = set(pred) - set(src)  # what the prediction adds, as a set
    added_right = added & set(refs)
    ref_added = set(refs) - set(src)
    add_p = len(added_right) / len(added) if added else 1.0
    add_r = len(added_right) / len(ref_added) if ref_added else 1.0
    return _f1(keep_p, keep_r), del_p, _f1(add_p, add_r)


def sari(source: str, prediction: str, references: str | Sequence[str]) -> float:
    """SARI of ``prediction`` as a simplification of ``source`` against ``references`` (all of
    them at once, as SARI defines it), in ``[0, 1]``. Raises ValueError when ``references`` is
    empty."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("at least one reference is required")
    src = normalize(source).split(" ")
    pred = normalize(prediction).split(" ")
    ref_tokens = [normalize(r).split(" ") for r in refs]
    keep, delete, add = [], [], []
    for n in range(1, MAX_N + 1):
        k, d, a = _operation_scores(_ngrams(src, n), _ngrams(pred, n),
                                    [_ngrams(r, n) for r in ref_tokens])
        keep.append(k)
        delete.append(d)
        add.append(a)
    return (sum(keep) / MAX_N + sum(delete) / MAX_N + sum(add) / MAX_N) / 3

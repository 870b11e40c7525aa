"""Edit scoring's locality reference (``evaluation.edit_scoring``): always the ORIGINAL model's
predictions, never the edited model's, and cached in the run directory so that a resumed run
compares with the very same predictions."""

from __future__ import annotations

import json

import torch

from everlearn.data.records import Record
from everlearn.evaluation.edit_scoring import LOCALITY_CACHE
from everlearn.stages.stream import Stage
from tests.helpers.edit import tiny_setup


def _stage() -> Stage:
    recs = [Record(prompt=f"Colour of {s} is ", response="x",
                   locality_prompt=[f"Size of {s}{s} is ", f"Shape of {s} is "],
                   locality_ground_truth=["q", ""])  # one answer given, one greedy
            for s in ("ab", "cd", "ef")]
    return Stage(1, "e", "edit", "reliability", recs, recs)


@torch.no_grad()
def _disturb(model) -> None:
    for name, p in model.named_parameters():
        if "layers.1.mlp" in name:
            p.add_(torch.randn_like(p) * 2.0)


def test_locality_stays_against_the_original_model_after_edits(tmp_path):
    _, model, _, evaluator = tiny_setup()
    stage = _stage()
    evaluator.prepare_edits(model, [stage], tmp_path)
    assert evaluator.score(model, stage).side["locality"] == 100.0
    _disturb(model)  # "an edit" that changes the locality prompts' predictions
    first = evaluator.score(model, stage).side["locality"]
    second = evaluator.score(model, stage).side["locality"]  # a later row, nothing changed
    assert first < 100.0 and second == first  # not re-referenced to the edited model


def test_the_reference_is_cached_in_the_run_dir_and_read_back(tmp_path):
    _, model, _, evaluator = tiny_setup()
    stage = _stage()
    evaluator.prepare_edits(model, [stage], tmp_path)
    cache = json.loads((tmp_path / LOCALITY_CACHE).read_text())
    assert set(cache) == {"e"} and len(cache["e"]["examples"]) == 6
    _, other, _, resumed = tiny_setup()
    _disturb(other)  # a resumed run whose model is no longer the base: the cache decides
    resumed.prepare_edits(other, [stage], tmp_path)
    assert resumed.edit_reference == evaluator.edit_reference
    assert resumed.score(model, stage).side["locality"] == 100.0  # the original model's
    _, fresh, _, uncached = tiny_setup()
    _disturb(fresh)
    uncached.prepare_edits(fresh, [stage])  # no run dir: this model is the reference
    assert uncached.edit_reference != evaluator.edit_reference
    changed = _stage()
    changed.test[0].locality_prompt[0] = "Size of zz is "  # other prompts: not this cache
    again = tiny_setup()[3]
    again.prepare_edits(fresh, [changed], tmp_path)
    assert again.edit_reference["e"] != evaluator.edit_reference["e"]

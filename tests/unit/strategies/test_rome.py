"""ROME (``strategies.rome``) on the tiny model: one edit is a rank-one change of one
down-projection that maps the edited key k* to the optimised value v*."""

from __future__ import annotations

import torch

from everlearn.strategies.common.edit_targets import subject_position
from everlearn.strategies.common.mlp_access import weight_matrix
from everlearn.strategies.rome import Rome
from tests.helpers.locate import edit_stage_of, editor_on_tiny


def test_rome_update_is_rank_one_maps_the_key_to_the_value_and_touches_one_matrix(tmp_path):
    rome, model, encoder = editor_on_tiny(Rome, run_dir=tmp_path, layer=-1)
    assert rome.layers == [1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    w0 = weight_matrix(rome.down(1))
    stage, recs = edit_stage_of([("ab", "x")], subject=True)
    done = rome.apply_edits(stage, recs)
    assert done["edits"] == 1 and done["steps"] >= 1 and done["trainable_params"] == 64 * 128
    delta = weight_matrix(rome.down(1)) - w0
    assert torch.linalg.matrix_rank(delta, rtol=1e-5).item() == 1
    trace = rome.traces[-1]
    w1 = weight_matrix(rome.down(1))
    assert torch.allclose(w1 @ trace.key, trace.value, atol=1e-4 * float(trace.value.norm()))
    assert not torch.allclose(w0 @ trace.key, trace.value, atol=1e-3)  # it did change
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"model.layers.1.mlp.down_proj.weight"}
    assert rome.prefixes[0] == "" and len(rome.prefixes) == 2
    # the key sits at the subject's last token ("b" of "ab"), not at the prompt's last
    ids = encoder.edit_prompt_ids(recs[0], recs[0].prompt)
    at = subject_position(encoder, ids, "ab", "")
    assert encoder.tok.decode(ids[at:at + 1]) == "b" and at < len(ids) - 1
    prefixed = encoder.edit_prompt_ids(recs[0], "ab ab. " + recs[0].prompt)
    assert subject_position(encoder, prefixed, "ab", "ab ab. ") == at + len(prefixed) - len(ids)
    assert rome.metrics()["covariance_tokens"] > 0 and rome.metrics()["edits"] == 1
    assert len(list((tmp_path / "cache" / "covariance").glob("*.safetensors"))) == 1


def test_rome_edit_changes_the_prediction_of_its_prompt():
    rome, model, encoder = editor_on_tiny(Rome, layer=-1, value_steps=40, stop_loss=0.5)
    stage, recs = edit_stage_of([("ab", "x")])
    ids = torch.tensor([encoder.edit_prompt_ids(recs[0], recs[0].prompt)])
    with torch.no_grad():
        assert encoder.tok.decode([int(model(input_ids=ids).logits[0, -1].argmax())]) != "x"
    rome.apply_edits(stage, recs)
    with torch.no_grad():
        assert encoder.tok.decode([int(model(input_ids=ids).logits[0, -1].argmax())]) == "x"


def test_rome_state_round_trips_and_refuses_another_layer():
    rome, _, _ = editor_on_tiny(Rome, layer=-1)
    stage, recs = edit_stage_of([("ab", "x")])
    rome.apply_edits(stage, recs)
    state = rome.state_dict()
    again = Rome(rome.options)
    again.load_state_dict(state)
    assert again.state_dict() == state and again.metrics() == rome.metrics()
    other, _, _ = editor_on_tiny(Rome, layer=0)
    import pytest

    from everlearn.errors import TrainingError

    with pytest.raises(TrainingError, match="edited layers"):
        other.load_state_dict(state)

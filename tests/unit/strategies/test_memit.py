"""MEMIT (``strategies.memit``) on the tiny model: a batch of edits spread over two layers
makes each edit's hidden state at the last edited layer its optimised target z_i."""

from __future__ import annotations

import torch

from everlearn.strategies.common.edit_targets import outputs_at_subject, requests_of
from everlearn.strategies.common.mlp_access import weight_matrix
from everlearn.strategies.grace import decoder_layers
from everlearn.strategies.memit import Memit
from tests.helpers.locate import edit_stage_of, editor_on_tiny


def test_memit_batch_maps_every_edit_to_its_target_at_the_last_layer():
    memit, model, encoder = editor_on_tiny(Memit, layers=[0, 1], mom2_weight=1e-6, prefixes=0,
                                           ridge=1e-6)
    stage, recs = edit_stage_of([("ab", "x"), ("mn", "y"), ("qr", "z")], subject=True)
    top = decoder_layers(model)[1]
    reqs = requests_of(recs)
    start = outputs_at_subject(model, encoder, top, reqs, memit.autocast)
    w0 = {layer: weight_matrix(memit.down(layer)) for layer in (0, 1)}
    done = memit.apply_edits(stage, recs)
    assert done["edits"] == 3 and done["trainable_params"] == 2 * 64 * 128
    z = memit.targets
    assert z.shape == (64, 3) and (z - start).norm() > 1e-3
    after = outputs_at_subject(model, encoder, top, reqs, memit.autocast)
    assert torch.allclose(after, z, atol=1e-3 * float(z.norm())), (after - z).abs().max()
    for layer in (0, 1):  # both layers moved, each by a rank of at most the batch size
        delta = weight_matrix(memit.down(layer)) - w0[layer]
        assert 0 < torch.linalg.matrix_rank(delta, rtol=1e-5).item() <= 3


def test_memit_lambda_weighs_the_preserved_keys():
    small, _, _ = editor_on_tiny(Memit, layers=[1], mom2_weight=1e-3)
    large, _, _ = editor_on_tiny(Memit, layers=[1], mom2_weight=1e6)
    stage, recs = edit_stage_of([("ab", "x"), ("mn", "y")])
    small.apply_edits(stage, recs)
    large.apply_edits(stage, recs)
    assert large.update_norms[0] < 0.1 * small.update_norms[0]


def test_batches_of_one_stage_are_separate_updates_counting_the_weights_once():
    memit, _, _ = editor_on_tiny(Memit, layers=[1], mom2_weight=1.0)
    stage, recs = edit_stage_of([("ab", "x"), ("mn", "y")])
    first = memit.apply_edits(stage, recs[:1])  # edit.batch_size: 1
    assert memit.targets.shape == (64, 1) and first["trainable_params"] == 64 * 128
    second = memit.apply_edits(stage, recs[1:])
    assert second["trainable_params"] == 0 and len(memit.update_norms) == 2
    assert memit.metrics()["edits"] == 2

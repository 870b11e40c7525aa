"""AlphaEdit (``strategies.alphaedit``) on the tiny model: the update leaves the outputs of
the preserved keys (the covariance corpus's) unchanged, and K_p K_p^T accumulates the edits'
keys into the checkpoint state."""

from __future__ import annotations

import contextlib

import torch

from everlearn.strategies.alphaedit import AlphaEdit
from everlearn.strategies.common.key_covariance import corpus_texts
from everlearn.strategies.common.mlp_access import capture_inputs, weight_matrix
from tests.helpers.locate import edit_stage_of, editor_on_tiny


def _corpus_keys(editor, model, encoder, tokens: int) -> dict[int, torch.Tensor]:
    """The down-projection inputs of the first ``tokens`` corpus tokens (d_in x n)."""
    texts, _ = corpus_texts(None)
    modules = {layer: editor.down(layer) for layer in editor.layers}
    out = {layer: [] for layer in modules}
    seen = 0
    with torch.no_grad(), capture_inputs(modules) as found, contextlib.nullcontext():
        for text in texts:
            ids = encoder.start_ids(text)[:tokens - seen]
            if not ids:
                break
            model(input_ids=torch.tensor([ids]))
            seen += len(ids)
    for layer in modules:
        out[layer] = torch.cat([f[0] for f in found[layer]]).T.double()
    return out


def test_alphaedit_leaves_the_preserved_keys_outputs_unchanged():
    # 60 corpus tokens < 128 key dimensions: K0 K0^T has an exact null space
    alpha, model, encoder = editor_on_tiny(AlphaEdit, layers=[0, 1], covariance_tokens=60,
                                           null_space_threshold=1e-9, l2=1e-4)
    k0 = _corpus_keys(alpha, model, encoder, 60)
    w0 = {layer: weight_matrix(alpha.down(layer)).double() for layer in alpha.layers}
    stage, recs = edit_stage_of([("ab", "x"), ("mn", "y")])
    alpha.apply_edits(stage, recs)
    assert all(dim >= 128 - 60 for dim in alpha.metrics()["null_space_dim"].values())
    for layer in alpha.layers:
        w1 = weight_matrix(alpha.down(layer)).double()
        delta = w1 - w0[layer]
        assert delta.norm() > 1e-3  # it edited
        # float tolerance: relative to what the update does to a key of the same size
        scale = float(torch.linalg.matrix_norm(delta, 2) * k0[layer].norm(dim=0).max())
        change = float((delta @ k0[layer]).abs().max())
        assert change < 1e-5 * scale, (change, scale)
        random_keys = torch.randn_like(k0[layer]) * k0[layer].norm(dim=0).mean() / 128 ** 0.5
        assert float((delta @ random_keys).abs().max()) > 1e3 * change  # keys outside K0 move


def test_alphaedit_accumulates_the_edited_keys_and_restores_them():
    alpha, _, _ = editor_on_tiny(AlphaEdit, layers=[1])
    for facts in ([("ab", "x")], [("mn", "y"), ("qr", "z")]):
        stage, recs = edit_stage_of(facts)
        alpha.apply_edits(stage, recs)
    prev = alpha.previous[1]
    assert prev.shape == (128, 128) and torch.linalg.matrix_rank(prev).item() == 3
    state = alpha.state_dict()
    assert set(state["tensors"]) == {"previous.1"} and state["meta"]["edits"] == 3
    again = AlphaEdit(alpha.options)
    again.load_state_dict(state)
    assert torch.equal(again.previous[1], prev) and again.null_dims == alpha.null_dims

"""The keys' second moment and its cache (``strategies.common.key_covariance``): the estimate
equals E[k k^T] computed by hand, and the cache is keyed by model, layer, corpus and count."""

from __future__ import annotations

import contextlib

import torch

from everlearn.strategies.common.key_covariance import (
    CovarianceCache,
    CovarianceRequest,
    corpus_texts,
    estimate,
    load_cached,
)
from everlearn.strategies.common.mlp_access import capture_inputs, down_projection
from tests.helpers.edit import tiny_setup


def test_estimate_is_the_mean_outer_product_of_the_down_projection_inputs():
    _, model, encoder, _ = tiny_setup()
    texts = ["alpha beta gamma", "delta"]
    covs, count = estimate(model, encoder, texts, [0, 1], None, 64, contextlib.nullcontext, "t")
    rows = [encoder.start_ids(t) for t in texts]
    assert count == sum(len(r) for r in rows)
    keys = []
    with torch.no_grad(), capture_inputs({1: down_projection(model, 1, "t")}) as found:
        for r in rows:
            model(input_ids=torch.tensor([r]))
    keys = torch.cat([f[0] for f in found[1]]).double()
    assert torch.allclose(covs[1].double(), keys.T @ keys / count, atol=1e-6)
    limited, n = estimate(model, encoder, texts, [1], 5, 64, contextlib.nullcontext, "t")
    assert n == 5 and not torch.allclose(limited[1], covs[1])


def test_cache_hits_only_the_same_model_layer_corpus_and_count(tmp_path):
    calls = []

    def compute(layers):
        calls.append(list(layers))
        return {layer: torch.full((2, 2), float(layer)) for layer in layers}, 7

    req = CovarianceRequest("m:abc", 1, "builtin:general:x", None, 128)
    first = CovarianceCache(tmp_path)
    assert first.get([req], compute)[1][1] == 7 and first.misses == 1 and calls == [[1]]
    again = CovarianceCache(tmp_path)  # a fresh run on the same directory: read from disk
    assert torch.equal(again.get([req], compute)[1][0], torch.full((2, 2), 1.0))
    assert again.hits == 1 and calls == [[1]]
    for other in (CovarianceRequest("m:abc", 1, "/data/other.txt:y", None, 128),
                  CovarianceRequest("m:abc", 1, "builtin:general:x", 500, 128),
                  CovarianceRequest("m:abc", 2, "builtin:general:x", None, 128),
                  CovarianceRequest("m:def", 1, "builtin:general:x", None, 128)):
        fresh = CovarianceCache(tmp_path)
        fresh.get([other], compute)
        assert fresh.misses == 1 and fresh.hits == 0, other
    assert len(calls) == 5 and len(list(tmp_path.glob("*.safetensors"))) == 5
    # a file whose metadata names another request is not taken
    wrong = tmp_path / f"{req.key()}.safetensors"
    (tmp_path / f"{CovarianceRequest('m:def', 1, 'builtin:general:x', None, 128).key()}"
     ".safetensors").replace(wrong)
    assert load_cached(wrong, req) is None


def test_corpus_identity_changes_with_the_file(tmp_path):
    texts, ident = corpus_texts(None)
    assert len(texts) == 60 and ident.startswith("builtin:general:")
    path = tmp_path / "c.txt"
    path.write_text("one document\n\nanother one\n")
    texts, first = corpus_texts(str(path))
    assert texts == ["one document", "another one"]
    path.write_text("one document\n\nanother two\n")
    assert corpus_texts(str(path))[1] != first

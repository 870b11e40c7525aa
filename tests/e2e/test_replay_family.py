"""The replay family and A-GEM in runs: a two-stage stream that sequential fine-tuning forgets, and
DER++, pseudo-replay, general-data mixing and A-GEM forget less."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from everlearn.data.encode import Encoder, collate
from everlearn.models.loading import build_tiny_tokenizer
from everlearn.runs.runner import Run
from everlearn.strategies import agem as agem_module
from everlearn.strategies.agem import AGEM
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.replay_family import flat


# --- end to end: a two-stage stream that sequential fine-tuning forgets -------------------
class _Streams:
    """Runs each strategy once per module on red -> green (stage 2 trains long enough to erase
    red under seqft), keeping R and each stage's test-answer loss (NLL) after the last stage.

    Exact-match on greedy answers is all-or-nothing on a tiny random model, so the property
    every method must show is on the loss: red's answers stay far more likely than under
    seqft, while green is learned. (Over run seeds 0-7: seqft's red NLL 6.4-8.5, the methods'
    0.01-1.3, green's at most 0.36.) DER also keeps red's exact answers on every seed tried.
    """

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.stages = [constant_task(tmp, "red", "alpha"),
                       {**constant_task(tmp, "green", "bravo"), "steps": 60}]
        self.results: dict[str, tuple[dict, list[float]]] = {}

    def run(self, name: str, spec) -> tuple[dict, list[float]]:
        if name not in self.results:
            cfg = build_config(tiny_config(self.tmp, self.stages, strategies=[spec]))
            run = Run(cfg, self.tmp / name, quiet=True)
            res = run.execute()
            enc = Encoder(build_tiny_tokenizer(), cfg.train.max_length)
            losses = []
            run.model.eval()
            for stage in run.stream.stages:
                b = collate(enc.encode_stage("sft", stage.test), enc.pad_id)
                with torch.no_grad():
                    losses.append(run.model(input_ids=b["input_ids"],
                                            attention_mask=b["attention_mask"],
                                            labels=b["labels"]).loss.item())
            self.results[name] = (res, losses)
        return self.results[name]

    def assert_less_forgetting(self, name: str, spec) -> dict:
        seq, seq_nll = self.run("seqft", "seqft")
        res, nll = self.run(name, spec)
        assert seq["R"][1][0] == 100.0 and seq["R"][2][0] == 0.0  # seqft learns red, forgets it
        assert nll[0] < 0.5 * seq_nll[0], (nll, seq_nll)  # red's answers stay likely
        assert nll[1] < 0.5, nll  # and green is learned
        return res


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> _Streams:
    return _Streams(tmp_path_factory.mktemp("streams"))


def test_der_reduces_forgetting(streams):
    res = streams.assert_less_forgetting("der", {"name": "der", "buffer_size": 16})
    assert res["R"][2] == [100.0, 100.0]  # keeps red's exact answers and learns green
    assert res["cost"][1]["buffer_size"] == 16


def test_pseudo_replay_reduces_forgetting(streams):
    streams.assert_less_forgetting("pseudo_replay", {"name": "pseudo_replay", "ratio": 0.5})


def test_general_mix_of_a_corpus_protects_what_the_corpus_exercises(streams):
    # The "general" corpus here is the first stage's data: mixing it keeps that skill.
    spec = {"name": "general_mix", "path": streams.stages[0]["train"], "ratio": 0.5}
    streams.assert_less_forgetting("general_mix", spec)


def test_agem_updates_never_conflict_with_the_memory_and_reduce_forgetting(streams,
                                                                           monkeypatch):
    calls: list[tuple] = []
    after: list[list] = []
    original_project, original_after = agem_module.project_grads, AGEM.after_backward

    def recording_project(grads, refs):
        out, changed = original_project(grads, refs)
        def copy(ts):  # the trainer clips gradients in place afterwards
            return [None if t is None else t.clone() for t in ts]

        calls.append((copy(grads), copy(refs), copy(out), changed))
        return out, changed

    def recording_after(self, model):
        original_after(self, model)
        after.append([p.grad.clone() for p in model.parameters()
                      if p.requires_grad and p.grad is not None])

    monkeypatch.setattr(agem_module, "project_grads", recording_project)
    monkeypatch.setattr(AGEM, "after_backward", recording_after)
    res = streams.assert_less_forgetting("agem", {"name": "agem", "memory_size": 16})

    assert len(after) == 30 + 60 and len(calls) == 60  # memory is empty during stage 1
    for (_, refs, out, _), final in zip(calls, after[30:]):
        ref = flat([r for r in refs if r is not None])
        applied = flat([o for o in out if o is not None])
        assert float(applied @ ref) >= -1e-6 * float(ref.norm() * applied.norm())
        assert torch.equal(applied, flat(final))  # the projected gradient is what steps
    conflicts = [c for c in calls if c[3]]
    assert conflicts, "the two constant tasks should conflict at least once"
    for grads, refs, _, changed in calls:  # unchanged exactly when there was no conflict
        dot = float(flat([g for g in grads if g is not None]) @
                    flat([r for r in refs if r is not None]))
        assert changed == (dot < 0)
    assert res["cost"][1]["buffer_size"] == 16

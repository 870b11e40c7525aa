"""Edit stages: edit records, the GRACE codebook, the edit metrics, the constrained fine-tuning
editor and the built-in counterfactual stream, on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from everlearn.data.builtin import counterfactual
from everlearn.data.builtin.suites import SUITES
from everlearn.data.encode import Encoder
from everlearn.data.readers import read_source
from everlearn.data.records import Record
from everlearn.errors import ConfigError, DataError
from everlearn.evaluation.matrix import Evaluator
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.report.tables import format_summary
from everlearn.runs.runner import resume_run, start_run
from everlearn.runs.session import make_accelerator
from everlearn.stages.edit import all_hit, edit_metrics, editing_section, pooled
from everlearn.stages.stream import Stage, build_stream
from everlearn.strategies import STRATEGIES, build_strategy
from everlearn.strategies.base import RunContext
from everlearn.strategies.grace import Codebook, Grace, GraceOptions
from everlearn.validation import build_config
from tests.conftest import killed_at_phase, tiny_config, write_jsonl

SUBJECTS = ("ab", "cd", "ef", "gh", "ij", "kl")


def edit_row(subject: str, target: str) -> dict:
    """A one-token edit for the byte-level tiny tokenizer: the prompt ends with a space, so the
    one-character target is one token (raw format: no separator is added)."""
    return {"prompt": f"Colour of {subject} is ", "target_new": target,
            "rephrase_prompt": [f"The colour of {subject} is "],
            "locality_prompt": [f"Size of {subject}{subject} is "],
            "locality_ground_truth": ["q"]}


def edit_stage(tmp_path, name: str, facts: list[tuple[str, str]]) -> dict:
    path = write_jsonl(tmp_path / f"{name}.jsonl", [edit_row(s, t) for s, t in facts])
    return {"name": name, "kind": "edit", "train": str(path), "test": str(path)}


def three_batches(tmp_path) -> list[dict]:
    return [edit_stage(tmp_path, "b1", [("ab", "x"), ("cd", "y")]),
            edit_stage(tmp_path, "b2", [("ef", "z"), ("gh", "w")]),
            edit_stage(tmp_path, "b3", [("ij", "v"), ("kl", "u")])]


GRACE = {"name": "grace", "layer": -1, "epsilon": 0.005, "lr": 0.05, "iterations": 60,
         "stop_loss": 10.0}  # the tiny model cannot be confident: stop once every token is top-1


# --- data -----------------------------------------------------------------------------------


def test_edit_records_from_easyedit_fields(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [
        {"case_id": 7, "prompt": "The capital of France is", "target_new": "Rome",
         "ground_truth": "Paris", "subject": "France",
         "rephrase_prompt": "France's capital city is",
         "locality_prompt": ["The capital of Spain is", "2 + 2 ="],
         "locality_ground_truth": ["Madrid", "4"]},
        {"prompt": "Danielle Darrieux's mother tongue is", "target_new": {"str": " English"}},
    ])
    first, second = read_source(str(path), "auto", "edit", {}, None, "t")
    assert (first.prompt, first.response, first.answers) == ("The capital of France is", "Rome",
                                                              ["Rome"])
    assert first.rephrase_prompt == ["France's capital city is"]
    assert first.locality_prompt == ["The capital of Spain is", "2 + 2 ="]
    assert first.locality_ground_truth == ["Madrid", "4"]
    assert first.meta == {"id": 7, "ground_truth": "Paris", "subject": "France"}
    assert second.response == "English" and second.rephrase_prompt == []
    zsre = write_jsonl(tmp_path / "z.jsonl", [{"src": "Who wrote Hamlet?", "alt": "Dickens",
                                               "loc": "nq question: who is x", "loc_ans": "y"}])
    (rec,) = read_source(str(zsre), "auto", "edit", {
        "prompt": "src", "target_new": "alt", "locality_prompt": "loc",
        "locality_ground_truth": "loc_ans"}, None, "t")
    assert (rec.prompt, rec.response, rec.locality_ground_truth) == ("Who wrote Hamlet?",
                                                                     "Dickens", ["y"])
    no_truth = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "p", "target_new": "a",
                                                   "locality_prompt": ["l1", "l2"]}])
    (rec,) = read_source(str(no_truth), "auto", "edit", {}, None, "t")
    assert rec.locality_ground_truth == ["", ""]  # the base model's own continuation is used


@pytest.mark.parametrize("row, field", [
    ({"target_new": "a"}, "prompt"),
    ({"prompt": "p"}, "target_new"),
    ({"prompt": "p", "target_new": " "}, "target_new"),
    ({"prompt": "p", "target_new": {"id": "Q1"}}, "target_new"),
    ({"prompt": "p", "target_new": "a", "rephrase_prompt": [3]}, "rephrase_prompt"),
    ({"prompt": "p", "target_new": "a", "rephrase_prompt": ["ok", ""]}, "rephrase_prompt"),
    ({"prompt": "p", "target_new": "a", "locality_prompt": {"q": 1}}, "locality_prompt"),
    ({"prompt": "p", "target_new": "a", "locality_prompt": ["l1", "l2"],
      "locality_ground_truth": ["only one"]}, "locality_ground_truth"),
])
def test_reader_errors_name_file_record_and_field(tmp_path, row, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "target_new": "a"}, row])
    with pytest.raises(DataError) as info:
        read_source(str(path), "auto", "edit", {}, None, "t")
    assert str(info.value).startswith(f"{path}: record 1: {field}")


def test_config_kind_metric_and_edit_section(tmp_path):
    cfg = build_config({"stages": [{"builtin": "edits_counterfactual", "periods": 2}]})
    assert cfg.stages[0].kind == "edit" and cfg.edit.format == "raw"
    stage = edit_stage(tmp_path, "b1", [("ab", "x")])
    assert build_stream(build_config({"stages": [stage]})).stages[0].metric == "reliability"
    bad = [({"stages": [{**stage, "metric": "accuracy"}]}, "stages.0.metric"),
           ({"stages": [{"builtin": "cipher", "metric": "reliability"}]}, "stages.0.metric"),
           ({"stages": [stage], "edit": {"max_change": 0.1}}, "edit.max_change: bounds"),
           ({"stages": [stage], "model": {"finetune": "full"}, "edit": {"max_change": 0}},
            "edit.max_change"),
           ({"stages": [stage], "edit": {"layers": []}}, "edit.layers"),
           ({"stages": [stage], "edit": {"format": "xml"}}, "edit.format")]
    for data, where in bad:
        with pytest.raises(ConfigError, match=where):
            build_config(data)
    cfg = build_config({"stages": [stage], "strategies": [{"name": "grace", "epsilon": -1}]})
    with pytest.raises(ConfigError, match="strategies.0.options.epsilon"):
        build_strategy(cfg.strategies)


# --- metrics by hand ------------------------------------------------------------------------


def test_edit_metrics_by_hand():
    assert all_hit([5, 6], [5, 6]) and not all_hit([5, 7], [5, 6]) and not all_hit([], [])
    side = edit_metrics([True, False], [[True, False], [False]], [[True], [True, False]])
    assert side["reliability"] == 50.0
    assert side["generalisation"] == pytest.approx(100 / 3)
    assert side["locality"] == pytest.approx(200 / 3)
    assert (side["n_edits"], side["n_rephrase"], side["n_locality"]) == (2, 3, 3)
    only = edit_metrics([True], [[]], [[]])  # no paraphrases, no locality prompts
    assert only == {"reliability": 100.0, "n_edits": 1, "n_rephrase": 0, "n_locality": 0}
    # pooling weighs by the prompts each stage has: (50*2 + 100*1) / 3, (100/3*3) / 3, ...
    both = pooled([side, only])
    assert both["edits"] == 3 and both["reliability"] == pytest.approx(200 / 3)
    assert both["generalisation"] == pytest.approx(100 / 3)
    assert both["locality"] == pytest.approx(200 / 3)
    assert pooled([only])["locality"] is None

    class S:
        def __init__(self, name, kind):
            self.name, self.kind = name, kind

    stages = [S("a", "edit"), S("t", "sft"), S("b", "edit")]
    rows = [{"a": side, "b": only}, {"a": only, "b": side}, {"a": side, "b": only},
            {"a": only, "b": only}]
    sec = editing_section(stages, [["a"], ["t"], ["b"]], rows)
    assert sec["stages"] == ["a", "b"]
    assert sec["rows"][0] is None  # the base model: no edit trained yet
    assert sec["rows"][1] == pooled([only]) and sec["rows"][2] == pooled([side])  # a only
    assert sec["rows"][3] == pooled([only, only]) == sec["final"]
    assert sec["matrices"]["reliability"] == [[50.0, 100.0], [100.0, 50.0], [50.0, 100.0],
                                              [100.0, 100.0]]
    assert sec["matrices"]["locality"][0] == [pytest.approx(200 / 3), None]
    unscored = editing_section(stages, [["a"], ["t"], ["b"]], rows[:3] + [{"a": side}])
    assert unscored["rows"][3] is None  # an eval schedule skipped b: no pooled value


def _tiny_setup(layers: int = 2):
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, layers=layers)
    encoder = Encoder(tok, 64)
    acc = make_accelerator("fp32")
    evaluator = Evaluator(acc, encoder, build_config({"stages": [{"builtin": "cipher"}]}).eval,
                          quiet=True)
    return tok, model, encoder, evaluator


@torch.no_grad()
def _greedy_char(model, encoder, prompt: str) -> str:
    ids = encoder.ids(prompt)
    token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    return encoder.tok.decode([token])


def test_evaluator_scores_edits_teacher_forced():
    """Hand-computed case: an edit whose target is the model's own top-1 token is reliable,
    any other is not; locality against the base is 100 until the model changes."""
    _, model, encoder, evaluator = _tiny_setup()
    own = _greedy_char(model, encoder, "Colour of ab is ")
    other = "x" if own != "x" else "y"
    recs = [Record(prompt="Colour of ab is ", response=own,
                   rephrase_prompt=["Colour of ab is ", "The colour of ab is "],
                   locality_prompt=["Size of zz is "], locality_ground_truth=[""]),
            Record(prompt="Colour of ab is ", response=other)]
    stage = Stage(1, "e", "edit", "reliability", recs, recs)
    evaluator.prepare_edits(model, [stage])
    score = evaluator.score(model, stage)
    assert score.score == 50.0 and score.predictions == [own, own]
    assert score.side["generalisation"] in (50.0, 100.0)  # the first paraphrase is the prompt
    assert score.side["locality"] == 100.0  # the base model against itself
    with torch.no_grad():  # another model: a random final norm turns its predictions
        model.model.norm.weight.copy_(torch.randn(64, generator=torch.Generator().manual_seed(1)))
    assert evaluator.score(model, stage).side["locality"] == 0.0


# --- GRACE ----------------------------------------------------------------------------------


def test_codebook_add_expand_split_overwrite_on_hand_built_keys():
    cb = Codebook(2)
    v = torch.zeros(2)

    def key(x, y):
        return torch.tensor([x, y], dtype=torch.float32)

    assert cb.update(key(0, 0), "a", 1.0, v + 1) == ("add", 0)
    assert cb.update(key(3, 0), "b", 1.0, v + 2) == ("add", 1)  # d = 3 > 1 + 1: no overlap
    assert cb.update(key(0, 1.5), "a", 1.0, v) == ("expand", 0)  # overlap, same label
    assert cb.radii.tolist() == [1.5, 1.0]
    assert cb.update(key(0, 0.5), "a", 1.0, v) == ("expand", 0)  # inside already: kept at 1.5
    assert cb.radii[0].item() == 1.5
    assert cb.update(key(3, 1), "c", 1.0, v + 3) == ("split", 2)  # d = 1, another label
    assert cb.radii.tolist() == [1.5, 0.5, 0.5] and cb.labels == ["a", "b", "c"]
    assert cb.update(key(3, 1), "d", 1.0, v) == ("overwrite", 2)  # the same input again
    assert cb.labels[2] == "d" and len(cb) == 3
    assert cb.actions == {"add": 2, "expand": 2, "split": 1, "overwrite": 1}
    queries = torch.stack([key(0, 1.4), key(3, 0.2), key(3, 0.6), key(3, 1.4), key(9, 9)])
    out = cb.apply(queries.unsqueeze(0), torch.full((1, 5, 2), -1.0))[0]
    # (0,1.4): within 1.5 of a -> 1; (3,0.2): b's ball -> 2; (3,0.6): nearest c (0.4 < 0.5)
    # -> 3; (3,1.4): nearest c at 0.4 -> 3; (9,9): no key near -> unchanged
    assert out[:, 0].tolist() == [1.0, 2.0, 3.0, 3.0, -1.0]
    tensors, meta = cb.state()
    again = Codebook(2)
    again.load(tensors, meta)
    assert torch.equal(again.keys, cb.keys) and again.labels == cb.labels
    assert again.actions == cb.actions and torch.equal(again.radii, cb.radii)


def test_grace_edits_a_prompt_and_leaves_unrelated_outputs_unchanged():
    tok, model, encoder, evaluator = _tiny_setup()
    grace = Grace(GraceOptions(**{k: v for k, v in GRACE.items() if k != "name"}))
    grace.setup(RunContext(model=model, tokenizer=tok, encoder=encoder, config=None,
                           stream=None, seed=0, accelerator=evaluator.acc))
    prompt = "Colour of ab is "
    target = "x" if _greedy_char(model, encoder, prompt) != "x" else "y"
    unrelated = ["Size of zz is ", "Colour of cd is ", "The colour of ab is "]
    with torch.no_grad():
        before = [model(input_ids=torch.tensor([encoder.ids(p)])).logits for p in unrelated]
    rec = Record(prompt=prompt, response=target, locality_prompt=unrelated,
                 locality_ground_truth=["q"] * 3)
    stage = Stage(1, "e", "edit", "reliability", [rec], [rec])
    evaluator.prepare_edits(model, [stage])
    done = grace.apply_edits(stage, [rec])
    assert done["edits"] == 1 and 1 <= done["steps"] <= GRACE["iterations"]
    assert _greedy_char(model, encoder, prompt) == target
    score = evaluator.score(model, stage)
    assert score.score == 100.0 and score.side["locality"] == 100.0
    with torch.no_grad():
        after = [model(input_ids=torch.tensor([encoder.ids(p)])).logits for p in unrelated]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # not a single bit moved
    assert grace.metrics()["codebook_size"] == 1 and grace.buffer_size() == 1
    assert grace.apply_edits(Stage(2, "s", "sft", "exact_match", [], []), [rec]) is None


# --- runs on the tiny model -----------------------------------------------------------------


def _run(tmp_path, stages, name="run", **overrides):
    cfg = build_config(tiny_config(tmp_path, stages, **overrides))
    return start_run(cfg, tmp_path / name, quiet=True)


def test_constrained_finetuning_trains_only_the_chosen_layer_within_the_bound(tmp_path):
    bound = 0.02
    path, res = _run(tmp_path, three_batches(tmp_path)[:2], edit={"layers": [-1],
                     "max_change": bound, "lr": 1e-2}, train={"steps": 25, "batch_size": 8,
                     "max_length": 64, "precision": "fp32", "warmup_ratio": 0.0,
                     "schedule": "constant", "lr": 1e-2}, keep_stage_weights="all")
    R = res["R"]
    assert res["status"] == "complete" and [s["kind"] for s in res["stages"]] == ["edit"] * 2
    assert [s["metric"] for s in res["stages"]] == ["reliability"] * 2
    assert R[1][0] == 100.0 and R[2][1] == 100.0  # each batch learned
    side = res["side_metrics"]
    assert side[0]["b1"]["locality"] == 100.0  # the base model against itself
    assert {"generalisation", "locality", "n_edits"} <= set(side[2]["b1"])
    mlp = 3 * 64 * 128  # gate, up and down projection of the last layer's MLP
    assert [c["trainable_params"] for c in res["cost"]] == [mlp, mlp]
    ed = res["editing"]
    assert ed["rows"][0] is None and ed["rows"][1]["edits"] == 2 and ed["final"]["edits"] == 4
    assert ed["final"]["reliability"] == pytest.approx((R[2][0] * 2 + R[2][1] * 2) / 4)
    assert ed["matrices"]["reliability"] == R
    from safetensors.torch import load_file

    base = build_tiny_model(build_tiny_tokenizer()).state_dict()
    for phase in (1, 2):
        weights = load_file(path / "checkpoints" / f"phase-{phase:02d}" /
                            "trainable.safetensors")
        previous = base if phase == 1 else load_file(
            path / "checkpoints" / "phase-01" / "trainable.safetensors")
        moved = {n for n, w in weights.items() if not torch.equal(w, previous[n])}
        assert moved and all(n.startswith("model.layers.1.mlp.") for n in moved), moved
        for n in moved:  # L-inf ball around the weights entering the stage (fp32 slack)
            assert (weights[n] - previous[n]).abs().max().item() <= bound + 1e-6


def test_grace_stream_end_to_end(tmp_path):
    _, res = _run(tmp_path, three_batches(tmp_path), strategies=[GRACE])
    R = res["R"]
    assert R[0] == [0.0, 0.0, 0.0]  # the tiny model predicts none of the new targets
    assert R[1][0] == 100.0 and R[2][:2] == [100.0, 100.0] and R[3] == [100.0] * 3
    side = res["side_metrics"]
    assert all(side[t][n]["locality"] == 100.0 for t in range(4) for n in ("b1", "b2", "b3"))
    assert res["editing"]["final"] == {"edits": 6, "reliability": 100.0,
                                       "generalisation": res["editing"]["final"][
                                           "generalisation"], "locality": 100.0}
    summary = format_summary(res)  # the console shows the edits-so-far table
    assert "Edits so far" in summary
    table = summary.split("Edits so far")[1].splitlines()
    assert table[3].split()[-4] == "2" and table[5].split()[-4:-2] == ["6", "100.0"]
    assert table[5].split()[-1] == "100.0"  # locality of all six edits
    metrics = res["strategy_metrics"]["grace"]
    assert metrics["codebook_size"] == 6 and metrics["layer"] == 1
    for c in res["cost"]:
        assert c["examples"] == 2 and c["steps"] >= 2 and c["buffer_size"] in (2, 4, 6)
        assert c["trainable_params"] == 2 * 64  # one value vector per edit
        assert math.isfinite(c["final_loss"])


def test_resume_after_crash_equals_uninterrupted(tmp_path, monkeypatch):
    stages = three_batches(tmp_path)
    _, full = _run(tmp_path, stages, name="full", strategies=[GRACE])
    with killed_at_phase(monkeypatch, 3):
        _run(tmp_path, stages, name="crashed", strategies=[GRACE])
    _, resumed = resume_run(tmp_path / "crashed", quiet=True)
    for key in ("R", "metrics", "side_metrics", "editing", "strategy_metrics"):
        assert resumed[key] == full[key], key
    assert [c["final_loss"] for c in resumed["cost"]] == [c["final_loss"] for c in full["cost"]]


def test_builtin_counterfactual_stream_runs_on_the_tiny_model(tmp_path):
    stage = {"builtin": "edits_counterfactual", "periods": 2,
             "builtin_options": {"edits_per_batch": 3}}
    _, res = _run(tmp_path, [stage], edit={"layers": [0]},
                  train={"steps": 3, "precision": "fp32", "max_length": 64})
    assert [s["name"] for s in res["stages"]] == ["edits_counterfactual-01",
                                                   "edits_counterfactual-02"]
    assert [s["n_test"] for s in res["stages"]] == [3, 3]
    assert res["side_metrics"][0]["edits_counterfactual-01"]["locality"] == 100.0
    assert res["editing"]["final"]["edits"] == 6


# --- the built-in edit stream ---------------------------------------------------------------


def test_counterfactual_suite_is_deterministic_and_consistent():
    suite = SUITES["edits_counterfactual"]
    assert suite.kind == "edit" and suite.metric == "reliability"
    assert len(counterfactual.FACTS) >= 60
    assert len({(r, s) for r, s, _ in counterfactual.FACTS}) == len(counterfactual.FACTS)
    opt = counterfactual.CounterfactualOptions()
    batches = counterfactual.build_batches(4, 0, opt)
    longer = counterfactual.build_batches(6, 0, opt)
    assert [[r.to_dict() for r in b[0]] for b in batches] == \
        [[r.to_dict() for r in b[0]] for b in longer[:4]]  # a prefix of a longer stream
    edits = [r for train, _ in longer for r in train]
    assert len({(r.meta["relation"], r.meta["subject"]) for r in edits}) == len(edits) == 48
    edited = {counterfactual.prompt_of(r.meta["relation"], r.meta["subject"]) for r in edits}
    for train, test in batches:
        assert [r.to_dict() for r in train] == [r.to_dict() for r in test]
        for r in train:
            assert r.response != r.meta["ground_truth"]
            assert r.response in counterfactual.POOLS[r.meta["relation"]]
            assert len(r.rephrase_prompt) == 2 and r.prompt not in r.rephrase_prompt
            assert len(r.locality_prompt) == 2 == len(r.locality_ground_truth)
            assert not set(r.locality_prompt) & edited  # held back: never edited
    other_seed = counterfactual.build_batches(4, 1, opt)
    assert [r.prompt for r in other_seed[0][0]] != [r.prompt for r in batches[0][0]]
    with pytest.raises(ValueError, match="facts can be edited"):
        counterfactual.build_batches(50, 0, opt)
    assert "grace" in STRATEGIES

"""Scorers inside a run: option log-likelihood accuracy, perplexity on packed text, ROUGE-L, and
exact-match rows that stop once hopeless."""

from __future__ import annotations

import dataclasses

from everlearn.runs.runner import start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config, write_jsonl


def test_accuracy_by_options_and_perplexity_in_one_stream(tmp_path):
    rows = [{"prompt": f"is {i} a thing?", "response": "zyx"} for i in range(30)]
    write_jsonl(tmp_path / "cls_train.jsonl", rows[:24])
    write_jsonl(tmp_path / "cls_test.jsonl", rows[24:])
    doc = "the quick brown fox jumps over the lazy dog. " * 6
    (tmp_path / "news_train.txt").write_text("\n\n".join([doc] * 20))
    (tmp_path / "news_test.txt").write_text(doc)
    stages = [
        {"name": "cls", "train": str(tmp_path / "cls_train.jsonl"),
         "test": str(tmp_path / "cls_test.jsonl"), "labels": ["abc", "zyx", "qqq"]},
        {"name": "news", "kind": "cpt", "train": str(tmp_path / "news_train.txt"),
         "test": str(tmp_path / "news_test.txt")},
    ]
    cfg = build_config(tiny_config(tmp_path, stages))
    _, res = start_run(cfg, tmp_path / "run", quiet=True)
    assert [s["metric"] for s in res["stages"]] == ["accuracy", "perplexity"]
    R = res["R"]
    assert R[1][0] == 100.0  # after training, the trained label wins for every test prompt
    assert R[2][1] < min(R[0][1], R[1][1]) / 2  # news perplexity falls once news is trained
    assert R[0][1] > 50  # a random model is close to uniform over ~260 byte tokens
    metrics = res["metrics"]
    assert set(metrics) == {"main", "perplexity"}
    assert metrics["main"]["stages"] == ["cls"] and metrics["perplexity"]["stages"] == ["news"]


def test_rouge_l_scores_partial_answers(tmp_path):
    stage = constant_task(tmp_path, "sum", "one two three four")
    stage["metric"] = "rouge_l"
    cfg = build_config(tiny_config(tmp_path, [stage], eval={"max_new_tokens": 24}))
    _, res = start_run(cfg, tmp_path / "run", quiet=True)
    assert res["R"][1][0] >= res["R"][0][0] + 50  # ROUGE-L credits the learned words


def test_exact_match_rows_stop_once_hopeless_with_the_same_scores(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    import everlearn.evaluation.scorers as scorers
    import everlearn.evaluation.scorers.exact_match as exact_match_metric
    from everlearn.evaluation.scorers import generated_text_score
    from everlearn.evaluation.scoring import exact_match

    calls = {"n": 0}
    forward = LlamaForCausalLM.forward

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", counted)
    # after stage 1 the model answers green's prompts with red's long answer: hopeless after
    # "alpha beta ", where a full generation writes on for ~20 more tokens
    stages = [constant_task(tmp_path, "red", "alpha beta gamma delta epsilon"),
              constant_task(tmp_path, "green", "zeta")]

    def run(name):
        calls["n"] = 0
        cfg = build_config(tiny_config(tmp_path, stages, eval={"max_new_tokens": 40},
                                       train={"lr": 3e-3, "steps": 80, "precision": "fp32",
                                              "warmup_ratio": 0.0, "schedule": "constant"}))
        _, res = start_run(cfg, tmp_path / name, quiet=True)
        return res["R"], calls["n"]

    early, early_calls = run("early")
    never_hopeless = dataclasses.replace(  # the same metric whose rows never stop early
        exact_match_metric.METRIC, score=generated_text_score(exact_match))
    monkeypatch.setitem(scorers._discover(), "exact_match", never_hopeless)
    full, full_calls = run("full")
    assert early == full  # a row stopped early scored 0 and would have scored 0
    assert early[1] == [100.0, 0.0]
    assert early_calls < full_calls - 10  # the wrong answers were cut short

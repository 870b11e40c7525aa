"""Scorers inside a run: option log-likelihood accuracy and perplexity on packed text."""

from __future__ import annotations

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


def test_shared_prompt_option_scores_equal_separate_sequences():
    """One prompt pass plus cached option passes gives each option's separate-sequence
    log-likelihood (prompts of different lengths, options of 1 to 4 tokens)."""
    from contextlib import nullcontext

    import torch

    from everlearn.evaluation.option_scoring import OptionItem, score_options
    from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, seed=3).eval()
    g = torch.Generator().manual_seed(0)
    items = [OptionItem(torch.randint(5, 200, (n,), generator=g).tolist(),
                        [torch.randint(5, 200, (m,), generator=g).tolist() for m in (1, 4, 2)])
             for n in (3, 9, 6)]
    fast = score_options(model, items, tok.pad_token_id, "cpu", nullcontext)
    for item, scored in zip(items, fast):
        for option, (lp, n) in zip(item.options, scored):
            ids = torch.tensor([item.prompt + option])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            start = len(item.prompt) - 1
            want = sum(float(logp[start + k, t]) for k, t in enumerate(option))
            assert n == len(option)
            assert abs(lp - want) < 1e-4, (lp, want)


def test_perplexity_pools_every_adapter_group(tmp_path):
    """A router that sends the test texts to two (identical) adapters must give the perplexity
    of all the texts, not of one group's."""
    from everlearn.config import EvalConfig, ModelConfig
    from everlearn.data.encode import Encoder
    from everlearn.data.records import Record
    from everlearn.evaluation.matrix import Evaluator
    from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer, make_trainable
    from everlearn.runs.session import make_accelerator
    from everlearn.stages.stream import Stage

    tok = build_tiny_tokenizer()
    model = make_trainable(build_tiny_model(tok, seed=2), ModelConfig(finetune="lora"))
    model.add_adapter("other", model.peft_config["default"])  # B = 0: same function
    docs = [Record(text="short text " * n) for n in (2, 9, 4, 12)]
    stage = Stage(index=1, name="t", kind="cpt", metric="perplexity", train=docs, test=docs)
    ev = Evaluator(make_accelerator("fp32"), Encoder(tok, 64), EvalConfig(batch_size=2), True)
    pooled = ev.score(model, stage).score
    split = ev.score(model, stage, router=lambda r: "default" if len(r.text) < 40 else "other")
    # packing per group moves block boundaries a little; one group alone is far off
    assert abs(split.score - pooled) < 5e-3 * pooled
    alone = ev.score(model, Stage(index=1, name="t2", kind="cpt", metric="perplexity",
                                  train=docs, test=[d for d in docs if len(d.text) < 40])).score
    assert abs(alone - pooled) > 2e-2 * pooled


def test_exact_match_rows_stop_once_hopeless_with_the_same_scores(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    import everlearn.evaluation.matrix as evaluate

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
    monkeypatch.setattr(evaluate, "can_still_match", lambda text, refs: True)
    full, full_calls = run("full")
    assert early == full  # a row stopped early scored 0 and would have scored 0
    assert early[1] == [100.0, 0.0]
    assert early_calls < full_calls - 10  # the wrong answers were cut short

"""RUN_DIR/predictions/: per row and stage, what the model produced for every test record,
checked against R (each cell is the mean of its file's scores) and against the scorers' rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from everlearn.evaluation.scoring import exact_match
from everlearn.runs.predictions import read_predictions
from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.align import pref_stage
from tests.helpers.edit import three_batches


def _stages(tmp: Path) -> list[dict]:
    labelled = constant_task(tmp, "red", "alpha", n_train=8, n_test=4)
    labelled["labels"] = ["alpha", "bravo"]  # scored by option log-likelihood
    text = tmp / "news.txt"
    text.write_text("\n\n".join(f"news item {i} about the weather" for i in range(12)))
    return [labelled, constant_task(tmp, "green", "bravo", n_train=8, n_test=4),
            pref_stage("pref_concise", max_train=8, max_test=4),
            {"name": "news", "kind": "cpt", "train": str(text), "test": str(text)}]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("pred")
    cfg = tiny_config(tmp, _stages(tmp))
    cfg["train"].update(steps=3, batch_size=4)
    return start_run(build_config(cfg), tmp / "run", quiet=True)


def test_every_scored_cell_has_its_file_and_is_the_mean_of_its_scores(mixed_run):
    path, res = mixed_run
    names = [s["name"] for s in res["stages"]]
    assert len(res["predictions"]) == len(res["R"]) == 5
    for t, files in enumerate(res["predictions"]):
        assert set(files) == {"red", "green", "pref_concise"}  # perplexity: no per-record part
        for j, name in enumerate(names[:3]):
            assert files[name] == f"predictions/row-{t:02d}/{j + 1:02d}-{name}.jsonl"
            lines = read_predictions(path, files[name])
            stage = res["stages"][j]
            assert [ln["index"] for ln in lines] == list(range(stage["n_test"]))
            assert all(ln["row"] == t and ln["stage"] == name for ln in lines)
            mean = sum(ln["score"] for ln in lines) / len(lines)
            assert mean == pytest.approx(res["R"][t][j], abs=1e-9)
    assert not (path / "predictions" / "row-00" / "04-news.jsonl").exists()


def test_option_lines_hold_every_options_log_likelihood(mixed_run):
    path, res = mixed_run
    for t in range(len(res["R"])):
        for ln in read_predictions(path, res["predictions"][t]["red"]):
            assert ln["options"] == ["alpha", "bravo"] and ln["answers"] == ["alpha"]
            lls = ln["loglikelihoods"]
            assert len(lls) == 2 and all(v < 0 for v in lls) and all(n > 0 for n in ln["tokens"])
            assert ln["chosen"] == ln["options"][lls.index(max(lls))]  # summed: the default
            assert ln["score"] == (100.0 if ln["chosen"] == "alpha" else 0.0)
            assert ln["prompt"].startswith("red question")


def test_generation_lines_are_scored_by_exact_match(mixed_run):
    path, res = mixed_run
    lines = [ln for f in res["predictions"] for ln in read_predictions(path, f["green"])]
    for ln in lines:
        assert ln["answers"] == ["bravo"] and isinstance(ln["generation"], str)
        assert ln["score"] == 100.0 * exact_match(ln["generation"], ln["answers"])


def test_preference_lines_hold_the_margins(mixed_run):
    path, res = mixed_run
    base = read_predictions(path, res["predictions"][0]["pref_concise"])
    assert all(ln["margin"] == 0.0 and ln["score"] == 50.0 for ln in base)  # against itself
    for t, files in enumerate(res["predictions"]):
        lines = read_predictions(path, files["pref_concise"])
        assert [ln["logratio"] for ln in lines] == pytest.approx(
            res["preference_logratios"][t]["pref_concise"])
        for ln in lines:
            assert ln["chosen"] and ln["rejected"] and ln["prompt"]
            assert ln["margin"] == pytest.approx(ln["logratio"] - ln["reference_logratio"])
            assert ln["score"] == (100.0 if ln["margin"] > 0 else 0.0 if ln["margin"] < 0
                                   else 50.0)


def test_the_report_links_the_files(mixed_run):
    from everlearn.report import write_report

    path, res = mixed_run
    html = write_report(path).read_text(encoding="utf-8")
    assert '<h2 id="predictions">' in html
    for files in res["predictions"]:
        for rel in files.values():
            assert f'href="../{rel}"' in html
            assert (path / "report" / ".." / rel).is_file()


def test_edit_lines_hold_reliability_generalisation_and_locality(tmp_path):
    cfg = tiny_config(tmp_path, three_batches(tmp_path)[:1])
    cfg["train"].update(steps=2, batch_size=4)
    path, res = start_run(build_config(cfg), tmp_path / "run", quiet=True)
    for t, files in enumerate(res["predictions"]):
        lines = read_predictions(path, files["b1"])
        assert [ln["target"] for ln in lines] == ["x", "y"]
        for ln in lines:
            assert ln["score"] == (100.0 if ln["reliable"] else 0.0)
            assert len(ln["generalisation"]) == len(ln["rephrase_prompts"]) == 1
            assert len(ln["locality"]) == len(ln["locality_prompts"]) == 1
        side = res["side_metrics"][t]["b1"]
        assert side["reliability"] == pytest.approx(
            100 * sum(ln["reliable"] for ln in lines) / 2)
        assert side["locality"] == pytest.approx(
            100 * sum(h for ln in lines for h in ln["locality"]) / 2)


def test_switched_off_no_files_and_no_key_and_resume_may_switch_it(tmp_path):
    cfg = tiny_config(tmp_path, [constant_task(tmp_path, "red", "alpha", n_train=8, n_test=2),
                                 constant_task(tmp_path, "green", "bravo", n_train=8, n_test=2)])
    cfg["train"].update(steps=2, batch_size=4)
    cfg["eval"]["predictions"] = False
    cfg["keep_stage_weights"] = "all"  # the resume below keeps row 1
    path, res = start_run(build_config(cfg), tmp_path / "run", quiet=True)
    assert "predictions" not in res and not (path / "predictions").exists()
    # a resume that switches them on (allowed: it changes no score) writes the rows it scores
    data = json.loads((path / "results.json").read_text())
    data["R"], data["cost"], data["status"] = data["R"][:2], data["cost"][:1], "running"
    (path / "results.json").write_text(json.dumps(data))
    (path / "config.yaml").write_text((path / "config.yaml").read_text().replace(
        "predictions: false", "predictions: true"))
    _, resumed = resume_run(path, quiet=True)
    assert resumed["R"] == res["R"]
    assert resumed["predictions"] == [{}, {}, {"red": "predictions/row-02/01-red.jsonl",
                                               "green": "predictions/row-02/02-green.jsonl"}]


def test_a_base_row_from_the_cache_has_the_same_predictions(tmp_path):
    """A sweep's points share the base row (everlearn.runs.base_cache): the second run's base
    scores come from the cache, and its predictions files are the first run's."""
    stages = _stages(tmp_path)[:2]
    cfg = tiny_config(tmp_path, stages)
    cfg["train"].update(steps=1, batch_size=4)
    first, _ = start_run(build_config(cfg), tmp_path / "a", quiet=True,
                         base_cache=tmp_path / "cache")
    second, res = start_run(build_config(cfg), tmp_path / "b", quiet=True,
                            base_cache=tmp_path / "cache")
    assert "from the cache" in (second / "log.txt").read_text()
    for rel in res["predictions"][0].values():
        assert (second / rel).read_text() == (first / rel).read_text()

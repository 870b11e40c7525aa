"""Benchmark layouts on disk -> stages: each authors' layout, its labels, metrics, errors."""

from pathlib import Path

import pytest

from everlearn.data.benchmarks.layouts import benchmark_stages, read_olora
from everlearn.errors import ConfigError
from everlearn.validation import build_config
from tests.helpers.benchmark_layouts import write_olora, write_sapt, write_trace

SUPERNI = Path("/work/shared/data/superni")


def test_olora_layout_order_labels_and_prompt(tmp_path: Path):
    write_olora(tmp_path)
    bench, stages = benchmark_stages({"name": "olora-standard", "order": 3,
                                      "data_dir": str(tmp_path), "train_per_task": 2})
    assert [s["name"] for s in stages] == ["yahoo", "amazon", "agnews", "dbpedia"]
    assert stages[0]["train"]["path"].endswith("TC/yahoo/train.json")
    assert stages[2]["labels"] == ["World", "Sports", "Business", "Science or Technology"]
    assert stages[0]["metric"] == "accuracy" and stages[0]["max_train"] == 2
    recs = read_olora(stages[2]["test"]["path"], "agnews")
    assert recs[1].prompt == ("What is the topic of the following paragraph? Choose one from the "
                              "option.\nOption: World, Sports, Business, Science or Technology \n"
                              "agnews test sentence 1\nAnswer:")
    assert recs[1].answers == ["Sports"]


def test_olora_copa_has_no_instruction_line(tmp_path: Path):
    write_olora(tmp_path, "long-sequence")
    recs = read_olora(str(tmp_path / "COPA/COPA/train.json"), "copa")
    assert recs[0].prompt == "copa train sentence 0\nAnswer:"


def test_sapt_layout_found_and_read_through_a_config(tmp_path: Path):
    write_sapt(tmp_path / "CL_Benchmark")
    cfg = build_config({"benchmark": {"name": "long-sequence", "order": 5, "tasks": 3,
                                      "data_dir": str(tmp_path / "CL_Benchmark")},
                        "model": {"name": "tiny-llama"}})
    assert cfg.name == "long-sequence"
    assert [s.name for s in cfg.stages] == ["mnli", "cb", "wic"]
    assert cfg.stages[1].labels == ["entailment", "contradiction", "neutral"]
    assert cfg.stages[1].train.format == "superni" and cfg.stages[1].task_id == "cb"


def test_trace_layout_metrics_per_task(tmp_path: Path):
    write_trace(tmp_path)
    _, stages = benchmark_stages({"name": "trace", "data_dir": str(tmp_path)})
    assert [s["metric"] for s in stages] == ["strict_match", "strict_match", "rouge_l_summary",
                                             "edit_similarity", "first_char_match",
                                             "strict_match", "strict_match", "sari"]
    assert "labels" not in stages[0] and stages[0]["train"]["format"] == "json"


def test_missing_task_file_names_the_file_and_the_task(tmp_path: Path):
    write_olora(tmp_path)
    (tmp_path / "SC/amazon/test.json").unlink()
    with pytest.raises(ConfigError, match=r"task amazon: .*SC/amazon/test.json: file not found"):
        benchmark_stages({"name": "olora-standard", "data_dir": str(tmp_path)})


def test_no_task_folder_and_bad_fields(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"task dbpedia: no task folder under"):
        benchmark_stages({"name": "olora-standard", "data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"benchmark.epochs: unknown"):
        benchmark_stages({"name": "trace", "data_dir": str(tmp_path), "epochs": 1})
    with pytest.raises(ConfigError, match=r"benchmark.tasks: expected an integer >= 1"):
        benchmark_stages({"name": "trace", "data_dir": str(tmp_path), "tasks": 0})


def test_benchmark_beside_stages_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="either `benchmark` or `stages`"):
        build_config({"benchmark": {"name": "trace", "data_dir": str(tmp_path)},
                      "stages": [{"builtin": "arithmetic"}]})


@pytest.mark.skipif(not SUPERNI.is_dir(), reason="the shared SuperNI tasks are not here")
def test_the_shared_superni_tasks_through_the_definition():
    from everlearn.stages.stream import build_stream

    cfg = build_config({"benchmark": {"name": "superni-15", "order": 1, "tasks": 2,
                                      "data_dir": str(SUPERNI), "train_per_task": 4,
                                      "test_per_task": 3},
                        "model": {"name": "tiny-llama"}})
    stream = build_stream(cfg, "<test>")
    first, second = stream.stages
    assert first.name == "task1572_samsum_summary" and first.metric == "rouge_l"
    assert len(first.train) == 4 and len(second.test) == 3
    assert "\n\nInput: " in second.train[0].prompt
    assert second.train[0].prompt.endswith("\nOutput:")
    assert all(r.answers[0] in ("POS", "NEG") for r in second.test)


def test_a_relative_data_dir_lies_beside_the_config_file(tmp_path: Path):
    from everlearn.validation import load_config

    write_trace(tmp_path / "data" / "TRACE")
    (tmp_path / "b.yaml").write_text("benchmark: {name: trace, data_dir: data/TRACE, tasks: 1}\n"
                                     "model: {name: tiny-llama}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.stages[0].train.path == str(tmp_path / "data/TRACE/C-STANCE/train.json")

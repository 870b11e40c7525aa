"""Experiment trackers through accelerate: TensorBoard event files and a local MLflow store get
the training loss every ``log_every`` steps and, after each phase, the row of R, AP and cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from everlearn.errors import ConfigError
from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config


def tracked_run(tmp: Path, tracker: dict | str, steps: int = 4):
    stages = [constant_task(tmp, "red", "alpha", n_train=8, n_test=2),
              constant_task(tmp, "green", "bravo", n_train=8, n_test=2)]
    data = tiny_config(tmp, stages, tracker=tracker)
    data["train"].update(steps=steps, batch_size=4)
    data["eval"]["max_new_tokens"] = 2
    return build_config(data, "test")


def test_tracker_off_by_default_and_shorthand(tmp_path: Path):
    cfg = tracked_run(tmp_path, None)
    assert cfg.tracker.backend == "none" and cfg.tracker.log_every == 10
    cfg = tracked_run(tmp_path, "tensorboard")
    assert cfg.tracker.backend == "tensorboard"
    with pytest.raises(ConfigError, match="tracker.backend: expected one of"):
        tracked_run(tmp_path, "neptune")
    with pytest.raises(ConfigError, match="tracker.log_every: expected an integer >= 1"):
        tracked_run(tmp_path, {"backend": "tensorboard", "log_every": 0})


def test_missing_package_is_a_clear_error(tmp_path: Path, monkeypatch):
    import importlib.util

    from everlearn.runs import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = tracked_run(tmp_path, "wandb")
    with pytest.raises(ConfigError, match=r"tracker.backend: 'wandb' needs the wandb package"):
        start_run(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "results.json").exists()


def test_tensorboard_event_files(tmp_path: Path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    cfg = tracked_run(tmp_path, {"backend": "tensorboard", "log_every": 2})
    run_dir, results = start_run(cfg, tmp_path / "run", quiet=True)
    logdir = run_dir / "tensorboard" / "run"
    assert list(logdir.glob("events.out.tfevents.*"))
    acc = event_accumulator.EventAccumulator(str(logdir))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "R/red", "R/green", "AP", "cost/wall_time_s",
            "cost/tokens_trained"} <= set(scalars)
    # 2 phases x 4 steps, logged every 2 steps, on the run's global step
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [2, 4, 6, 8]
    assert all(e.value > 0 for e in loss)
    # the rows of R: base at step 0, then after each phase at its last step
    red = [(e.step, e.value) for e in acc.Scalars("R/red")]
    assert red == [(4 * k, pytest.approx(row[0])) for k, row in enumerate(results["R"])]
    ap = [(e.step, e.value) for e in acc.Scalars("AP")]
    assert ap == [(4, pytest.approx(results["R"][1][0])),
                  (8, pytest.approx(sum(results["R"][2]) / 2))]
    tokens = [e.value for e in acc.Scalars("cost/tokens_trained")]
    assert tokens == [c["tokens_trained"] for c in results["cost"]]


def test_mlflow_local_store_and_resume(tmp_path: Path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # restored after the test
    store = tmp_path / "store"
    uri = store.as_uri()  # file:///...
    cfg = tracked_run(tmp_path, {"backend": "mlflow", "dir": uri, "project": "cl-tests",
                                 "log_every": 1}, steps=2)
    cfg.keep_stage_weights = "all"  # so that a resume after phase 1 starts from its weights
    run_dir, results = start_run(cfg, tmp_path / "run", quiet=True)
    state = json.loads((run_dir / "tracker.json").read_text())
    assert state["backend"] == "mlflow"
    client = mlflow.MlflowClient(uri)
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "cl-tests"
    assert run.data.params["train.steps"] == "2" and run.data.params["tracker.backend"] == "mlflow"
    loss = client.get_metric_history(state["run_id"], "train/loss")
    assert [m.step for m in loss] == [1, 2, 3, 4]
    green = client.get_metric_history(state["run_id"], "R/green")
    assert [(m.step, m.value) for m in green] == [
        (2 * k, pytest.approx(row[1])) for k, row in enumerate(results["R"])]
    assert run.data.metrics["AP"] == pytest.approx(sum(results["R"][2]) / 2)
    assert run.data.metrics["cost/steps"] == 2.0

    # resume after phase 1: the same MLflow run gets phase 2 again, on the same steps
    data = json.loads((run_dir / "results.json").read_text())
    data.update(R=data["R"][:2], cost=data["cost"][:1], status="running")
    data.pop("metrics")
    (run_dir / "results.json").write_text(json.dumps(data))
    resume_run(run_dir, quiet=True)
    assert json.loads((run_dir / "tracker.json").read_text())["run_id"] == state["run_id"]
    steps = [m.step for m in client.get_metric_history(state["run_id"], "train/loss")]
    assert sorted(steps) == [1, 2, 3, 3, 4, 4]
    assert len(client.search_runs([run.info.experiment_id])) == 1

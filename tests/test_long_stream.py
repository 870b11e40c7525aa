"""Long streams: the evaluation schedule, the long_stream suite, and what stays bounded."""

from __future__ import annotations

import json

import pytest

from everlearn.config import EvalConfig
from everlearn.errors import ConfigError
from everlearn.evaluation.matrix import SUBSETS_KEPT, Evaluator
from everlearn.evaluation.schedule import describe, scored_columns
from everlearn.report.tables import format_summary
from everlearn.runs.runner import resume_run, start_run
from everlearn.stages.stream import build_stream
from everlearn.validation import build_config
from tests.conftest import killed_at_phase, tiny_config

SIX = [[0], [1], [2], [3], [4], [5]]  # one stage per phase


# --- the schedule (pure) -------------------------------------------------------------------


def test_default_schedule_scores_every_row_in_full():
    assert all(scored_columns(None, None, 0, SIX, row) is None for row in range(7))
    assert all(scored_columns(1, 3, 0, SIX, row) is None for row in range(7))  # every row full
    assert describe(None, None) is None and describe(1, 2) is None


def test_every_k_scores_the_stage_trained_and_the_next_in_between():
    rows = [scored_columns(3, None, 0, SIX, row) for row in range(7)]
    assert rows == [None, [0, 1], [1, 2], None, [3, 4], [4, 5], None]  # full: 0, 3, 6 (last)


def test_sample_earlier_adds_seeded_earlier_stages():
    rows = [scored_columns(None, 1, 0, SIX, row) for row in range(7)]
    assert rows[0] is None and rows[6] is None  # base and last row: always full
    assert rows[1] == [0, 1]  # nothing trained before stage 1
    assert rows[2] == [0, 1, 2]  # the only earlier stage
    for row in (3, 4, 5):
        earlier = [c for c in rows[row] if c < row - 1]
        assert len(rows[row]) == 3 and len(earlier) == 1
        assert {row - 1, row} <= set(rows[row])
    assert rows == [scored_columns(None, 1, 0, SIX, row) for row in range(7)]  # deterministic
    many = [[c] for c in range(40)]
    assert ([scored_columns(None, 3, 0, many, r) for r in range(41)]
            != [scored_columns(None, 3, 1, many, r) for r in range(41)])  # the seed matters
    assert scored_columns(None, 0, 0, SIX, 4) == [3, 4]  # 0: only what the metrics need


def test_schedule_with_phases_of_several_stages():
    phases = [[0, 1], [2], [3, 4]]
    assert scored_columns(None, 0, 0, phases, 1) == [0, 1, 2]
    assert scored_columns(None, 0, 0, phases, 2) == [2, 3, 4]
    assert scored_columns(None, 0, 0, phases, 3) is None


@pytest.mark.parametrize("field, value", [("every", 0), ("sample_earlier", -1)])
def test_bad_schedule_values_are_config_errors(tmp_path, field, value):
    cfg = tiny_config(tmp_path, [{"builtin": "long_stream", "periods": 3}])
    cfg["eval"][field] = value
    with pytest.raises(ConfigError, match=f"eval.{field}"):
        build_config(cfg)


# --- the long_stream suite -----------------------------------------------------------------


def _stream(tmp_path, periods=None, seed=0, **options):
    entry = {"builtin": "long_stream", "builtin_options": options}
    if periods is not None:
        entry["periods"] = periods
    return build_stream(build_config(tiny_config(tmp_path, [entry], seed=seed)))


def _records(stream):
    return [[(r.prompt, r.response, r.options) for r in st.train + st.test] for st in stream]


def test_long_stream_expands_to_n_stages_deterministically(tmp_path):
    stream = _stream(tmp_path)
    assert len(stream) == 100
    assert stream.names[0] == "long_stream-001" and stream.names[-1] == "long_stream-100"
    assert all(st.kind == "sft" and st.metric == "accuracy" for st in stream)
    assert all(len(st.train) == 32 and len(st.test) == 8 for st in stream)
    assert _records(_stream(tmp_path)) == _records(stream)  # same seed, same stream
    assert _records(_stream(tmp_path, 7))[:7] == _records(stream)[:7]  # a prefix of it
    assert _records(_stream(tmp_path, seed=1)) != _records(stream)
    for st in stream.stages[:10]:
        labels = st.test[0].options
        assert len(labels) == 2 and all(r.options == labels for r in st.train + st.test)
        assert all(r.response in labels for r in st.train + st.test)
        assert sorted(r.response for r in st.test) == sorted(labels * 4)  # balanced
        assert not {r.prompt for r in st.train} & {r.prompt for r in st.test}
        assert all(len(r.prompt) < 40 for r in st.train)  # short prompts: cheap
    assert len({tuple(st.test[0].options) for st in stream}) > 90  # labels differ per stage


def test_long_stream_options(tmp_path):
    stream = _stream(tmp_path, 4, labels=3, train_size=12, test_size=6)
    assert [len(st.train) for st in stream] == [12] * 4
    assert all(len(st.test[0].options) == 3 for st in stream)
    with pytest.raises(ConfigError, match="builtin_options.labels"):
        _stream(tmp_path, 4, labels=5)


# --- runs on the tiny model ----------------------------------------------------------------


def _config(tmp_path, overrides=None, **eval_options):
    stages = [{"builtin": "long_stream", "periods": 6,
               "builtin_options": {"train_size": 16, "test_size": 4}}]
    cfg = tiny_config(tmp_path, stages, train={"lr": 3e-3, "batch_size": 8, "steps": 3,
                                               "max_length": 48, "precision": "fp32"},
                      **(overrides or {}))
    cfg["eval"].update(eval_options)
    return build_config(cfg)


def test_scheduled_run_leaves_unscored_cells_null_and_computes_metrics(tmp_path):
    path, res = start_run(_config(tmp_path, every=3, sample_earlier=1), tmp_path / "run",
                          quiet=True)
    R = res["R"]
    expected = [scored_columns(3, 1, 0, SIX, row) for row in range(7)]
    for row, cols in enumerate(expected):
        scored = [j for j, v in enumerate(R[row]) if v is not None]
        assert scored == (list(range(6)) if cols is None else cols), row
    assert [len(c) for c in expected if c] == [2, 3, 3, 3]  # rows 1, 2, 4, 5
    on_disk = json.loads((path / "results.json").read_text())
    assert on_disk["R"] == R and None in on_disk["R"][4]  # null in results.json
    assert on_disk["eval_schedule"]["every"] == 3
    m = res["metrics"]
    assert m["ap_estimated"] == [4, 5]  # rows 4 and 5 sampled one of their earlier stages
    assert m["forgetting_lower_bound"] is True
    for key in ("final_ap", "la", "bwt", "bwt_trace", "forgetting", "fwt"):
        assert isinstance(m[key], float), key
    assert len(m["ap"]) == 6 and all(isinstance(a, float) for a in m["ap"])
    assert m["la"] == pytest.approx(sum(R[j + 1][j] for j in range(6)) / 6)
    assert m["fwt"] == pytest.approx(sum(R[j][j] - R[0][j] for j in range(1, 6)) / 5)
    assert m["ap"][3] == pytest.approx(sum(v for v in R[4][:4] if v is not None) / 2)
    assert [c["eval_time_s"] >= 0 for c in res["cost"]] == [True] * 6

    text = format_summary(res)
    assert "–" in text and "AP estimated" in text

    from everlearn.report import write_report
    from everlearn.report.compare import compare_runs, format_comparison

    html = write_report(path).read_text(encoding="utf-8")
    assert "Evaluation schedule" in html and "<td>–</td>" in html
    assert "tiny: " in format_comparison(compare_runs([path]))


def test_resume_with_a_schedule_equals_uninterrupted(tmp_path, monkeypatch):
    schedule = {"every": 4, "sample_earlier": 2}
    _, full = start_run(_config(tmp_path, **schedule), tmp_path / "full", quiet=True)
    with killed_at_phase(monkeypatch, 5):
        start_run(_config(tmp_path, **schedule), tmp_path / "crashed", quiet=True)
    partial = json.loads((tmp_path / "crashed" / "results.json").read_text())
    assert partial["status"] == "running" and len(partial["R"]) == 5
    assert partial["R"] == full["R"][:5]
    _, resumed = resume_run(tmp_path / "crashed", quiet=True)
    assert resumed["R"] == full["R"]
    assert resumed["metrics"] == full["metrics"]


# --- what must not grow with the rows of a long stream -------------------------------------


def test_evaluator_cache_keeps_a_bounded_number_of_routed_subsets():
    from everlearn.data.records import Record
    from everlearn.stages.stream import Stage

    records = [Record(prompt=f"p{i}", response="a") for i in range(60)]
    stage = Stage(index=1, name="s", kind="sft", metric="accuracy", train=[], test=records)
    ev = Evaluator(None, None, EvalConfig())
    full = ev._subset_key(stage, "options", records)
    ev._cache[full] = "whole test set"
    for i in range(50):  # routing sends another part of the test set to an adapter each row
        key = ev._subset_key(stage, "options", records[i:i + 5])
        ev._cache.setdefault(key, i)
    assert len(ev._cache) == SUBSETS_KEPT
    assert ev._subset_key(stage, "options", records[49:54]) in ev._cache  # recent ones stay


def test_inc_lora_over_a_scheduled_stream_resumes_exactly(tmp_path, monkeypatch):
    # per-stage adapters: arrange / state / rebuild find every adapter's weights in one pass
    from everlearn.runs.runner import Run
    from everlearn.strategies.common.adapters import adapter_parameters, adapters_parameters

    def config():
        lora = {"strategies": ["inc_lora"],
                "model": {"name": "tiny-llama", "finetune": "lora", "lora": {"r": 2}}}
        return _config(tmp_path, lora, sample_earlier=0)

    run = Run(config(), tmp_path / "full", quiet=True)
    full = run.execute()
    names = [f"stage{i}" for i in range(1, 7)]
    grouped = adapters_parameters(run.model, names)
    assert list(grouped) == names
    assert all(grouped[n].keys() == adapter_parameters(run.model, n).keys() for n in names)
    trains = [n for n, ps in grouped.items() if any(p.requires_grad for p in ps.values())]
    assert trains == ["stage6"]  # only the newest adapter ever trains
    with killed_at_phase(monkeypatch, 4):
        start_run(config(), tmp_path / "crashed", quiet=True)
    _, resumed = resume_run(tmp_path / "crashed", quiet=True)
    assert resumed["R"] == full["R"] and resumed["metrics"] == full["metrics"]

"""``everlearn compare``: replicate runs pooled into mean and 95% CI, others side by side."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from everlearn.cli import main
from everlearn.report.compare import compare_runs, format_comparison
from tests.helpers.report import fake_run

# Student t quantile t_{0.975, df} from a printed table (df = 2, 3).
T975 = {2: 4.302652729911275, 3: 3.182446305284263}


def cl(ap: float, bwt: float, fwt: float = 5.0, forgetting: float = 10.0) -> dict:
    return {"final_ap": ap, "bwt": bwt, "fwt": fwt, "forgetting": forgetting,
            "stages": ["alpha", "beta", "gamma"]}


def seeds(tmp: Path, strategy: str, aps, bwts, **kw) -> list[Path]:
    return [fake_run(tmp, f"{strategy}-{kw.get('options', {}).get('buffer_size', '')}s{i}",
                     strategy=strategy, seed=i, metrics=cl(ap, bwt), **kw)
            for i, (ap, bwt) in enumerate(zip(aps, bwts))]


def test_three_seeds_pooled_into_mean_and_ci(tmp_path: Path):
    runs = seeds(tmp_path, "replay", [50.0, 60.0, 70.0], [-10.0, -12.0, -14.0])
    [group] = compare_runs(runs)
    assert len(group.runs) == 3 and group.pooled == "seeds 0,1,2"
    mean, half, n = group.stats["final_ap"]
    # sd of (50, 60, 70) = 10; half-width = t * sd / sqrt(3)
    assert (mean, n) == (60.0, 3)
    assert half == pytest.approx(T975[2] * 10 / math.sqrt(3), rel=1e-9)
    assert half == pytest.approx(24.8414, abs=1e-4)
    mean, half, _ = group.stats["bwt"]
    assert mean == pytest.approx(-12.0) and half == pytest.approx(T975[2] * 2 / math.sqrt(3))
    assert group.stats["fwt"] == (5.0, 0.0, 3)
    # cost per run: base eval 3.0 s + phases 13.5 + 14.5 + 15.5; tokens 4001 + 4002 + 4003
    assert group.stats["wall_time_s"][0] == pytest.approx(46.5)
    assert group.stats["tokens"][0] == 12006.0 and group.stats["peak_memory_mb"][0] == 1300.0
    md = format_comparison([group], "markdown")
    assert "| 60.00 ± 24.84 | -12.00 ± 4.97 |" in md and "| replay | 3 | seeds 0,1,2 |" in md
    assert "general delta" not in md


def test_stream_order_pooled_strategies_kept_apart(tmp_path: Path):
    replay = seeds(tmp_path, "replay", [50.0, 60.0, 70.0], [-10.0, -12.0, -14.0])
    shuffled = fake_run(tmp_path, "replay-order", strategy="replay", seed=3,
                        names=("gamma", "alpha", "beta"), metrics=cl(80.0, -8.0))
    ewc = seeds(tmp_path, "ewc", [40.0, 44.0], [-20.0, -22.0])
    bigger = seeds(tmp_path, "replay", [90.0], [-1.0], options={"buffer_size": 500})
    groups = compare_runs([*replay, *ewc, shuffled, *bigger])
    assert [len(g.runs) for g in groups] == [4, 2, 1]
    pooled, e, b = groups
    assert pooled.pooled == "seeds 0,1,2,3; 2 stream orders"
    mean, half, n = pooled.stats["final_ap"]  # 50, 60, 70, 80: sd = sqrt(500/3)
    assert (mean, n) == (65.0, 4)
    assert half == pytest.approx(T975[3] * math.sqrt(500 / 3) / 2)
    assert e.strategy == "ewc" and e.stats["final_ap"][:1] == (42.0,)
    assert b.stats["final_ap"] == (90.0, None, 1)
    labels = [g.label for g in groups]
    assert len(set(labels)) == 3
    assert labels[0] == "strategies=replay"
    assert "strategies=ewc" in labels[1] and "buffer_size" in labels[2]
    md = format_comparison(groups, "markdown")
    assert "| 90.00 |" in md and "| 65.00 ± " in md


def test_csv_parses(tmp_path: Path):
    runs = seeds(tmp_path, "replay", [50.0, 60.0, 70.0], [-10.0, -12.0, -14.0])
    runs += seeds(tmp_path, "ewc", [40.0], [-20.0])
    rows = list(csv.DictReader(io.StringIO(format_comparison(compare_runs(runs), "csv"))))
    assert [r["strategy"] for r in rows] == ["replay", "ewc"]
    assert float(rows[0]["final_ap_mean"]) == 60.0 and rows[0]["final_ap_n"] == "3"
    assert float(rows[0]["final_ap_ci95"]) == pytest.approx(24.8414, abs=1e-4)
    assert rows[1]["final_ap_ci95"] == "" and float(rows[1]["bwt_mean"]) == -20.0
    assert rows[0]["run_dirs"].split(";") == [str(r) for r in runs[:3]]
    assert float(rows[0]["tokens_mean"]) == 12006.0
    assert "general_delta_mean" not in rows[0]


def test_general_delta_column_and_html(tmp_path: Path):
    a = fake_run(tmp_path, "a", strategy="<replay>", metrics=cl(50.0, -1.0),
                 general_ability={"scores": [50.0, 49.0, 48.0, 47.5]})
    b = fake_run(tmp_path, "b", strategy="seqft", metrics=cl(40.0, -9.0))
    groups = compare_runs([a, b])
    assert groups[0].stats["general_delta"] == (-2.5, None, 1)
    md = format_comparison(groups, "markdown")
    assert "general delta" in md and "| -2.50 |" in md
    html = format_comparison(groups, "html")
    assert "<table>" in html and "&lt;replay&gt;" in html and "<replay>" not in html
    assert "general delta" in html and "-2.50" in html


def test_partial_runs_are_not_pooled_with_finished_ones(tmp_path: Path):
    done = seeds(tmp_path, "replay", [50.0, 60.0], [-10.0, -12.0])
    partial = fake_run(tmp_path, "partial", seed=7, done=2)
    groups = compare_runs([*done, partial])
    assert [len(g.runs) for g in groups] == [2, 1]
    assert groups[0].label == "fake" and groups[1].label == "fake, partial"
    assert groups[1].stats["final_ap"] == (None, None, 0)
    assert groups[1].stats["wall_time_s"][0] == pytest.approx(3.0 + 13.5 + 14.5)


def test_runs_without_config_pool_by_results(tmp_path: Path):
    runs = seeds(tmp_path, "replay", [50.0, 60.0], [-10.0, -12.0])
    for r in runs:
        (r / "config.yaml").unlink()
    [group] = compare_runs(runs)
    assert len(group.runs) == 2 and group.stats["final_ap"][0] == 55.0


def test_cli_compare(tmp_path: Path, capsys):
    runs = [str(r) for r in seeds(tmp_path, "replay", [50.0, 60.0, 70.0], [-1.0, -2.0, -3.0])]
    assert main(["compare", *runs]) == 0
    assert "60.00 ± 24.84" in capsys.readouterr().out
    out = tmp_path / "table.csv"
    assert main(["compare", *runs, "--format", "csv", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert next(csv.DictReader(out.open()))["final_ap_n"] == "3"
    assert main(["compare", *runs, "--confidence", "0.9"]) == 0
    text = capsys.readouterr().out
    assert "60.00 ± 16.86" in text and "90%" in text and "95%" not in text
    for argv, expected in ((["--format", "xml"], "--format: expected one of markdown, csv, "
                                                 "html, got 'xml'"),
                           (["--confidence", "95"], "--confidence: expected a level between 0 "
                                                    "and 1 (e.g. 0.9), got 95.0")):
        assert main(["compare", runs[0], *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0] == f"everlearn: error: {err[0][18:]}"
        assert expected in err[0]
    # a directory without results (a failed run, a stray folder) is skipped, the rest compared
    assert main(["compare", runs[0], str(tmp_path / "nope"), str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "| 50.00 |" in captured.out
    assert f"- skipped: {tmp_path / 'nope'} (no such directory)" in captured.out
    assert f"- skipped: {tmp_path} (no results.json)" in captured.out
    assert captured.err.splitlines() == [
        f"everlearn: warning: skipped: {tmp_path / 'nope'} (no such directory)",
        f"everlearn: warning: skipped: {tmp_path} (no results.json)"]
    (Path(runs[0]) / "config.yaml").write_text("a: [unclosed")
    assert main(["compare", runs[0]]) == 2  # nothing left to compare: one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run to compare" in err
    assert "config.yaml: not valid YAML" in err


ENV = {"everlearn": "0.1.0", "python": "3.11.9", "torch": "2.4.0", "transformers": "4.44.0",
       "peft": "0.12.0", "accelerate": "0.33.0", "os": "Linux 6.1", "machine": "x86_64",
       "device": "cpu", "cpu": "AMD EPYC", "cpu_bf16": False, "world_size": 1, "threads": 2,
       "precision": "fp32"}


def test_environment_section_only_for_the_fields_that_differ(tmp_path: Path):
    a = fake_run(tmp_path, "a", strategy="replay", metrics=cl(50.0, -1.0), environment=ENV)
    b = fake_run(tmp_path, "b", strategy="ewc", metrics=cl(40.0, -9.0),
                 environment={**ENV, "transformers": "4.45.1"})
    groups = compare_runs([a, b])
    md = format_comparison(groups, "markdown")
    assert "Environment: the fields that differ" in md
    assert "| run | run dir | transformers |" in md
    assert f"| strategies=replay | {a} | 4.44.0 |" in md and f"| {b} | 4.45.1 |" in md
    assert "| torch |" not in md and "2.4.0" not in md  # equal fields stay out
    html = format_comparison(groups, "html")
    assert '<h2 id="environment">Environment</h2>' in html and "<td>4.45.1</td>" in html
    assert html.index('id="environment"') < html.index("</body>")
    rows = list(csv.DictReader(io.StringIO(format_comparison(groups, "csv"))))
    assert [r["env_transformers"] for r in rows] == ["4.44.0", "4.45.1"]
    assert not [k for k in rows[0] if k.startswith("env_") and k != "env_transformers"]


def test_equal_environments_add_no_section(tmp_path: Path):
    a = fake_run(tmp_path, "a", strategy="replay", metrics=cl(50.0, -1.0), environment=ENV)
    b = fake_run(tmp_path, "b", strategy="ewc", metrics=cl(40.0, -9.0), environment=dict(ENV))
    groups = compare_runs([a, b])
    assert "Environment" not in format_comparison(groups, "markdown")
    assert 'id="environment"' not in format_comparison(groups, "html")
    assert not [k for k in next(csv.DictReader(io.StringIO(format_comparison(groups, "csv"))))
                if k.startswith("env_")]


def test_a_run_without_environment_shows_unknown(tmp_path: Path):
    a = fake_run(tmp_path, "a", strategy="replay", metrics=cl(50.0, -1.0), environment=ENV)
    old = fake_run(tmp_path, "old", strategy="ewc", metrics=cl(40.0, -9.0))
    md = format_comparison(compare_runs([a, old]), "markdown")
    assert f"| {old} | " + " | ".join(["unknown"] * len(ENV)) + " |" in md
    assert "| 2.4.0 | 4.44.0 |" in md


def test_replicates_in_different_environments_stay_pooled_and_listed(tmp_path: Path):
    runs = seeds(tmp_path, "replay", [50.0, 60.0], [-10.0, -12.0])
    for run, device in zip(runs, ("cpu", "cuda:0")):
        res = json.loads((run / "results.json").read_text())
        res["environment"] = {**ENV, "device": device}
        (run / "results.json").write_text(json.dumps(res))
    [group] = compare_runs(runs)
    assert len(group.runs) == 2 and group.pooled == "seeds 0,1"
    md = format_comparison([group], "markdown")
    assert f"| {runs[0]} | cpu |" in md and f"| {runs[1]} | cuda:0 |" in md
    row = next(csv.DictReader(io.StringIO(format_comparison([group], "csv"))))
    assert row["env_device"] == "cpu;cuda:0"


def test_a_run_resumed_in_another_environment(tmp_path: Path):
    run = fake_run(tmp_path, "a", metrics=cl(50.0, -1.0), environment=ENV,
                   environment_history=[{**ENV, "torch": "2.3.1"}])
    md = format_comparison(compare_runs([run]), "markdown")
    assert "| run | run dir | torch |" in md and f"| {run} | 2.3.1 → 2.4.0 |" in md


def test_confidence_level_shown_in_every_format(tmp_path: Path):
    """The text and CSV columns name the interval actually computed, not a fixed 95%."""
    runs = seeds(tmp_path, "replay", [50.0, 60.0, 70.0], [-10.0, -12.0, -14.0])
    groups = compare_runs(runs, confidence=0.9)
    # t_{0.95, 2} from a printed table: the interval is the 90% one
    assert groups[0].stats["final_ap"][1] == pytest.approx(2.919985580 * 10 / math.sqrt(3))
    for fmt in ("markdown", "html"):
        text = format_comparison(groups, fmt)
        assert "90% Student-t" in text and "95%" not in text
    header = next(csv.reader(io.StringIO(format_comparison(groups, "csv"))))
    assert "final_ap_ci90" in header and not any("ci95" in h for h in header)
    default = next(csv.reader(io.StringIO(format_comparison(compare_runs(runs), "csv"))))
    assert "final_ap_ci95" in default  # the default keeps its column names
    odd = format_comparison(compare_runs(runs, confidence=0.975), "csv")
    assert "final_ap_ci97_5" in next(csv.reader(io.StringIO(odd)))


def test_runs_of_different_streams_are_separate_tables(tmp_path: Path):
    abc = seeds(tmp_path, "replay", [50.0, 60.0], [-10.0, -12.0])
    xy = [fake_run(tmp_path, f"xy-s{i}", names=("x", "y"), seed=i, R=[[0, 0], [90, 0], [80, 70]],
                   metrics={**cl(ap, -5.0), "stages": ["x", "y"]})
          for i, ap in enumerate((75.0, 85.0))]
    groups = compare_runs([abc[0], xy[0], abc[1], xy[1]])
    # seeds of one stream pool; the other stream is its own group, never pooled with it
    assert [(g.stream, len(g.runs)) for g in groups] == [(("alpha", "beta", "gamma"), 2),
                                                          (("x", "y"), 2)]
    assert [g.stats["final_ap"][0] for g in groups] == [55.0, 80.0]
    md = format_comparison(groups, "markdown")
    first, second = md.index("Stream: alpha, beta, gamma (2 runs)"), md.index("Stream: x, y")
    assert first < md.index("| 55.00 ± ") < second < md.index("| 80.00 ± ")
    assert md.count("| run | strategy |") == 2 and "2 different streams" in md
    html = format_comparison(groups, "html")
    assert html.count("<h2>Stream: ") == 2 and html.count("data:image/png;base64,") == 2
    rows = list(csv.DictReader(io.StringIO(format_comparison(groups, "csv"))))
    assert [r["stream"] for r in rows] == ["alpha;beta;gamma", "x;y"]


def test_one_stream_is_named(tmp_path: Path):
    runs = seeds(tmp_path, "replay", [50.0, 60.0], [-10.0, -12.0])
    runs.append(fake_run(tmp_path, "order", names=("gamma", "alpha", "beta"), seed=5,
                         metrics=cl(70.0, -8.0)))
    md = format_comparison(compare_runs(runs), "markdown")
    assert "Every run trains the stages alpha, beta, gamma (in some order)." in md
    assert "Stream:" not in md and md.count("| run | strategy |") == 1


def test_unreadable_runs_are_listed_apart(tmp_path: Path):
    good = seeds(tmp_path, "replay", [50.0, 60.0], [-10.0, -12.0])
    missing = tmp_path / "failed"
    missing.mkdir()
    damaged = fake_run(tmp_path, "damaged")
    (damaged / "results.json").write_text('{"R": [[1.0, 2', encoding="utf-8")
    empty = fake_run(tmp_path, "empty")
    data = json.loads((empty / "results.json").read_text())
    (empty / "results.json").write_text(json.dumps({**data, "R": []}), encoding="utf-8")
    groups = compare_runs([missing, good[0], damaged, empty, good[1]])
    assert [len(g.runs) for g in groups] == [2]
    assert [(p.name, why.split(" (")[0]) for p, why in groups.skipped] == [
        ("failed", "no results.json"), ("damaged", "damaged"), ("empty", "incomplete")]
    md = format_comparison(groups, "markdown")
    assert f"- skipped: {missing} (no results.json)" in md
    assert f"- skipped: {damaged} (damaged (results.json is not valid JSON" in md
    html = format_comparison(groups, "html")
    assert 'id="skipped"' in html and f"skipped: {empty} (incomplete (no row of R yet" in html
    assert "skipped" not in format_comparison(groups, "csv")


def test_html_figure_shows_each_group_with_its_interval(tmp_path: Path, monkeypatch):
    import everlearn.report.figures as figures

    seen = {}

    def spy(labels, metrics, interval):
        seen.update(labels=labels, metrics=metrics, interval=interval)
        return real(labels, metrics, interval)

    real = figures.metric_bars_png
    monkeypatch.setattr(figures, "metric_bars_png", spy)
    runs = seeds(tmp_path, "replay", [50.0, 60.0, 70.0], [-10.0, -12.0, -14.0])
    runs += seeds(tmp_path, "ewc", [40.0], [-20.0])
    html = format_comparison(compare_runs(runs, confidence=0.9), "html")
    assert seen["interval"] == "90% CI" and len(seen["labels"]) == 2
    (ap_mean, ap_half), (ewc_ap, ewc_half) = seen["metrics"]["AP"]
    assert ap_mean == 60.0 and ap_half == pytest.approx(2.919985580 * 10 / math.sqrt(3))
    assert (ewc_ap, ewc_half) == (40.0, None)  # one run: a bar without an error bar
    assert seen["metrics"]["BWT"][0][0] == pytest.approx(-12.0)
    assert html.count("data:image/png;base64,") == 1

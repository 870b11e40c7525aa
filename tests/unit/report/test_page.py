"""``everlearn report``: the HTML page and figures from a hand-written results.json (no
training)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from everlearn.cli import main
from everlearn.evaluation.metrics import summarize
from everlearn.report import write_report
from tests.helpers.report import R3, fake_run
from tests.helpers.torch_free import assert_runs_without_heavy_imports


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails unless ``data`` is a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_report_writes_self_contained_page(tmp_path: Path):
    run = fake_run(tmp_path)
    index = write_report(run)
    assert index == run / "report" / "index.html"
    for name in ("matrix.png", "scores.png"):
        w, h = png_size((run / "report" / name).read_bytes())
        assert w > 200 and h > 100
    html = index.read_text(encoding="utf-8")
    pngs = embedded_pngs(html)
    assert len(pngs) == 2 and all(min(png_size(p)) > 100 for p in pngs)
    assert pngs[0] == (run / "report" / "matrix.png").read_bytes()
    # nothing fetched from elsewhere: no external src/href, no scripts
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    m = summarize(R3)  # AP_T 71.67, LA 88.33, BWT -25 (TRACE -16.67), forgetting 25, FWT 5
    for value in (m["final_ap"], m["la"], m["bwt"], m["bwt_trace"], m["forgetting"], m["fwt"]):
        assert f"<td class=\"num\">{value:.2f}</td>" in html
    assert "BWT (mean over T-1 stages)" in html and "<td class=\"num\">-16.67</td>" in html
    assert "<td class=\"num\">95.00</td>" in html  # a matrix cell
    assert "Partial run" not in html
    # cost: times, tokens, padding %, parameters, peak memory, buffer, totals
    assert "<td class=\"num\">4001</td>" in html and "13.50" in html
    assert "2,442,240" in html and "136,957,248" in html
    assert "1300.00" in html and "<td class=\"num\">90</td>" in html
    assert "<td>total</td><td class=\"num\">30</td><td class=\"num\">43.50</td>" in html
    # absent sections are skipped
    for heading in ("General ability", "Strategy metrics", "Stage-kind metrics", "Other results"):
        assert heading not in html
    assert "config.yaml (resolved)" in html and "max_train: 80" in html


def test_partial_run_is_labelled(tmp_path: Path):
    run = fake_run(tmp_path, done=1)
    html = write_report(run).read_text(encoding="utf-8")
    assert 'id="partial"' in html and "1 of 3 phases finished" in html
    assert "status: running" in html
    assert "Not computed yet" in html and "AP after each finished stage so far: 80.00" in html
    assert png_size((run / "report" / "matrix.png").read_bytes())[1] > 100
    assert len(embedded_pngs(html)) == 2


def test_base_row_only_run(tmp_path: Path):
    run = fake_run(tmp_path, done=0)
    html = write_report(run).read_text(encoding="utf-8")
    assert "0 of 3 phases finished" in html and "No phase has finished yet" in html


def test_text_from_the_run_is_escaped(tmp_path: Path):
    run = fake_run(tmp_path, names=("<b>bold</b>", "a&b", "gamma"),
                   note_from_user={"<script>": "x<y"})
    html = write_report(run).read_text(encoding="utf-8")
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "a&amp;b" in html and "<script>" not in html and "x&lt;y" in html


def test_extra_metrics_are_rendered(tmp_path: Path):
    metrics = {**summarize(R3), "stages": ["alpha", "beta", "gamma"], "fuar": 0.42,
               "editing": {"reliability": [91.0, 88.0], "locality": [99.5, 97.25]},
               "preference_accuracy": 64.5}
    routing = [{"after": "alpha", "per_stage": {"alpha": 100.0}, "mean": 100.0},
               {"after": "beta", "per_stage": {"alpha": 75.0, "beta": 95.0}, "mean": 85.0}]
    run = fake_run(tmp_path, metrics=metrics,
                   strategy_metrics={"routed_lora": {"routing_accuracy": routing},
                                     "olora": {"subspace_overlap": {"beta": {"start": 0.125}}}},
                   general_ability={"scores": [50.0, 48.0, 45.5, 44.0]})
    html = write_report(run).read_text(encoding="utf-8")
    assert "Stage-kind metrics" in html and "fuar" in html and "0.42" in html
    assert "reliability" in html and "91.00, 88.00" in html and "64.50" in html
    assert "Strategy metrics" in html and "routing_accuracy" in html
    assert "per_stage.beta" in html and "85.00" in html and "subspace_overlap" in html
    assert "General ability" in html and "<strong>-6.00</strong>" in html  # 44 - 50
    assert "-4.50" in html  # delta after beta
    assert png_size((run / "report" / "general.png").read_bytes())[0] > 100
    assert len(embedded_pngs(html)) == 3


def test_perplexity_group_and_joint(tmp_path: Path):
    R = [[0.0, 40.0], [80.0, 30.0], [70.0, 20.0]]
    metrics = {"main": {**summarize([[0.0], [80.0]]), "stages": ["qa"]},
               "perplexity": {"final_ap": 20.0, "bwt": None, "stages": ["news"],
                              "note": "perplexity: lower is better, so positive BWT means "
                                      "forgetting"}}
    run = fake_run(tmp_path, R=R, names=("qa", "news"), metrics=metrics)
    res = json.loads((run / "results.json").read_text())
    res["stages"][1].update(metric="perplexity", higher_is_better=False, kind="cpt")
    (run / "results.json").write_text(json.dumps(res))
    html = write_report(run).read_text(encoding="utf-8")
    assert "<h3>main: qa</h3>" in html and "<h3>perplexity: news</h3>" in html
    assert "positive BWT means forgetting" in html and "perplexity columns" in html

    joint = fake_run(tmp_path, "joint", metrics={"final_ap": 71.25, "note": "joint note"})
    res = json.loads((joint / "results.json").read_text())
    res.update(phases=[["alpha", "beta", "gamma"]], rows=["base", "alpha+beta+gamma"],
               R=res["R"][:1] + res["R"][-1:], cost=res["cost"][:1])
    (joint / "results.json").write_text(json.dumps(res))
    html = write_report(joint).read_text(encoding="utf-8")
    assert "71.25" in html and "joint note" in html and "<td>1 of 1</td>" in html


def test_report_and_compare_never_import_torch(tmp_path: Path):
    run = fake_run(tmp_path)
    assert_runs_without_heavy_imports(
        "from everlearn.cli import main\n"
        "import everlearn.report, everlearn.report.compare\n"
        f"assert main(['report', {str(run)!r}]) == 0\n"
        f"assert main(['compare', {str(run)!r}, '--format', 'csv']) == 0\n")
    assert (run / "report" / "index.html").is_file()


def test_cli_report_and_errors(tmp_path: Path, capsys):
    run = fake_run(tmp_path)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report" / "index.html")
    for target, expected in ((tmp_path / "missing", "no such run directory"),
                             (tmp_path, "results.json: missing")):
        assert main(["report", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("everlearn: error: ") and expected in err[0]
    (run / "results.json").write_text("{not json")
    assert main(["report", str(run)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (run / "results.json").write_text(json.dumps({"R": [[1.0, 2.0]], "stages": [{}]}))
    assert main(["report", str(run)]) == 2
    assert "expected everlearn results" in capsys.readouterr().err


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome",
                                          "google-chrome-stable") if shutil.which(n)), None)

CHECK = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  const ok = imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
  const p = document.createElement("p");
  p.id = "img-check";
  p.textContent = (ok ? "IMAGES-OK " : "IMAGES-BAD ") + imgs.length + " "
    + document.querySelectorAll("table.matrix tbody tr").length + " "
    + document.querySelectorAll("table.metrics td").length;
  document.body.appendChild(p);
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (.ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path: Path):
    run = fake_run(tmp_path)
    html = write_report(run).read_text(encoding="utf-8")
    probe = run / "report" / "probe.html"  # the page plus a checker; the report has no script
    probe.write_text(html.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert "<table" in dom, proc.stderr[-2000:]
    marker = re.search(r'id="img-check">([^<]*)<', dom)
    assert marker, "the load handler did not run"
    # 2 figures decoded with real sizes, 4 matrix rows (base + 3), 7 metric rows x 2 cells
    assert marker.group(1) == "IMAGES-OK 2 4 14"
    assert "Continual-learning metrics" in dom and "Cost per phase" in dom


def captured_figure(monkeypatch, make, results):
    """The matplotlib Figure a figures.* function draws (its PNG is not rendered)."""
    import everlearn.report.figures as figures

    seen = []
    monkeypatch.setattr(figures, "_png", lambda fig: seen.append(fig) or b"")
    make(results)
    return seen[0]


def ppl_results() -> dict:
    stages = [{"name": "qa", "metric": "exact_match", "higher_is_better": True},
              {"name": "news", "metric": "perplexity", "higher_is_better": False}]
    return {"stages": stages, "phases": [["qa"], ["news"]], "rows": ["base", "qa", "news"],
            "R": [[10.0, 271.0], [80.0, 267.0], [60.0, 300.0]]}


def test_heatmap_colours_scores_0_100_and_perplexity_by_change_from_base(monkeypatch):
    from everlearn.report.figures import heatmap_png, perplexity_change

    res = ppl_results()
    assert perplexity_change(res, 1, 1) == pytest.approx(100 * (267 - 271) / 271)  # -1.48%
    fig = captured_figure(monkeypatch, heatmap_png, res)
    scores, ppl = fig.axes[0].images
    # the score map is coloured on the cells' own 0-100 scale, and its colour bar says so
    assert scores.get_clim() == (0, 100)
    assert list(scores.get_array()[:, 0]) == [10.0, 80.0, 60.0]
    # perplexity: relative change from the base row on a symmetric scale of at least +-10%
    # (here +10.7% is the largest), so 271 -> 267 is a small step, not the whole range
    span = 100 * (300 - 271) / 271
    assert ppl.get_clim() == pytest.approx((-span, span))
    assert list(ppl.get_array()[:, 1]) == pytest.approx([0.0, -400 / 271, 2900 / 271])
    labels = [a.get_ylabel() or a.get_xlabel() for a in fig.axes[1:]]
    assert labels == ["score (0-100)", "perplexity: change from the base row (%)"]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "267.0\n-1.5%" in texts and "80.0" in texts


def test_small_perplexity_changes_stay_pale(monkeypatch):
    from everlearn.report.figures import PPL_MIN_SPAN, heatmap_png

    res = ppl_results()
    res["R"][2][1] = 269.0
    ppl = captured_figure(monkeypatch, heatmap_png, res).axes[0].images[1]
    assert ppl.get_clim() == (-PPL_MIN_SPAN, PPL_MIN_SPAN)


def test_loss_curve_figure_and_section(tmp_path: Path, monkeypatch):
    from tests.helpers.report import cost_entry

    curves = [[[5, 2.0], [10, 1.5]], [[5, 1.8], [10, 1.2]], [[4, 1.1], [10, 0.9]]]
    cost = [cost_entry(i + 1, n, loss_curve=c)
            for i, (n, c) in enumerate(zip(("alpha", "beta", "gamma"), curves))]
    run = fake_run(tmp_path, cost=cost)
    html = write_report(run).read_text(encoding="utf-8")
    assert "<h2>Training loss</h2>" in html and (run / "report" / "loss.png").is_file()
    assert len(embedded_pngs(html)) == 3
    from everlearn.report.figures import loss_png

    results = json.loads((run / "results.json").read_text())
    ax = captured_figure(monkeypatch, loss_png, results).axes[0]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2 or ln.get_marker() == "."]
    # each phase's steps follow the 10 steps of the phases before it
    assert [list(ln.get_xdata()) for ln in lines] == [[5, 10], [15, 20], [24, 30]]
    assert list(lines[2].get_ydata()) == [1.1, 0.9]
    old = fake_run(tmp_path, "old")  # results written before curves were kept
    html = write_report(old).read_text(encoding="utf-8")
    assert "Training loss" not in html and not (old / "report" / "loss.png").exists()


def test_cost_is_two_tables_that_share_the_phase_column(tmp_path: Path):
    html = write_report(fake_run(tmp_path)).read_text(encoding="utf-8")
    time_table, size_table = re.findall(r'<table class="cost[^"]*">(.*?)</table>', html)
    assert "<th>wall s</th>" in time_table and "<th>peak MB</th>" not in time_table
    assert "<th>peak MB</th>" in size_table and "<th>wall s</th>" not in size_table
    assert time_table.count("<td>1: alpha</td>") == size_table.count("<td>1: alpha</td>") == 1
    assert '<div class="tw"><table class="cost">' in html  # a scroll box, never the page

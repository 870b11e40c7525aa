"""``everlearn verify``: pooled runs beside published numbers, differences, ordering, caveats."""

from __future__ import annotations

from pathlib import Path

import pytest

from everlearn.cli import main
from everlearn.data.benchmarks import get_benchmark
from everlearn.report.verify import closest_model, model_size, verify_runs
from tests.helpers.report import fake_run
from tests.helpers.torch_free import assert_runs_without_heavy_imports

TASKS = ("dbpedia", "amazon", "yahoo", "agnews")
PUBLISHED = """\
- {method: SeqFT, model: T5-large, metric: AP, value: 30.0, source: "fake, Table 1"}
- {method: Replay, model: T5-large, metric: AP, value: 60.0, source: "fake, Table 1"}
- {method: Replay, model: T5-large, metric: BWT, value: -5.0, source: "fake, Table 2"}
- {method: Replay, model: LLaMA-7B, metric: AP, value: 70.0, source: "fake, Table 3"}
"""


def runs(tmp: Path, strategy: str, aps: list[float], bwt: float = -10.0, tasks=TASKS,
         finetune: str = "full") -> list[Path]:
    n = len(tasks)
    return [fake_run(tmp, f"{strategy}-{finetune}-s{i}", names=tasks, strategy=strategy, seed=i,
                     R=[[50.0] * n for _ in range(n + 1)], finetune=finetune,
                     metrics={"final_ap": ap, "bwt": bwt, "fwt": 0.0, "forgetting": 1.0,
                              "stages": list(tasks)}) for i, ap in enumerate(aps)]


def test_model_sizes_and_the_closest_published_model():
    assert model_size("T5-large") == 770e6 and model_size("LLaMA-2-7B") == 7e9
    assert model_size("smollm2-135m-instruct") == 135e6
    assert closest_model(135e6, "smollm2", ["LLaMA-7B", "T5-large"]) == "T5-large"
    assert closest_model(None, "llama-7b", ["LLaMA-7B", "T5-large"]) == "LLaMA-7B"


def test_pooled_beside_published_with_difference_and_ordering(tmp_path: Path):
    pub = tmp_path / "pub.yaml"
    pub.write_text(PUBLISHED)
    dirs = runs(tmp_path, "seqft", [20.0, 22.0, 24.0]) + runs(tmp_path, "replay", [40.0, 44.0])
    v = verify_runs(dirs, published_file=pub)
    assert v.benchmark.name == "olora-standard"
    seq, rep = v.rows
    assert (seq.method, seq.n, seq.ap[0]) == ("SeqFT", 3, pytest.approx(22.0))
    assert seq.ap[1] == pytest.approx(4.302652729911275 * 2.0 / 3 ** 0.5)
    assert rep.published_ap["model"] == "T5-large" and rep.published_ap["value"] == 60.0
    assert rep.published_bwt["value"] == -5.0 and seq.published_bwt is None
    assert v.ordering == ["Replay > SeqFT in the paper (60.0 vs 30.0): holds in the runs "
                          "(42.00 vs 22.00)"]
    assert any("model differs: the runs use smollm2-135m-instruct" in n for n in v.notes)
    assert any("at most 80 training records per task" in n for n in v.notes)


def test_an_ordering_the_runs_break(tmp_path: Path):
    pub = tmp_path / "pub.yaml"
    pub.write_text(PUBLISHED)
    dirs = runs(tmp_path, "seqft", [50.0, 52.0]) + runs(tmp_path, "replay", [40.0, 41.0])
    v = verify_runs(dirs, "olora-standard", pub)
    assert v.ordering[0].endswith("does not hold in the runs (40.50 vs 51.00)")


def test_a_slice_and_no_published_numbers_are_said(tmp_path: Path, capsys):
    dirs = [fake_run(tmp_path, "r", names=("task1572_samsum_summary",
                                           "task363_sst2_polarity_classification"),
                     strategy="seqft", R=[[50.0, 40.0], [60.0, 40.0], [55.0, 70.0]])]
    assert main(["verify", *map(str, dirs)]) == 0
    out = capsys.readouterr().out
    assert "# verify: SuperNI-15" in out and "| SeqLoRA | seqft | 1 |" in out
    assert "the runs train 2 of the benchmark's 15 tasks" in out
    assert "no published numbers are recorded for superni-15" in out


def test_the_built_in_numbers_of_the_order_the_runs_follow(tmp_path: Path, capsys):
    """olora-standard order 1 in full: SeqFT and O-LoRA beside O-LoRA's Table 1 (as reprinted)
    for order 1; a LoRA seqft run is the papers' SeqLoRA."""
    dirs = runs(tmp_path, "seqft", [30.0, 32.0]) + runs(tmp_path, "olora", [70.0, 72.0])
    v = verify_runs(dirs)
    seq, olora = v.rows
    assert (seq.method, seq.published_ap["value"], seq.published_ap["orders"]) == ("SeqFT", 18.9,
                                                                                   [1])
    assert (olora.method, olora.published_ap["value"]) == ("O-LoRA", 75.4)
    assert v.ordering == ["O-LoRA > SeqFT in the paper (75.4 vs 18.9): holds in the runs "
                          "(71.00 vs 31.00)"]
    seqlora = verify_runs(runs(tmp_path / "l", "seqft", [40.0], finetune="lora")).rows[0]
    assert (seqlora.method, seqlora.published_ap["value"]) == ("SeqLoRA", 44.6)
    assert main(["verify", *map(str, dirs)]) == 0
    out = capsys.readouterr().out
    assert "| SeqFT | seqft | 2 | 31.00" in out
    assert "18.90 (T5-large; orders 1; MIGU paper (Du et al. 2024, arXiv:2406.17245v2), " \
           "Table 8) | +12.10 |" in out
    assert "75.40 (T5-large; orders 1; CoDe-LoRA paper" in out


def test_a_long_sequence_order_is_named_as_the_papers_number_it(tmp_path: Path):
    """This file's order 4 is the papers' order 6; a slice of two orders' common prefix gets
    the papers' average over orders 4-6 and says so."""
    order4 = get_benchmark("long-sequence").order(4)
    v = verify_runs(runs(tmp_path, "replay", [50.0], tasks=tuple(order4)))
    assert v.rows[0].published_ap["value"] == 53.1 and v.rows[0].published_ap["orders"] == [6]
    sliced = runs(tmp_path / "s", "replay", [50.0], tasks=("yelp", "amazon"))
    assert verify_runs(sliced).rows[0].published_ap["orders"] == [6]
    olora = get_benchmark("olora-standard")
    both = runs(tmp_path / "b", "replay", [50.0], tasks=tuple(olora.order(1)[:2]))
    w = verify_runs(both)
    assert w.rows[0].published_ap["value"] == 57.8 and w.rows[0].published_ap["orders"] == [1, 2,
                                                                                          3]
    assert any(n.startswith("orders differ: published values average over orders 1, 2, 3")
               for n in w.notes)


def test_trace_takes_the_budget_nearest_the_runs(tmp_path: Path):
    """TRACE prints SeqFT with 5000 records per task (Table 1) and 500 (Table 3): runs capped
    at 80 records get the 500 one; BWT only Table 1 prints, with its budget said."""
    tasks = tuple(get_benchmark("trace").order(1))
    v = verify_runs(runs(tmp_path, "seqft", [20.0], tasks=tasks))
    row = v.rows[0]
    assert row.published_ap["value"] == 23.0 and row.published_ap["train_per_task"] == 500
    assert row.published_ap["model"] == "LLaMA-2-7B-Chat"
    assert row.published_bwt["value"] == -8.3 and row.published_bwt["train_per_task"] == 5000
    assert any("budget differs: published values trained 500, 5000 records per task" in n
               for n in v.notes)
    both = verify_runs(runs(tmp_path / "r", "replay", [30.0], tasks=tasks)
                       + runs(tmp_path / "q", "seqft", [20.0], tasks=tasks))
    assert both.rows[0].published_ap["train_per_task"] == 5000  # Replay: Table 1 only
    assert both.ordering == []  # 5000 records per task against 500: not one setup


def test_trace_runs_note_no_metric_difference(tmp_path: Path):
    """Every TRACE task is scored by TRACE's own rule (string equality, the answer letter,
    edit similarity, SARI, the rouge package's ROUGE-L), so verify notes no metric
    difference; a benchmark task with a ``deviation`` would be named (the SuperNI test)."""
    v = verify_runs(runs(tmp_path, "seqft", [20.0], tasks=tuple(get_benchmark("trace").order(1))))
    assert [n for n in v.notes if n.startswith("metric differs")] == []


def test_runs_of_no_benchmark_are_a_one_line_error(tmp_path: Path, capsys):
    d = fake_run(tmp_path, "r", names=("alpha", "beta"), R=[[1.0, 2.0]] * 3)
    assert main(["verify", str(d)]) == 2
    assert "no benchmark has all of the runs' stages (alpha, beta)" in capsys.readouterr().err


def test_verify_and_the_registry_stay_torch_free():
    assert_runs_without_heavy_imports(
        "from everlearn.report.verify import verify_runs\n"
        "from everlearn.data.benchmarks import get_benchmark\n"
        "get_benchmark('trace')\n")

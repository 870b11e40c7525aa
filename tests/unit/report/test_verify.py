"""``everlearn verify``: pooled runs beside published numbers, differences, ordering, caveats."""

from __future__ import annotations

from pathlib import Path

import pytest

from everlearn.cli import main
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


def test_runs_of_no_benchmark_are_a_one_line_error(tmp_path: Path, capsys):
    d = fake_run(tmp_path, "r", names=("alpha", "beta"), R=[[1.0, 2.0]] * 3)
    assert main(["verify", str(d)]) == 2
    assert "no benchmark has all of the runs' stages (alpha, beta)" in capsys.readouterr().err


def test_verify_and_the_registry_stay_torch_free():
    assert_runs_without_heavy_imports(
        "from everlearn.report.verify import verify_runs\n"
        "from everlearn.data.benchmarks import get_benchmark\n"
        "get_benchmark('trace')\n")

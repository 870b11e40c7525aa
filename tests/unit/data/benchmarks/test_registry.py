"""The benchmark registry: every file loads, orders are the authors', label sets theirs."""

from pathlib import Path

import pytest

from everlearn.data.benchmarks import (
    benchmark_names,
    get_benchmark,
    load_benchmark,
    read_published,
)
from everlearn.errors import ConfigError


def test_the_registered_benchmarks():
    assert set(benchmark_names()) == {"olora-standard", "long-sequence", "superni-15", "trace",
                                      "temporalwiki", "ckl"}


def test_olora_orders_are_the_scripts_orders():
    b = get_benchmark("olora-standard")
    assert b.order(1) == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert b.order(2) == ["dbpedia", "amazon", "agnews", "yahoo"]
    assert b.order(3) == ["yahoo", "amazon", "agnews", "dbpedia"]
    assert b.tasks["agnews"].labels == ["World", "Sports", "Business", "Science or Technology"]
    assert len(b.tasks["dbpedia"].labels) == 14 and len(b.tasks["yahoo"].labels) == 10


def test_long_sequence_and_superni_orders():
    ls = get_benchmark("long-sequence")
    assert ls.order(4)[:3] == ["yelp", "amazon", "mnli"] and ls.order(4)[-1] == "wic"
    assert ls.order(5)[0] == "mnli" and ls.order(5)[-1] == "yahoo"
    assert ls.tasks["cb"].labels == ["entailment", "contradiction", "neutral"]
    sn = get_benchmark("superni-15")
    assert sn.order(1)[0] == "task1572_samsum_summary"
    assert sn.order(2)[0] == "task748_glucose_reverse_cause_event_detection"
    assert sn.metric == "rouge_l" and sn.order(1)[-1] == sn.order(2)[-1]


def test_trace_metrics_per_task_and_bwt_over_t():
    t = get_benchmark("trace")
    assert t.order(1) == ["C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA",
                          "NumGLUE-cm", "NumGLUE-ds", "20Minuten"]
    assert {task: t.task_metric(task) for task in t.order(1)} == {
        "C-STANCE": "strict_match", "FOMC": "strict_match", "MeetingBank": "rouge_l_summary",
        "Py150": "edit_similarity", "ScienceQA": "first_char_match",
        "NumGLUE-cm": "strict_match", "NumGLUE-ds": "strict_match", "20Minuten": "sari"}
    assert t.tasks["20Minuten"].paper_metric == "SARI" and t.tasks["Py150"].paper_metric == \
        "edit similarity"
    # TRACE's own scorer for every task, so no task states a deviation
    assert [task for task in t.order(1) if t.tasks[task].deviation] == []
    assert t.bwt == "bwt_trace"


def test_unknown_name_and_order_are_one_line_errors():
    with pytest.raises(ConfigError, match="expected one of .*superni-15.*got 'nope'"):
        get_benchmark("nope")
    with pytest.raises(ConfigError, match="order: expected one of 1, 2, 3, got 9"):
        get_benchmark("olora-standard").order(9)


def test_a_broken_file_names_the_field(tmp_path: Path):
    p = tmp_path / "x.yaml"
    p.write_text("name: x\nsources: {}\nlayouts: {a: {}}\ntasks:\n  t: {paths: {a: t}}\n"
                 "orders: {1: [t, t]}\n")
    with pytest.raises(ConfigError, match=r"x.yaml: orders.1: expected .* permutation"):
        load_benchmark(p)


def test_published_numbers_need_their_source(tmp_path: Path):
    p = tmp_path / "pub.yaml"
    p.write_text("- {method: Replay, model: T5-large, metric: AP, value: 50.0}\n")
    with pytest.raises(ConfigError, match=r"pub.yaml: published.0.source: missing"):
        read_published(p)
    p.write_text("published:\n- {method: Replay, model: T5-large, metric: AP, value: 50.0, "
                 "source: 'paper, Table 1'}\n")
    assert read_published(p)[0]["value"] == 50.0


@pytest.mark.parametrize("name", ["olora-standard", "long-sequence", "superni-15", "trace",
                                  "temporalwiki", "ckl"])
def test_every_published_number_names_its_strategy_source_and_orders(name):
    """Each entry's method is a strategy's name through method_names, or says why it has none;
    a one-order entry names an order of this file (in the papers' numbering)."""
    b = get_benchmark(name)
    strategies = {Path(p).stem for p in (Path(__file__).parents[4] / "src" / "everlearn"
                                         / "strategies").glob("*.py")}
    assert {key.split("+")[0] for key in b.method_names} <= strategies
    paper = {b.paper_orders.get(k, k) for k in b.orders}
    for e in b.published:
        assert e["method"] in b.method_names.values() or e.get("no_strategy"), e
        assert e["metric"] in ("AP", "OP", "BWT") and "Table" in e["source"], e
        if len(e.get("orders") or []) == 1:
            assert e["orders"][0] in paper, e


def test_the_published_numbers_recorded():
    ols, ls, tr = (get_benchmark(n) for n in ("olora-standard", "long-sequence", "trace"))
    assert len(ols.published) == 42 and len(ls.published) == 34 and len(tr.published) == 41
    assert not get_benchmark("superni-15").published
    avg = {e["method"]: e["value"] for e in ols.published if e["orders"] == [1, 2, 3]}
    assert avg["O-LoRA"] == 75.8 and avg["SeqFT"] == 28.5 and avg["MTL"] == 80.0
    assert "L2P" not in avg  # the two reprints differ on it
    assert ls.paper_orders == {4: 6, 5: 4}
    trace_bwt = [e for e in tr.published if e["method"] == "SeqFT" and e["metric"] == "BWT"]
    assert trace_bwt[0] == {"method": "SeqFT", "model": "LLaMA-2-7B-Chat", "metric": "BWT",
                            "value": -8.3, "orders": [1], "train_per_task": 5000,
                            "source": "TRACE paper (Wang et al. 2023, arXiv:2310.06762, "
                                      "preprint), Table 1"}


def test_published_optional_fields_are_checked(tmp_path: Path):
    p = tmp_path / "pub.yaml"
    base = "- {method: Replay, model: T5-large, metric: AP, value: 50.0, source: 'p, Table 1'"
    for extra, match in ((", orders: 1}", r"published.0.orders: expected a list"),
                         (", train_per_task: -5}", r"published.0.train_per_task: expected"),
                         (", no_strategy: [x]}", r"published.0.no_strategy: expected a string")):
        p.write_text(base + extra + "\n")
        with pytest.raises(ConfigError, match=match):
            read_published(p)
    p.write_text(base + ", orders: [1, 2], train_per_task: 500, note: reprint}\n")
    assert read_published(p)[0]["orders"] == [1, 2]


def test_paper_orders_name_orders_of_the_file(tmp_path: Path):
    p = tmp_path / "x.yaml"
    p.write_text("name: x\nsources: {}\nlayouts: {a: {}}\ntasks:\n  t: {paths: {a: t}}\n"
                 "orders: {1: [t]}\npaper_orders: {2: 5}\n")
    with pytest.raises(ConfigError, match=r"x.yaml: paper_orders: expected"):
        load_benchmark(p)

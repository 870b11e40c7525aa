"""TemporalWiki's and CKL's layouts -> cpt stages whose probes carry their split (invariant /
updated / new), read from CSV files written here as the authors publish them."""

from __future__ import annotations

from pathlib import Path

import pytest

from everlearn.data.benchmarks import get_benchmark
from everlearn.data.benchmarks.layouts import benchmark_stages
from everlearn.data.benchmarks.probe_files import read_ckl_lama
from everlearn.errors import ConfigError, DataError
from everlearn.evaluation.temporal import SPLITS, is_temporal
from everlearn.stages.stream import build_stream
from everlearn.validation import build_config
from tests.helpers.benchmark_layouts import write_ckl, write_csv, write_temporalwiki


def _stream(name: str, data: Path, **spec):
    cfg = build_config({"benchmark": {"name": name, "data_dir": str(data), **spec},
                        "model": {"name": "tiny-llama"}})
    return cfg, build_stream(cfg)


def _splits(stage) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in stage.test:
        out[r.meta["split"]] = out.get(r.meta["split"], 0) + 1
    return out


def test_temporalwiki_four_monthly_cpt_stages_with_unchanged_and_changed_probes(tmp_path):
    write_temporalwiki(tmp_path)
    cfg, stream = _stream("temporalwiki", tmp_path)
    assert stream.names == ["wikipedia_0809", "wikipedia_0910", "wikipedia_1011",
                            "wikipedia_1112"]
    assert {(s.kind, s.metric) for s in stream} == {("cpt", "exact_match")}
    st = stream.stages[1]
    assert cfg.stages[1].train.path.endswith("TWiki_Diffsets/wikipedia_0910_gpt2.csv")
    assert st.train[0].text.startswith("In 2021-10, person 0 of month 09 moved to City090")
    # unchanged -> invariant, changed -> new; no probe is "updated" (the files do not say)
    assert _splits(st) == {"invariant": 3, "new": 3}
    probe = next(r for r in st.test if r.meta["split"] == "new")
    assert probe.prompt == "Person 0 of month 09 residence" and probe.answers == ["City090"]
    assert all(is_temporal(s) for s in stream)


def test_temporalwiki_probes_folder_as_the_zip_names_it(tmp_path):
    write_temporalwiki(tmp_path, probes_dir="TWiki_Probes")
    _, stages = benchmark_stages({"name": "temporalwiki", "data_dir": str(tmp_path),
                                  "tasks": 1})
    assert stages[0]["test"]["probes"]["invariant"].endswith(
        "TWiki_Probes/0801-0901_unchanged.csv")
    assert stages[0]["test"]["format"] == "twiki_probes" and stages[0]["kind"] == "cpt"


def test_ckl_one_recentnews_stage_with_the_three_lama_probe_sets(tmp_path):
    write_ckl(tmp_path)
    cfg, stream = _stream("ckl", tmp_path, test_per_task=9)
    (st,) = stream.stages
    assert (st.name, st.kind, st.metric) == ("recentnews", "cpt", "exact_match")
    assert cfg.stages[0].train.fields == {"text": "original"}
    assert st.train[0].text == "News 0: Team0 won. The mayor of Town0 is Ann0."  # GPT-2's text
    assert _splits(st) == {s: 3 for s in SPLITS}
    by = {(r.meta["split"], r.meta["id"]): r for r in st.test}
    inv, upd, new = by[("invariant", "1")], by[("updated", "101")], by[("new", "202")]
    assert inv.prompt == "Country1 has the capital" and inv.answers == ["Capital1"]
    # UpdatedLAMA: the new answers from the answers file; the old ones kept beside them
    assert upd.answers == ["Ann1", "Ann 1"] and upd.meta["old_answers"] == ["Bob1"]
    assert new.prompt == "News 2 says that" and new.answers == ["Team2", "the Team2"]
    assert is_temporal(st)


def test_a_missing_probe_file_names_the_file_and_the_task(tmp_path):
    write_temporalwiki(tmp_path)
    (tmp_path / "twiki_probes/0901-1001_changed.csv").unlink()
    with pytest.raises(ConfigError, match=r"^benchmark temporalwiki: task wikipedia_0910: "
                       r"\S+/twiki_probes/0901-1001_changed.csv: file not found"):
        benchmark_stages({"name": "temporalwiki", "data_dir": str(tmp_path)})
    (tmp_path / "TWiki_Diffsets/wikipedia_0809_gpt2.csv").unlink()
    with pytest.raises(ConfigError, match=r"task wikipedia_0809: no training file under .*"
                       r"TWiki_Diffsets/wikipedia_0809_gpt2.csv"):
        benchmark_stages({"name": "temporalwiki", "data_dir": str(tmp_path)})


def test_ckl_answers_file_missing_or_without_the_row(tmp_path):
    write_ckl(tmp_path)
    (tmp_path / "recentlama_h_val_answers.json").unlink()
    with pytest.raises(DataError, match=r"recentlama_h_val_answers.json: file not found"):
        read_ckl_lama(str(tmp_path / "newlama/newLAMA.csv"), "recentnews")
    (tmp_path / "recentlama_h_val_answers.json").write_text('{"200": ["Team0"]}')
    with pytest.raises(DataError, match=r"newLAMA.csv: row 2: unique_id 201: not in the "):
        read_ckl_lama(str(tmp_path / "newlama/newLAMA.csv"), "recentnews")


def test_ckl_a_leading_mask_is_left_out_and_unknown_columns_refused(tmp_path, caplog):
    write_csv(tmp_path / "invariantLAMA.csv", ["id", "input", "output"],
         [[0, "<extra_id_0> is the capital of France.", "Paris"],
          [1, "Rome is the capital of <extra_id_0> .", "<extra_id_0> Italy"]])
    recs = read_ckl_lama(str(tmp_path / "invariantLAMA.csv"), "t")
    assert [(r.prompt, r.answers) for r in recs] == [("Rome is the capital of", ["Italy"])]
    assert "1 of 2 probes left out" in caplog.text
    write_csv(tmp_path / "other.csv", ["question", "reply"], [["q", "a"]])
    with pytest.raises(DataError, match=r"other.csv: expected CKL's columns"):
        read_ckl_lama(str(tmp_path / "other.csv"), "t")


def test_probes_in_a_plain_config_and_their_checks(tmp_path):
    write_temporalwiki(tmp_path)
    probes = tmp_path / "twiki_probes"
    stage = {"name": "m1", "kind": "cpt", "train": str(tmp_path / "TWiki_Diffsets/"
                                                        "wikipedia_0809_gpt2.csv"),
             "test": {"probes": {"invariant": str(probes / "0801-0901_unchanged.csv"),
                                 "updated": str(probes / "0801-0901_changed.csv")},
                      "format": "twiki_probes"}}
    cfg = build_config({"stages": [stage], "model": {"name": "tiny-llama"}})
    (st,) = build_stream(cfg).stages
    assert st.metric == "exact_match"  # a cpt stage's probes: not perplexity
    assert _splits(st) == {"invariant": 3, "updated": 3} and is_temporal(st)
    bad = {**stage, "test": {"probes": {"changed": "x.csv"}}}
    with pytest.raises(ConfigError, match=r"stages\.0\.test\.probes\.changed: expected a split "
                       "among invariant, updated, new"):
        build_config({"stages": [bad], "model": {"name": "tiny-llama"}})
    text_test = {**stage, "metric": "exact_match", "test": stage["train"]}
    with pytest.raises(DataError, match=r"test: metric exact_match scores a prompt's "
                       "continuation .* raw text"):
        build_stream(build_config({"stages": [text_test], "model": {"name": "tiny-llama"}}))


def test_the_entries_name_their_sources_and_no_unread_numbers():
    tw, ckl = get_benchmark("temporalwiki"), get_benchmark("ckl")
    assert tw.kind == ckl.kind == "cpt" and tw.order(1)[0] == "wikipedia_0809"
    assert "joeljang/temporalwiki" in tw.sources["repository"]
    assert "continual-knowledge-learning" in ckl.sources["repository"]
    assert not tw.published and not ckl.published
    assert all(t.deviation for t in tw.tasks.values())  # perplexity in the paper's configs

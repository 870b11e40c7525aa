"""Stage and Stream: the ordered stages of a run, each with its records, metric and labels.

Building a stream reads every stage's data once (so bad data fails before any training) and
samples ``max_train`` / ``max_test`` deterministically from the run seed and the stage name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from everlearn.config import RunConfig, StageConfig
from everlearn.data.builtin import get_builtin_task
from everlearn.data.builtin.suites import get_suite
from everlearn.data.readers import read_source
from everlearn.data.records import Record
from everlearn.data.sampling import sample_records
from everlearn.errors import DataError
from everlearn.evaluation.scorers import get_metric
from everlearn.stages import get_kind

log = logging.getLogger("everlearn")

MAX_INFERRED_LABELS = 32
MAX_LABEL_WORDS = 3
DEFAULT_BUILTIN_SIZES = {"train": 200, "test": 50}


@dataclass
class Stage:
    """One stage, ready to train and evaluate."""

    index: int  # 1-based position in the stream
    name: str
    kind: str
    metric: str
    train: list[Record]
    test: list[Record]
    labels: list[str] = field(default_factory=list)
    task_id: str | None = None
    steps: int | None = None
    epochs: float | None = None
    beta: float = 0.1  # DPO temperature (align stages)
    edit: Any = None  # the run's EditConfig (edit stages): layers, max_change, lr
    freeze_lm: bool = False  # an alignment stage of a vision-language model (everlearn.vision)
    lr: float | None = None  # overrides train.lr
    last: bool | None = None  # a text-stream segment: whether it ends the stream (textstream)

    @property
    def higher_is_better(self) -> bool:
        return get_metric(self.metric).higher_is_better


@dataclass
class Stream:
    """The ordered stages and the scenario (TIL / DIL / CIL) they form."""

    stages: list[Stage]
    scenario: str = "TIL"

    def __len__(self) -> int:
        return len(self.stages)

    def __iter__(self):
        return iter(self.stages)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def uses_images(self) -> bool:
        """Whether any record carries an image (a vision-language model is then needed)."""
        return any(r.image for s in self.stages for r in s.train + s.test)


def _load_split(sc: StageConfig, split: str, seed: int, source_name: str) -> list[Record]:
    task = sc.task_id or sc.name
    if sc.builtin is not None:
        try:
            spec = get_builtin_task(sc.builtin)
        except KeyError as exc:
            raise DataError(f"{source_name}: {exc.args[0]}") from None
        n = sc.max_train if split == "train" else sc.max_test
        records = spec.generate(n or DEFAULT_BUILTIN_SIZES[split], seed, split)
        for r in records:
            r.task = task
        return records
    src = sc.train if split == "train" else sc.test
    if src.probes:
        records = read_probes(src, task)
    else:
        records = read_source(src.path, src.format, sc.kind, src.fields, src.split, task)
        if not records:
            raise DataError(f"{src.path}: no records found")
    limit = sc.max_train if split == "train" else sc.max_test
    return sample_records(records, limit, seed, f"{sc.name}:{split}")


def read_probes(src, task: str) -> list[Record]:
    """A test source's ``probes``: each split's file read as prompt/answer records (an sft
    stage's records, whatever the stage's kind: a probe is a prompt and its answers), each
    carrying its split in ``meta["split"]`` (everlearn.evaluation.temporal)."""
    records = []
    for split, path in src.probes.items():
        part = read_source(path, src.format, "sft", src.fields, src.split, task)
        if not part:
            raise DataError(f"{path}: no records found")
        for r in part:
            r.meta["split"] = split
        records += part
    return records


def is_probe_set(records: list[Record]) -> bool:
    """Whether every record is a probe (a prompt and its answers), not raw text."""
    return bool(records) and all(r.prompt and r.answers for r in records)


def _resolve_metric(sc: StageConfig, train: list[Record], test: list[Record]) -> str:
    if sc.metric:
        return sc.metric
    kind = get_kind(sc.kind)
    if kind.raw_text and is_probe_set(test):
        return "exact_match"  # a cpt stage's probes: generated from the prompt as a cloze
    default = kind.default_metric  # cpt, align and edit stages have one
    if default is not None:
        return default
    if sc.builtin is not None:
        return get_builtin_task(sc.builtin).metric
    if sc.labels or all(r.options for r in test) or closed_label_set(train, test):
        return "accuracy"
    return "exact_match"


def closed_label_set(train: list[Record], test: list[Record]) -> list[str]:
    """The answers of a classification task, when the data looks like one; else ``[]``.

    A classification task scored by generating text and string-matching it wastes decoding and
    marks near-misses wrong; scoring the labels by log-likelihood is faster and exact. The data
    looks like one when every record has one short answer, the distinct answers are few, each
    recurs (at least four records per label) and every test answer occurs in training.
    """
    if not train or not test:
        return []
    if any(len(r.answers) != 1 or r.options for r in train + test):
        return []
    seen = {r.answers[0] for r in train}
    labels = sorted(seen | {r.answers[0] for r in test})
    if (len(labels) > MAX_INFERRED_LABELS or len(labels) < 2 or not set(labels) <= seen
            or len(train) + len(test) < 4 * len(labels)
            or any(len(a.split()) > MAX_LABEL_WORDS for a in labels)):
        return []
    return labels


def _resolve_labels(sc: StageConfig, metric: str, train: list[Record], test: list[Record],
                    where: str) -> list[str]:
    """Label options for accuracy: configured, per record, or the distinct answers."""
    if metric != "accuracy":
        return list(sc.labels)
    if sc.labels:
        warn_unused_labels(sc, train + test, where)
        return list(sc.labels)
    if sc.builtin is not None and get_builtin_task(sc.builtin).labels:
        return list(get_builtin_task(sc.builtin).labels)
    if all(r.options for r in test):
        return []  # every record carries its own options
    answers = sorted({r.answers[0] for r in train + test if r.answers})
    if len(answers) > MAX_INFERRED_LABELS:
        raise DataError(f"{where}: labels: metric is accuracy but no labels are set and the "
                        f"data has {len(answers)} distinct answers; set `labels: [...]`")
    return answers


def warn_unused_labels(sc: StageConfig, records: list[Record], where: str) -> None:
    """Configured labels of which no record's answer is one are a warning naming the stage:
    every answer would be scored wrong. (Some labels missing is normal: tasks that share one
    label set, each with its own answers.)"""
    answers = {a for r in records for a in r.answers}
    if answers and not answers & set(sc.labels):
        log.warning("%s ('%s'): labels: none of %s occurs in the answers of its records (%s)",
                    where, sc.name, ", ".join(map(repr, sc.labels)),
                    ", ".join(map(repr, sorted(answers)[:5])))


def _suite_stages(sc: StageConfig, seed: int, where: str) -> list[Stage]:
    """The stages one suite entry expands into (``builtin: worldline, periods: N``): named
    ``NAME-01 .. NAME-N``, each with its own ``max_train`` / ``max_test`` sample."""
    from everlearn.schema import build

    suite = get_suite(sc.builtin)
    if sc.metric not in (None, suite.metric):
        raise DataError(f"{where}: metric: the {suite.name} suite is scored by {suite.metric}, "
                        f"got {sc.metric!r}")
    options = build(suite.Options, sc.builtin_options, "builtin_options")  # checked by config
    n = sc.periods or suite.periods_for(options)
    try:
        periods = suite.build(n, seed, options)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    width = max(2, len(str(len(periods))))
    suffixes = (suite.stage_suffixes(options, n) if suite.stage_suffixes is not None else
                [f"{k:0{width}d}" for k in range(1, len(periods) + 1)])
    stages = []
    for k, ((train, test), suffix) in enumerate(zip(periods, suffixes), 1):
        name = f"{sc.name}-{suffix}"
        task = sc.task_id or name
        train = sample_records(train, sc.max_train, seed, f"{name}:train")
        test = suite.sample_test(test, sc.max_test, seed, name)
        for r in train + test:
            r.task = task
        stages.append(Stage(index=k, name=name, kind=suite.kind, metric=suite.metric,
                            train=train, test=test, task_id=task, steps=sc.steps,
                            epochs=sc.epochs, freeze_lm=sc.freeze_lm, lr=sc.lr))
    return stages


def _check_records(sc: StageConfig, train: list[Record], test: list[Record], where: str
                   ) -> None:
    """The stage kind's record check on both splits (sft: responses, align: pairs)."""
    check = get_kind(sc.kind).check_records
    for split, records in (("train", train), ("test", test)):
        problem = check(split, records, sc.builtin or sc.name) if check else None
        if problem:
            raise DataError(f"{where}: {split}: {problem}")


def _check_raw_text_metric(sc: StageConfig, metric: str, test: list[Record], where: str
                           ) -> None:
    """A raw-text (cpt) stage scored by a metric other than perplexity generates from each
    test record's prompt: its test records must be probes (prompt and answers)."""
    if get_kind(sc.kind).raw_text and metric != "perplexity" and not is_probe_set(test):
        raise DataError(f"{where}: test: metric {metric} scores a prompt's continuation against "
                        f"its answers, but the test records of this {sc.kind} stage are raw "
                        "text; give probes (prompt and answer records, or `probes: {invariant: "
                        "FILE, ...}`) or leave the metric at perplexity")


def _numbered(stages: list[Stage], source_name: str) -> list[Stage]:
    """Positions 1..T after suites expanded; expanded names must not clash."""
    seen: set[str] = set()
    for k, st in enumerate(stages, 1):
        st.index = k
        if st.name in seen:
            raise DataError(f"{source_name}: stages: stage name '{st.name}' repeats (a suite "
                            "entry NAME makes stages NAME-01 .. NAME-N)")
        seen.add(st.name)
    return stages


def build_stream(cfg: RunConfig, source_name: str = "config") -> Stream:
    """Read and sample every stage's data; resolve metrics and labels."""
    stages = []
    for i, sc in enumerate(cfg.stages, 1):
        where = f"{source_name}: stages.{i - 1}"
        if get_suite(sc.builtin) is not None:
            stages.extend(_suite_stages(sc, cfg.seed, where))
            continue
        train = _load_split(sc, "train", cfg.seed, where)
        test = _load_split(sc, "test", cfg.seed, where)
        metric = _resolve_metric(sc, train, test)
        _check_records(sc, train, test, where)
        _check_raw_text_metric(sc, metric, test, where)
        labels = _resolve_labels(sc, metric, train, test, where)
        for r in test:
            if metric == "accuracy" and not r.options:
                r.options = labels
        stages.append(Stage(index=i, name=sc.name, kind=sc.kind, metric=metric, train=train,
                            test=test, labels=labels, task_id=sc.task_id or sc.name,
                            steps=sc.steps, epochs=sc.epochs, beta=sc.beta,
                            freeze_lm=sc.freeze_lm, lr=sc.lr))
    for st in stages:
        if get_kind(st.kind).edits:
            st.edit = cfg.edit
    if cfg.scenario == "CIL":
        _pool_labels(stages)
    return Stream(stages=_numbered(stages, source_name), scenario=cfg.scenario)


def _pool_labels(stages: list[Stage]) -> None:
    """Class-incremental: every label task is scored against the labels of all of them, so the
    model must also tell which stage's classes an input belongs to."""
    pooled: list[str] = []
    for st in stages:
        if st.metric == "accuracy" and st.labels:
            pooled += [lab for lab in st.labels if lab not in pooled]
    for st in stages:
        if st.metric == "accuracy" and st.labels:
            for r in st.test:
                if r.options == st.labels:
                    r.options = list(pooled)
            st.labels = list(pooled)

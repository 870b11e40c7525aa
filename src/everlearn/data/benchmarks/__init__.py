"""The field's benchmark streams, as data: one YAML file per benchmark beside this module.

Each file names the tasks (dataset, label set, instruction, metric, the folder of each task in
every layout its authors publish, or its files: a temporal benchmark's corpus and probes), the
task orders exactly as the authors' scripts give them, its sources, the paper's setup and
published numbers (each with where it was read). No code
per benchmark: :func:`get_benchmark` reads a file into a :class:`Benchmark`, checked so that a
broken entry is a one-line error naming the file and the field. Pure YAML, no torch, so
``everlearn ls`` and ``everlearn verify`` stay light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from everlearn.errors import ConfigError

HERE = Path(__file__).resolve().parent
PUBLISHED_FIELDS = ("method", "model", "metric", "value", "source")
# optional: the task orders the value averages over (the source's numbering, see
# ``paper_orders``), the training records per task of the source's setup, why the method has
# no everlearn strategy, and a free note (a reprint, a disagreement between sources)
PUBLISHED_OPTIONAL = ("orders", "train_per_task", "no_strategy", "note")


@dataclass
class Task:
    name: str
    dataset: str
    paths: dict[str, str | dict[str, Any]]  # per layout: a folder, or the task's own files
    labels: list[str] = field(default_factory=list)
    instruction: str | None = None  # the key into the benchmark's ``instructions``
    metric: str | None = None  # everlearn's scorer; None: the benchmark's
    paper_metric: str | None = None
    deviation: str | None = None


@dataclass
class Benchmark:
    name: str
    title: str
    path: Path
    tasks: dict[str, Task]
    orders: dict[int, list[str]]
    layouts: dict[str, dict[str, str]]
    sources: dict[str, Any]
    metric: str | None = None
    paper_metric: str = ""
    paper_setup: str = ""
    bwt: str = "bwt"
    kind: str | None = None  # the stage kind of every task (None: sft)
    instructions: dict[str, str] = field(default_factory=dict)
    method_names: dict[str, str] = field(default_factory=dict)
    published: list[dict[str, Any]] = field(default_factory=list)
    # this file's order number -> the papers' number for the same sequence, where they differ
    paper_orders: dict[int, int] = field(default_factory=dict)

    def order(self, k: int) -> list[str]:
        if k not in self.orders:
            raise ConfigError(f"benchmark {self.name}: order: expected one of "
                              f"{', '.join(map(str, self.orders))}, got {k!r}")
        return list(self.orders[k])

    def task_metric(self, task: str) -> str | None:
        return self.tasks[task].metric or self.metric


def benchmark_files() -> list[Path]:
    return sorted(HERE.glob("*.yaml"))


def benchmark_names() -> list[str]:
    return [load_benchmark(p).name for p in benchmark_files()]


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark called ``name``; else a one-line error listing them."""
    for p in benchmark_files():
        bench = load_benchmark(p)
        if bench.name == name:
            return bench
    raise ConfigError(f"benchmark: expected one of {', '.join(benchmark_names())}, got {name!r}")


def load_benchmark(path: Path) -> Benchmark:
    """One benchmark file -> ``Benchmark``; a bad entry names the file and the field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with name, tasks, orders, layouts")
    for key in ("name", "tasks", "orders", "layouts", "sources"):
        if key not in data:
            raise ConfigError(f"{path}: {key}: missing")
    tasks = {name: _task(path, name, spec, data["layouts"])
             for name, spec in data["tasks"].items()}
    orders = {}
    for k, order in data["orders"].items():
        if not isinstance(k, int) or sorted(order) != sorted(tasks):
            raise ConfigError(f"{path}: orders.{k}: expected an integer key and a permutation "
                              "of the tasks")
        orders[k] = list(order)
    published = data.get("published") or []
    for i, entry in enumerate(published):
        _check_published(entry, f"{path}: published.{i}")
    return Benchmark(
        name=data["name"], title=data.get("title", data["name"]), path=path, tasks=tasks,
        orders=orders, layouts=data["layouts"], sources=data["sources"],
        metric=data.get("metric"), paper_metric=data.get("paper_metric", ""),
        paper_setup=data.get("paper_setup", ""), bwt=data.get("bwt", "bwt"),
        kind=data.get("kind"),
        instructions=data.get("instructions") or {},
        method_names=data.get("method_names") or {}, published=published,
        paper_orders=_paper_orders(path, data.get("paper_orders") or {}, orders))


def _paper_orders(path: Path, spec: Any, orders: dict[int, list[str]]) -> dict[int, int]:
    if not isinstance(spec, dict) or not all(k in orders and isinstance(v, int)
                                             for k, v in spec.items()):
        raise ConfigError(f"{path}: paper_orders: expected {{order: the papers' number}} for "
                          f"orders among {', '.join(map(str, orders))}")
    return dict(spec)


def _task(path: Path, name: str, spec: Any, layouts: dict) -> Task:
    where = f"{path}: tasks.{name}"
    if not isinstance(spec, dict) or not isinstance(spec.get("paths"), dict):
        raise ConfigError(f"{where}.paths: expected a folder per layout")
    unknown = set(spec["paths"]) - set(layouts)
    if unknown:
        raise ConfigError(f"{where}.paths: layouts {sorted(unknown)} are not in `layouts`")
    for layout, rel in spec["paths"].items():
        if not isinstance(rel, (str, dict)) or (isinstance(rel, dict) and "train" not in rel):
            raise ConfigError(f"{where}.paths.{layout}: expected a folder, or a mapping of "
                              "the task's files with `train`")
    return Task(name=name, dataset=str(spec.get("dataset", name)), paths=spec["paths"],
                labels=[str(x) for x in spec.get("labels") or []],
                instruction=spec.get("instruction"), metric=spec.get("metric"),
                paper_metric=spec.get("paper_metric"), deviation=spec.get("deviation"))


def _check_published(entry: Any, where: str) -> None:
    """A published number: method, model, metric, value and its source (paper and table);
    optionally the orders it averages over, the training records per task, ``no_strategy``
    (why no everlearn strategy is that method) and a note."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with {', '.join(PUBLISHED_FIELDS)}")
    for key in PUBLISHED_FIELDS:
        if key not in entry:
            raise ConfigError(f"{where}.{key}: missing")
    if not isinstance(entry["value"], (int, float)):
        raise ConfigError(f"{where}.value: expected a number, got {entry['value']!r}")
    orders = entry.get("orders")
    if orders is not None and not (isinstance(orders, list) and orders
                                   and all(isinstance(k, int) for k in orders)):
        raise ConfigError(f"{where}.orders: expected a list of order numbers, got {orders!r}")
    budget = entry.get("train_per_task")
    if budget is not None and not (isinstance(budget, int) and budget > 0):
        raise ConfigError(f"{where}.train_per_task: expected a positive integer, got {budget!r}")
    for key in ("no_strategy", "note"):
        if key in entry and not isinstance(entry[key], str):
            raise ConfigError(f"{where}.{key}: expected a string, got {entry[key]!r}")


def read_published(path: str | Path) -> list[dict[str, Any]]:
    """Published numbers from a user's YAML file (a list, or ``{published: [...]}``)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    entries = data.get("published") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(f"{p}: published: expected a list of {', '.join(PUBLISHED_FIELDS)}")
    for i, entry in enumerate(entries):
        _check_published(entry, f"{p}: published.{i}")
    return entries

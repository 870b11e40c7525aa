"""A run config checked against what is registered, and the two ways to get one.

``config`` knows the sections and their rules but no registry: the built-in tasks and suites
and the strategies import it (their option fields are ``schema`` fields), so it cannot import
them back. This module sits above both: it fills what a registry decides (a built-in task's or
suite's kind, a suite's periods), checks what only a registry knows (a suite's options,
``periods`` only with a suite), and resolves relative paths, including strategy options marked
``path``. ``build_config`` (plain data) and ``load_config`` (a YAML file or preset, plus
overrides) are the entry points; each raises a one-line ``ConfigError``. ``check_before_run``
checks what a run needs beyond the config (the model's config and tokenizer, the tracker's
package) without training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from everlearn.config import RunConfig, StageConfig
from everlearn.config_files import read_config_data
from everlearn.data.builtin import get_builtin_task
from everlearn.data.builtin.suites import get_suite
from everlearn.errors import ConfigError
from everlearn.evaluation.scorers import metric_names
from everlearn.models.source import resolve_model_name
from everlearn.schema import FieldError, build
from everlearn.stages import get_kind, kinds, kinds_with
from everlearn.strategies import STRATEGIES


def build_config(data: dict[str, Any], source: str = "<config>",
                 root: Path | None = None) -> RunConfig:
    """Validate plain data into a ``RunConfig``; errors name ``source`` and the field.
    A ``benchmark:`` entry becomes the benchmark's stages first (``root``: where a relative
    ``data_dir`` lies)."""
    data = expand_benchmark(data, source, root)
    try:
        cfg = build(RunConfig, data)
        for i, st in enumerate(cfg.stages):
            fill_from_registries(st, f"stages.{i}")
        cfg.fill()
        for i, st in enumerate(cfg.stages):
            check_kind(st, f"stages.{i}")
        cfg.check()
        check_edit_batch(cfg)
    except FieldError as exc:
        raise exc.in_file(source) from None
    return cfg


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """YAML file (or ``base`` data) + overrides -> validated ``RunConfig``.

    Relative data and model paths in the file are resolved against the file's directory, so a
    config works from any working directory (without a file, against the working directory);
    the run directory's config.yaml then holds absolute paths, and a resume needs no cwd.
    """
    data, source = read_config_data(path, overrides, base)
    root = Path(path).resolve().parent if path is not None else None
    cfg = build_config(data, source, root)
    resolve_paths(cfg, root if root is not None else Path.cwd())
    return cfg


def check_edit_batch(cfg: RunConfig) -> None:
    """``edit.batch_size`` cuts a stage's edits into batches for an editor strategy (one that
    applies edits itself); constrained fine-tuning trains a stage's edits together."""
    from everlearn.strategies import Strategy

    if cfg.edit.batch_size is None or not any(get_kind(st.kind).edits for st in cfg.stages):
        return
    if not any(STRATEGIES[s.name].apply_edits is not Strategy.apply_edits
               for s in cfg.strategies if s.name in STRATEGIES):
        raise FieldError("edit.batch_size", "applies to editor strategies (grace, wise, ...); "
                         "constrained fine-tuning trains a stage's edits together: leave it null")


def expand_benchmark(data: dict[str, Any], source: str, root: Path | None) -> dict[str, Any]:
    """``benchmark: {name, order, data_dir, train_per_task, test_per_task}`` -> the stages of
    that benchmark's order (everlearn.data.benchmarks), named after the benchmark; refused
    beside ``stages``. The resolved config keeps only the stages, an explicit stream."""
    if "benchmark" not in data:
        return data
    from everlearn.data.benchmarks.layouts import benchmark_stages

    data = dict(data)
    spec = data.pop("benchmark")
    if data.get("stages"):
        raise ConfigError(f"{source}: benchmark: expected either `benchmark` or `stages`, "
                          "not both")
    try:
        bench, data["stages"] = benchmark_stages(spec, root)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    data.setdefault("name", bench.name)
    return data


def fill_from_registries(st: StageConfig, where: str) -> None:
    """A built-in task's kind; for a suite entry (``builtin: worldline``) its kind, checked
    options and ``periods``; ``periods`` and ``builtin_options`` only with a suite."""
    suite = get_suite(st.builtin)
    if suite is None:
        for key in ("periods", "builtin_options"):
            if getattr(st, key):
                raise FieldError(f"{where}.{key}", "expected only with a built-in suite "
                                 "(e.g. builtin: worldline)")
        if st.kind is None and st.builtin:
            st.kind = _builtin_kind(st.builtin)
        return
    if st.kind not in (None, suite.kind):
        raise FieldError(f"{where}.kind", f"expected '{suite.kind}' (or nothing) for the "
                         f"{suite.name} suite, got {st.kind!r}")
    st.kind = suite.kind
    options = build(suite.Options, st.builtin_options, f"{where}.builtin_options")
    problem = options.check() if hasattr(options, "check") else None
    if problem:
        raise FieldError(f"{where}.builtin_options.{problem[0]}", problem[1])
    st.periods = suite.periods_for(options) if st.periods is None else st.periods
    if st.periods < 1:
        raise FieldError(f"{where}.periods", f"expected an integer >= 1, got {st.periods}")


def check_kind(st: StageConfig, where: str) -> None:
    """A registered kind, a registered metric its stages may be scored by, freeze_lm only
    where the kind allows it (everlearn.stages: what each kind declares; everlearn.evaluation.
    scorers: the metrics)."""
    if st.kind not in kinds():
        raise FieldError(f"{where}.kind", f"expected one of {', '.join(map(repr, kinds()))}, "
                         f"got {st.kind!r}")
    if st.metric is not None and st.metric not in metric_names():
        raise FieldError(f"{where}.metric", "expected one of "
                         f"{', '.join(map(repr, metric_names()))}, got {st.metric!r}")
    kind = get_kind(st.kind)
    if st.metric is not None and st.metric not in kind.metrics:
        owners = [k for k in kinds() if st.metric in get_kind(k).metrics]
        if len(owners) == 1 and get_kind(owners[0]).metrics == (st.metric,):  # its own kind's
            raise FieldError(f"{where}.metric", f"{st.metric} scores {owners[0]} stages only "
                             f"(this stage is {kind.name})")
        expected = (repr(kind.metrics[0]) if len(kind.metrics) == 1
                    else "one of " + ", ".join(map(repr, kind.metrics)))
        article = "an" if kind.name[0] in "aeiou" else "a"
        raise FieldError(f"{where}.metric", f"expected {expected} for {article} {kind.name} "
                         f"stage, got {st.metric!r}")
    if st.freeze_lm and not kind.freeze_lm:
        allowed = kinds_with("freeze_lm")
        raise FieldError(f"{where}.freeze_lm", "an alignment stage trains on image-text pairs: "
                         f"only for {allowed} stages (this stage is {kind.name})")


def _builtin_kind(name: str) -> str:
    """The stage kind a built-in task is made for (an unknown name is reported by the stream)."""
    try:
        return get_builtin_task(name).kind
    except KeyError:
        return "sft"


def resolve_paths(cfg: RunConfig, root: Path) -> None:
    """Relative paths (stage data, model, strategy options marked ``path``) -> absolute; a bare
    model name that exists under ``root`` too (else it is a Hub id: models.source)."""
    for spec in cfg.strategies:
        cls = STRATEGIES.get(spec.name)
        for f in dataclasses.fields(cls.Options) if cls else ():
            value = spec.options.get(f.name)
            if f.metadata.get("path") and isinstance(value, str) and value.strip() \
                    and ":" not in value:  # an empty path is the option's check's to refuse
                if not Path(value).expanduser().is_absolute():
                    spec.options[f.name] = str(root / value)
    for st in cfg.stages:
        for src in (st.train, st.test):
            if src is None:
                continue
            for split, path in src.probes.items():
                if not Path(path).is_absolute():
                    src.probes[split] = str(root / path)
            if not src.path or ":" in src.path.split("/")[0]:
                continue  # hf:..., builtin:... are not file paths
            if not Path(src.path).is_absolute():
                src.path = str(root / src.path)
    include = cfg.eval.lm_eval.include_path
    if include and not Path(include).expanduser().is_absolute():
        cfg.eval.lm_eval.include_path = str(root / include)
    cfg.model.name = resolve_model_name(cfg.model.name, root)
    if cfg.recycle is not None and cfg.recycle.new_base:
        cfg.recycle.new_base = resolve_model_name(cfg.recycle.new_base, root)


def check_before_run(cfg: RunConfig, source: str = "<config>") -> list[str]:
    """What ``run`` needs beyond a valid config, checked without training or loading weights:
    the model (and ``recycle.new_base``) has a config and tokenizer transformers can read
    (:func:`everlearn.models.source.check_model`; a Hub id only where the Hub is reachable or
    it is cached), and the tracker's package is installed. Returns a line per thing found;
    raises a one-line ModelError or ConfigError naming ``source`` and the field."""
    from everlearn.errors import ConfigError, ModelError
    from everlearn.models.source import check_model
    from everlearn.runs.tracking import check_available

    m = cfg.model
    models = [("model.name", m.name, m.revision, m.gguf_file)]
    if cfg.recycle is not None and cfg.recycle.new_base:
        models.append(("recycle.new_base", cfg.recycle.new_base, None, None))
    found = []
    for field_name, name, revision, gguf_file in models:
        try:
            found.append(f"{field_name}: " + check_model(name, revision, gguf_file,
                                                         m.trust_remote_code, field_name))
        except ModelError as exc:
            raise ModelError(f"{source}: {exc}") from None
    try:
        check_available(cfg.tracker.backend)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return found

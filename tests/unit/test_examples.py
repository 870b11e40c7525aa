"""Every config in examples/ validates: its fields, its strategies and every file it names.

``everlearn validate`` loads the config, builds the strategies and reads every stage's data.
Strategy options that name files (``general_mix.path``) are only read when a run starts, so
they are checked here as well. The commands quoted in examples/README.md and in the examples'
headers are parsed too, so their overrides stay valid."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from everlearn.cli import main
from everlearn.config_files import read_yaml
from everlearn.errors import ConfigError, DataError, EverlearnError
from everlearn.stages.stream import build_stream
from everlearn.strategies import STRATEGIES, build_strategy
from everlearn.strategies.general_mix import read_corpus
from everlearn.validation import load_config

ROOT = Path(__file__).resolve().parents[2]

EXAMPLES_DIR = ROOT / "examples"

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))

SHARED = ROOT.parent / "shared" / "data"  # benchmark data beside the repository, not in it


def needs_shared(path: Path) -> bool:
    return "shared/data" in path.read_text(encoding="utf-8")


def skip_without_shared(path: Path) -> None:
    if needs_shared(path) and not SHARED.is_dir():
        pytest.skip(f"{path.name} reads {SHARED}, which this checkout does not have")


def check_example(path: Path, overrides: list[str] | tuple[str, ...] = ()):
    """What `everlearn validate` checks, plus the files named by strategy options."""
    source = str(path)
    cfg = load_config(path, overrides)
    build_strategy(cfg.strategies, source, cfg.model.finetune)
    stream = build_stream(cfg, source)
    for i, spec in enumerate(cfg.strategies):
        for f in dataclasses.fields(STRATEGIES[spec.name].Options):
            value = spec.options.get(f.name)
            if f.metadata.get("path") and isinstance(value, str) and ":" not in value:
                assert Path(value).exists(), f"{path}: strategies.{i}.{f.name}: {value} is missing"
        if spec.name == "general_mix" and spec.options.get("path"):
            corpus = read_corpus(spec.options["path"], spec.options.get("split", "train"))
            assert corpus, f"{path}: strategies.{i}.path: no records"
    return cfg, stream


def test_the_examples_are_there():
    names = {p.name for p in EXAMPLES}
    assert {"continual_instruction_tuning.yaml", "domain_adaptive_pretraining.yaml",
            "temporal_continual_pretraining.yaml", "strategies_compared.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_everlearn_validate_accepts_example(path: Path, capsys):
    skip_without_shared(path)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ok")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_data_and_strategy_files_exist(path: Path):
    skip_without_shared(path)
    cfg, stream = check_example(path)
    assert len(stream) >= max(2, len(cfg.stages))  # a built-in suite entry makes several
    for stage in stream:
        assert stage.train and stage.test, f"{path}: {stage.name}: empty split"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_portable_and_commented(path: Path):
    """Data paths are relative to the example (no machine-specific absolute paths), and the
    file opens with comments that say what it shows."""
    assert path.read_text(encoding="utf-8").startswith("#")
    data = read_yaml(path)
    for i, stage in enumerate(data.get("stages", [])):
        for split in ("train", "test"):
            src = stage.get(split)
            p = src.get("path") if isinstance(src, dict) else src
            assert p is None or not Path(p).is_absolute(), f"stages.{i}.{split}: {p}"
    strategies = data.get("strategy", data.get("strategies", []))
    for spec in strategies if isinstance(strategies, list) else [strategies]:
        if isinstance(spec, dict) and isinstance(spec.get("path"), str):
            assert not Path(spec["path"]).is_absolute()


ACCELERATE = sorted((EXAMPLES_DIR / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_configs_load_and_are_documented(path: Path):
    """accelerate's own loader reads each launcher config; each opens with comments and is
    listed in examples/README.md and docs/distributed.md (with what it supports)."""
    from accelerate.commands.config.config_args import load_config_from_file

    assert path.read_text(encoding="utf-8").startswith("#")
    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 2 and cfg.compute_environment.name == "LOCAL_MACHINE"
    assert f"(accelerate/{path.name})" in (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    assert f"examples/accelerate/{path.name}" in (ROOT / "docs" / "distributed.md").read_text(
        encoding="utf-8")


def test_accelerate_configs_are_there():
    assert {p.name for p in ACCELERATE} == {"ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml"}


def test_readme_lists_every_example():
    readme = (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    for path in EXAMPLES:
        assert f"({path.name})" in readme, f"examples/README.md does not link {path.name}"


def _quoted_commands() -> list[tuple[str, str, list[str]]]:
    """(where, example file, overrides) of every `everlearn run|validate examples/X.yaml ...`
    in examples/README.md and in the examples' comment headers."""
    texts = {"examples/README.md": (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8")}
    texts.update({f"examples/{p.name}": p.read_text(encoding="utf-8") for p in EXAMPLES})
    found = []
    for where, text in texts.items():
        for line in text.splitlines():
            m = re.search(r"everlearn (?:run|validate|eval) (examples/\S+\.yaml)(.*)", line)
            if not m:
                continue
            args = shlex.split(m.group(2).split(" #")[0])
            overrides, skip = [], False
            for arg in args:
                if skip:
                    skip = False
                elif arg in ("--output", "-o", "--weights"):
                    skip = True
                elif "=" in arg and not arg.startswith("-"):
                    overrides.append(arg)
            found.append((where, m.group(1), overrides))
    return found


COMMANDS = _quoted_commands()


def test_commands_are_found():
    assert len(COMMANDS) >= 8
    assert any(overrides for _, _, overrides in COMMANDS)


@pytest.mark.parametrize("where,example,overrides", COMMANDS,
                         ids=[f"{w}:{' '.join(o) or e}" for w, e, o in COMMANDS])
def test_quoted_commands_are_valid(where: str, example: str, overrides: list[str]):
    path = ROOT / example
    assert path.is_file(), f"{where}: {example} does not exist"
    if needs_shared(path) and not SHARED.is_dir():
        cfg = load_config(path, overrides)  # the fields at least
        build_strategy(cfg.strategies, str(path), cfg.model.finetune)
        return
    check_example(path, overrides)


# --- the checks above must catch a broken example ----------------------------------------
def test_a_missing_stage_file_fails(tmp_path: Path):
    path = EXAMPLES_DIR / "temporal_continual_pretraining.yaml"
    with pytest.raises(DataError, match="file not found"):
        check_example(path, ["stages.1.test=data/lowmere/2022/no-such-file.txt"])
    # The same example copied elsewhere: its relative data paths now point nowhere.
    copy = tmp_path / path.name
    copy.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(DataError):
        check_example(copy)
    assert main(["validate", str(copy)]) == 2


def test_a_missing_strategy_file_fails():
    path = EXAMPLES_DIR / "domain_adaptive_pretraining.yaml"
    skip_without_shared(path)
    with pytest.raises(ConfigError, match=r"strategies\.0\.options\.path: .*no-such-corpus.txt: "
                       "file not found"):
        check_example(path, ["strategy.0.path=data/no-such-corpus.txt"])


@pytest.mark.parametrize("override,error", [
    ("train.stepz=3", ConfigError),                    # unknown field
    ("train.steps=many", ConfigError),                 # wrong type
    ("stages.0.metric=bleu", ConfigError),             # not a metric
    ("strategy.0.buffer_sise=10", ConfigError),        # unknown strategy option
    ("strategy=[no_such_method]", ConfigError),        # unknown strategy
])
def test_a_bad_field_fails(override: str, error: type[EverlearnError]):
    path = EXAMPLES_DIR / "temporal_continual_pretraining.yaml"
    with pytest.raises(error):
        check_example(path, [override])


# --- the user guide's links ------------------------------------------------------------------
DOCS = ["README.md", "docs/guide.md", "docs/data-formats.md", "examples/README.md"]


@pytest.mark.parametrize("name", DOCS)
def test_relative_links_resolve(name: str):
    """Links between the guide, the data formats, the examples and the references exist,
    and links to a heading name a heading that is there."""
    doc = ROOT / name
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.exists(), f"{name}: link to {target}: {path} does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                     for h in headings}
            assert anchor in slugs, f"{name}: link to {target}: no such heading"

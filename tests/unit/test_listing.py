"""``everlearn.listing``: the stage kinds and strategies ``everlearn ls`` prints, read from the
declarations' source without importing them, equal what the imported registries hold."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from everlearn import listing
from tests.helpers.torch_free import assert_runs_without_heavy_imports


def imported_kinds() -> list[listing.KindEntry]:
    from everlearn.stages import get_kind, kinds

    return [listing.KindEntry(k.name, k.order, k.description, tuple(k.metrics))
            for k in map(get_kind, kinds())]


def imported_strategies() -> list[listing.StrategyEntry]:
    from everlearn.schema import option_fields
    from everlearn.strategies import STRATEGIES

    return [listing.StrategyEntry(n, c.summary, option_fields(c))
            for n, c in sorted(STRATEGIES.items())]


def test_static_kinds_equal_the_registry():
    assert listing._static_kinds("everlearn.stages") == imported_kinds()
    assert [k.name for k in listing.kind_entries()] == ["sft", "cpt", "align", "edit"]


def test_static_strategies_equal_the_registry():
    """Every strategy's name, summary and options (defaults and help) read from the source are
    the imported class's: a strategy written so the reader cannot follow it fails here."""
    static = listing._Classes("everlearn.strategies").strategies()
    assert static == imported_strategies()
    assert len(static) >= 20 and {"replay", "ewc", "olora", "grace"} <= {s.name for s in static}


def test_listing_imports_no_torch():
    assert_runs_without_heavy_imports(
        "from everlearn import listing\n"
        "assert listing._static_kinds('everlearn.stages')\n"
        "assert listing._Classes('everlearn.strategies').strategies()\n"
        "assert listing.kind_entries() and listing.strategy_entries()")


@pytest.fixture
def package(tmp_path: Path, monkeypatch):
    """A throwaway package ``probepkg`` on sys.path; returns a writer of its modules."""
    root = tmp_path / "probepkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, text: str) -> None:
        (root / f"{name}.py").write_text(textwrap.dedent(text))
    return write


def test_a_kind_declared_in_a_module_is_listed(package):
    package("probe", '''
        from everlearn.stages import Kind
        KIND = Kind(name="probe", order=9, description="a test kind", metrics=("accuracy",),
                    default_metric="accuracy", read_record=None, encode=None)
    ''')
    package("first", '''
        KIND = Kind(name="first", order=1, description="d", metrics=("perplexity",))
    ''')
    assert listing._static_kinds("probepkg") == [
        listing.KindEntry("first", 1, "d", ("perplexity",)),
        listing.KindEntry("probe", 9, "a test kind", ("accuracy",))]


def test_a_strategy_with_inherited_and_schema_options_is_read(package):
    package("base", "")  # the registry's rule skips a module named base
    package("one", '''
        from dataclasses import dataclass, field
        from everlearn.strategies.base import Strategy

        @dataclass
        class OneOptions:
            alpha: float = field(default=0.5, metadata={"help": "Weight " "of it."})
            names: list = field(default_factory=list, metadata={"help": "Some names."})
            plain: int = 3

        class One(Strategy):
            name = "one"
            summary = ("first " "summary")
            Options = OneOptions

        class Helper:
            name = "not a strategy"
    ''')
    package("two", '''
        from dataclasses import dataclass
        from everlearn.schema import field
        from probepkg.one import One, OneOptions

        @dataclass
        class TwoOptions(OneOptions):
            beta: int = field(7, "Beta.", ge=0)
            alpha: float = field(0.25, "Overridden.")

        class Two(One):
            name = "two"
            Options = TwoOptions
    ''')
    one, two = listing._Classes("probepkg").strategies()
    assert one == listing.StrategyEntry("one", "first summary", [
        ("alpha", 0.5, "Weight of it."), ("names", [], "Some names."), ("plain", 3, "")])
    assert two == listing.StrategyEntry("two", "first summary", [  # summary inherited
        ("alpha", 0.25, "Overridden."), ("names", [], "Some names."), ("plain", 3, ""),
        ("beta", 7, "Beta.")])


def test_a_computed_declaration_is_not_guessed(package):
    package("calc", '''
        SUFFIX = "!"
        KIND = Kind(name="calc", order=1, description="computed" + SUFFIX, metrics=())
    ''')
    with pytest.raises(listing.NotLiteral):
        listing._static_kinds("probepkg")


def test_entries_fall_back_to_the_imported_registries(monkeypatch):
    def refuse(*args):
        raise listing.NotLiteral("computed")

    monkeypatch.setattr(listing, "_static_kinds", refuse)
    monkeypatch.setattr(listing._Classes, "strategies", refuse)
    assert listing.kind_entries() == imported_kinds()
    assert listing.strategy_entries() == imported_strategies()

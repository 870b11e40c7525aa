"""schema: plain data -> dataclasses, types and declared ranges checked, errors naming the field."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from everlearn.errors import ConfigError
from everlearn.schema import FieldError, Range, build, field, field_range


@dataclass
class Knobs:
    rate: float = field(0.1, "A rate.", gt=0, finite=True)
    count: int | None = field(None, "A count.", ge=1)
    share: float = field(0.5, "A share.", ge=0, lt=1)
    tags: list[str] = field([], "Tags.", each={"min_len": 1}, unique=True)
    plain: str = field("x", "No range.")


def error(data: dict) -> FieldError:
    with pytest.raises(FieldError) as info:
        build(Knobs, data, "knobs")
    return info.value


def test_values_in_range_build():
    k = build(Knobs, {"rate": 2, "count": None, "share": 0, "tags": ["a", "b"]})
    assert k == Knobs(rate=2.0, count=None, share=0.0, tags=["a", "b"])
    assert isinstance(k.rate, float)


@pytest.mark.parametrize("data, path, message", [
    ({"rate": 0}, "knobs.rate", "expected a positive number, got 0.0"),
    ({"rate": float("nan")}, "knobs.rate", "expected a positive number, got nan"),
    ({"rate": float("inf")}, "knobs.rate", "expected a finite number, got inf"),
    ({"count": 0}, "knobs.count", "expected an integer >= 1 or null, got 0"),
    ({"share": 1}, "knobs.share", "expected 0 <= x < 1, got 1.0"),
    ({"tags": ["a", ""]}, "knobs.tags",
     "expected a list of non-empty strings without repeats, got ['a', '']"),
    ({"tags": ["a", "a"]}, "knobs.tags",
     "expected a list of non-empty strings without repeats, got ['a', 'a']"),
    ({"count": "two"}, "knobs.count", "expected an integer or null, got 'two'"),
    ({"nope": 1}, "knobs.nope", "unknown field; expected one of count, plain, rate, share, tags"),
])
def test_errors_name_the_field_and_what_is_expected(data, path, message):
    exc = error(data)
    assert (exc.path, exc.message) == (path, message)


def test_in_file_is_a_one_line_config_error():
    exc = error({"rate": -1}).in_file("run.yaml")
    assert isinstance(exc, ConfigError)
    assert str(exc) == "run.yaml: knobs.rate: expected a positive number, got -1.0"


def test_the_range_is_kept_on_the_field_for_the_docs():
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(Knobs)}
    assert field_range(fields["rate"]) == Range(gt=0, finite=True)
    assert str(field_range(fields["rate"])) == "> 0, finite"
    assert str(field_range(fields["share"])) == ">= 0, < 1"
    assert str(field_range(fields["tags"])) == "no repeats, each not empty"
    assert field_range(fields["plain"]) is None
    assert fields["plain"].metadata["help"] == "No range."


def test_a_shorthand_expands_before_building():
    @dataclass
    class Named:
        name: str = field("", "A name.", min_len=1)

        @staticmethod
        def shorthand(value):
            return {"name": value} if isinstance(value, str) else value

    assert build(Named, "abc") == Named("abc")
    with pytest.raises(FieldError, match="expected a non-empty string, got ''"):
        build(Named, "")

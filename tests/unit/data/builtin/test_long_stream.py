"""The long_stream suite (``data.builtin.long_stream``): n stages, deterministically, and its
options."""

from __future__ import annotations

import pytest

from everlearn.errors import ConfigError
from everlearn.stages.stream import build_stream
from everlearn.validation import build_config
from tests.conftest import tiny_config


# --- the long_stream suite -----------------------------------------------------------------
def _stream(tmp_path, periods=None, seed=0, **options):
    entry = {"builtin": "long_stream", "builtin_options": options}
    if periods is not None:
        entry["periods"] = periods
    return build_stream(build_config(tiny_config(tmp_path, [entry], seed=seed)))


def _records(stream):
    return [[(r.prompt, r.response, r.options) for r in st.train + st.test] for st in stream]


def test_long_stream_expands_to_n_stages_deterministically(tmp_path):
    stream = _stream(tmp_path)
    assert len(stream) == 100
    assert stream.names[0] == "long_stream-001" and stream.names[-1] == "long_stream-100"
    assert all(st.kind == "sft" and st.metric == "accuracy" for st in stream)
    assert all(len(st.train) == 32 and len(st.test) == 8 for st in stream)
    assert _records(_stream(tmp_path)) == _records(stream)  # same seed, same stream
    assert _records(_stream(tmp_path, 7))[:7] == _records(stream)[:7]  # a prefix of it
    assert _records(_stream(tmp_path, seed=1)) != _records(stream)
    for st in stream.stages[:10]:
        labels = st.test[0].options
        assert len(labels) == 2 and all(r.options == labels for r in st.train + st.test)
        assert all(r.response in labels for r in st.train + st.test)
        assert sorted(r.response for r in st.test) == sorted(labels * 4)  # balanced
        assert not {r.prompt for r in st.train} & {r.prompt for r in st.test}
        assert all(len(r.prompt) < 40 for r in st.train)  # short prompts: cheap
    assert len({tuple(st.test[0].options) for st in stream}) > 90  # labels differ per stage


def test_long_stream_options(tmp_path):
    stream = _stream(tmp_path, 4, labels=3, train_size=12, test_size=6)
    assert [len(st.train) for st in stream] == [12] * 4
    assert all(len(st.test[0].options) == 3 for st in stream)
    with pytest.raises(ConfigError, match="builtin_options.labels"):
        _stream(tmp_path, 4, labels=5)

"""One process chooses Local; a batch splits over ranks by labelled tokens; the strategies'
declarations decide what FSDP and DeepSpeed refuse."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from everlearn.data.encode import Encoded
from everlearn.parallel import fsdp, zero
from everlearn.parallel.backend import backend_for
from everlearn.parallel.data_parallel import ShardPlan
from everlearn.parallel.local import Local
from everlearn.strategies import STRATEGIES


def _example(n_tokens: int, n_labelled: int) -> Encoded:
    labels = [-100] * (n_tokens - n_labelled) + [1] * n_labelled
    return Encoded(input_ids=[1] * n_tokens, labels=labels, record=0)


def test_one_process_trains_every_row_with_weight_one():
    acc = SimpleNamespace(num_processes=1, process_index=0)
    backend = backend_for(torch.nn.Linear(2, 2), acc)
    assert type(backend) is Local and not backend.sharded and backend.step_checkpoints
    assert backend.rows([3, 1, 2]) == ([3, 1, 2], 1.0)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert backend.cost([0, 1], {"attention_mask": mask}) == (5, 6)
    assert backend.stop(True) and not backend.stop(False)


def test_shard_plan_weights_rows_by_their_labelled_tokens():
    examples = [_example(4, 3), _example(6, 2), _example(3, 1)]  # labels[1:] count: 3, 2, 1
    rank0, rank1 = (ShardPlan(examples, False, r, 2) for r in (0, 1))
    rows0, w0 = rank0.rows([0, 1, 2])
    rows1, w1 = rank1.rows([0, 1, 2])
    assert rows0 == [0, 2] and rows1 == [1]
    assert w0 + w1 == pytest.approx(1.0) and w0 == pytest.approx(4 / 6)
    assert rank0.cost([0, 1, 2]) == (13, 2 * 4 + 1 * 6)  # rank 0 pads rows 0 and 2 to 4
    assert rank1.rows([0]) == ([0], 0.0)  # no rows of its own: the first row at weight 0


def test_parallel_refusals_come_from_the_strategies(monkeypatch):
    assert fsdp.supported() == ["der", "general_mix", "joint", "lwf", "replay", "seqft"]
    assert all(fsdp.refusal(n) is not None for n in STRATEGIES if n not in fsdp.supported())
    assert fsdp.refusal("no_such_strategy") == "it is not known to work on a sharded model"
    assert {n for n in STRATEGIES if zero.refusal(n) is not None} == {
        "agem", "alphaedit", "gem", "grace", "ilora", "memit", "migu", "rome", "wise"}

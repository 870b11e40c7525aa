"""Preference pairs for ``align`` stages: encoding, batching, sequence log-probabilities, the DPO
loss, and how preference accuracy counts a pair.

DPO (Rafailov et al. 2023): for a prompt x with a chosen answer c and a rejected answer r,

    loss = -log sigmoid(beta * ((log pi(c|x) - log ref(c|x)) - (log pi(r|x) - log ref(r|x))))

where the log-probabilities are summed over the answer tokens (the prompt goes through the chat
template like an sft prompt). The reference is the model as it entered the stage: its
log-probabilities of every training pair are computed once when the stage starts (no gradient,
batched) and kept on the pairs, so no second copy of the model is held. At the first step the
policy is the reference, so the loss starts at log 2.

A batch of B pairs is one forward pass over 2B rows: the chosen answers, then the rejected ones
in the same order. The batch keeps the usual keys (``input_ids``, ``attention_mask``, response-only
``labels``, ``record_index``), so strategy hooks see it like an sft batch, plus ``ref_logps``
(2B reference log-probabilities) and ``beta`` (one per pair).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from everlearn.data.encode import IGNORE, Encoded, Encoder, collate
from everlearn.data.readers import pair_record
from everlearn.data.records import Record
from everlearn.errors import TrainingError
from everlearn.stages import Kind
from everlearn.stages.sft import encode_responses


@dataclass
class Pair:
    """One training pair as token ids, with the reference log-probabilities once computed."""

    chosen: Encoded
    rejected: Encoded
    record: int = -1  # index of the source record in the list encoded
    beta: float = 0.1
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0

    @property
    def length(self) -> int:
        """Padded width the pair needs (batches are grouped by it)."""
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def encode_pairs(encoder: Encoder, records: list[Record], beta: float, stage: str) -> list[Pair]:
    """The pairs of an align stage; any record that is not a pair is an error, since a strategy
    that mixes instructions or raw text into an align stage has no preference to train on."""
    bad = [r for r in records if not (r.chosen and r.rejected)]
    if bad:
        kind = "raw text" if bad[0].text else "an instruction"
        raise TrainingError(
            f"stage '{stage}': {len(bad)} of its {len(records)} training records are not "
            f"preference pairs (e.g. {kind} of task '{bad[0].task}'): an align stage "
            "trains on prompt/chosen/rejected only; replay or data mixing from other stage "
            "kinds cannot join it")
    pairs = []
    for i, r in enumerate(records):
        prompt_ids = encoder.prompt_inputs(r)[0]  # BOS first where the tokenizer adds one
        chosen, rejected = (encoder.encode_pair(prompt_ids,
                                                encoder.ids(encoder.response_text(r, answer)), r)
                            for answer in (r.chosen, r.rejected))
        chosen.record = rejected.record = i
        pairs.append(Pair(chosen, rejected, i, beta))
    return pairs


def collate_pairs(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """B pairs -> one batch of 2B rows (chosen first), with reference log-probs and betas."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    batch["ref_logps"] = torch.tensor([p.ref_chosen for p in pairs] +
                                      [p.ref_rejected for p in pairs], dtype=torch.float32)
    batch["beta"] = torch.tensor([p.beta for p in pairs], dtype=torch.float32)
    return batch


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens, in fp32: shape (rows,).

    Only the labelled positions are normalised (log-softmax via logsumexp), so the memory of a
    full-vocabulary log-softmax over prompt tokens is never spent.
    """
    target = labels[:, 1:]
    mask = target != IGNORE
    rows = mask.nonzero(as_tuple=True)[0]
    picked = logits[:, :-1][mask].float()  # (labelled tokens, vocab)
    token_lp = picked.gather(-1, target[mask].unsqueeze(-1)).squeeze(-1) - picked.logsumexp(-1)
    out = torch.zeros(labels.shape[0], dtype=token_lp.dtype, device=token_lp.device)
    return out.index_add(0, rows, token_lp)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float | torch.Tensor = 0.1) -> torch.Tensor:
    """Per-pair DPO loss ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))`` (Rafailov et al.)."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin)


def batch_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean DPO loss of a batch made by :func:`collate_pairs`."""
    policy_chosen, policy_rejected = sequence_logprobs(logits, batch["labels"]).chunk(2)
    ref_chosen, ref_rejected = batch["ref_logps"].chunk(2)
    return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                    batch["beta"]).mean()


@torch.no_grad()
def fill_reference(model, pairs: list[Pair], pad_id: int, batch_size: int, device,
                   autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                   on_batch: Callable[[int], object] | None = None) -> None:
    """Set ``ref_chosen`` / ``ref_rejected`` of every pair from ``model`` as it is now
    (dropout off, batched by length)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: -pairs[i].length)
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = collate_pairs([pairs[i] for i in idx], pad_id)
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits
            logps = sequence_logprobs(logits, batch["labels"].to(device)).tolist()
            for j, i in enumerate(idx):
                pairs[i].ref_chosen, pairs[i].ref_rejected = logps[j], logps[len(idx) + j]
            if on_batch is not None:
                on_batch(len(idx))
    finally:
        model.train(was_training)


def credit(margin: float) -> float:
    """A held-out pair's share of preference accuracy: 1 when the implicit reward margin is
    above 0, 0 below, and 0.5 for an exact tie (no preference either way, like a coin flip).
    So a model scored against itself as reference, the base row, sits at chance: 50."""
    return 1.0 if margin > 0 else 0.0 if margin < 0 else 0.5


def preference_accuracy(margins: list[float]) -> float:
    """Percentage of pairs whose margin is above 0, ties counting half (see :func:`credit`)."""
    return 100.0 * sum(credit(m) for m in margins) / max(1, len(margins))


def check_pairs(split: str, records: list[Record], source: str) -> str | None:
    """Every record of an align stage, train and test, is a preference pair."""
    if any(not (r.chosen and r.rejected) for r in records):
        return (f"an align stage needs preference pairs (prompt, chosen, rejected); '{source}' "
                "has records without them")
    return None


# Outside DPO (a strategy encoding the stage's records) a pair is an instruction whose target
# is the chosen answer, so the examples are sft's.
KIND = Kind(
    name="align", order=3,
    description="preference pairs (prompt, chosen, rejected) trained with DPO",
    metrics=("preference_accuracy",), default_metric="preference_accuracy",
    read_record=pair_record, encode=encode_responses, check_records=check_pairs, loss="dpo",
)

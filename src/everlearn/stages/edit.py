"""Edit stages: the constrained fine-tuning editor, the edit metrics and their results section.

An ``edit`` stage is one batch of fact edits (records with ``prompt``, ``target_new``,
``rephrase_prompt``, ``locality_prompt``). Unless a strategy edits the model itself (``grace``,
see :mod:`everlearn.strategies.grace`), the stage fine-tunes the model on prompt -> target_new
with the constraints of Zhu et al. (2020), "Modifying Memories in Transformer Models": only the
MLP weights of the chosen layers (``edit.layers``) train, and each of them stays within an L-inf
ball of radius ``edit.max_change`` around its value when the stage started (projected after
every optimizer step).

Metrics, after every row of R, on each edit stage's edits (:func:`edit_metrics`):

* **reliability** (the stage's score in R): % of edit prompts whose target_new the model
  reproduces, judged teacher-forced: the prompt is followed by target_new's tokens and every
  one of them must be the model's top-1 prediction at its position (so greedy decoding would
  write target_new exactly, without decoding);
* **generalisation**: the same on the rephrased prompts;
* **locality**: % of locality prompts whose top-1 predictions along their answer are still
  those of the base model (the model the run started from, scored once): along
  ``locality_ground_truth`` when given, else along the base model's own greedy continuation.

The ``editing`` section of results.json pools them over every edit trained so far.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch

from everlearn.data.readers import edit_record
from everlearn.errors import TrainingError
from everlearn.stages import Kind, get_kind
from everlearn.wording import plural

# the MLP of decoder layer N: Llama/Mistral/Qwen (layers.N.mlp), GPT-2 (h.N.mlp), others
_MLP = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.(?:mlp|feed_forward|ffn)\.")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
METRICS = ("reliability", "generalisation", "locality")


def count_layers(model) -> int:
    """Decoder layers of ``model``, from its parameter names."""
    found = {int(m.group(1)) for n, _ in model.named_parameters() if (m := _LAYER.search(n))}
    return max(found) + 1 if found else 0


def resolve_layers(layers: list[int] | None, n_layers: int, where: str = "edit.layers"
                   ) -> list[int] | None:
    """Layer indices with negatives counted from the end; None stays None (every layer)."""
    if layers is None:
        return None
    out = []
    for k in layers:
        j = k + n_layers if k < 0 else k
        if not 0 <= j < n_layers:
            raise TrainingError(f"{where}: layer {k} does not exist (the model has "
                                f"{plural(n_layers, 'layer')}: 0..{n_layers - 1} or "
                                f"-{n_layers}..-1)")
        out.append(j)
    return out


def edit_parameters(model, layers: list[int] | None) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable MLP weights of ``layers`` (all layers when None), by name."""
    chosen = resolve_layers(layers, count_layers(model))
    out = []
    for name, p in model.named_parameters():
        m = _MLP.search(name)
        if p.requires_grad and m and (chosen is None or int(m.group(1)) in chosen):
            out.append((name, p))
    if not out:
        raise TrainingError(f"edit.layers: {layers if layers is not None else 'every layer'}: "
                            "no trainable MLP weights found there")
    return out


@contextlib.contextmanager
def train_only(model, keep: list[torch.nn.Parameter]) -> Iterator[None]:
    """Freeze every trainable weight of ``model`` except ``keep`` for the ``with`` block."""
    ids = {id(p) for p in keep}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


class ChangeBound:
    """|w - w0| <= bound for every element of ``params`` (w0: their values now), restored by
    projection (clamping) after each optimizer step."""

    def __init__(self, params: list[torch.nn.Parameter], bound: float):
        self.params = params
        self.bound = bound
        self.start = [p.detach().clone() for p in params]

    @torch.no_grad()
    def project(self) -> None:
        for p, w0 in zip(self.params, self.start):
            p.copy_(torch.clamp(p, w0 - self.bound, w0 + self.bound))


# --- metrics ------------------------------------------------------------------------------


def all_hit(predicted: list[int], expected: list[int]) -> bool:
    """Whether every predicted token is the expected one (and there is at least one)."""
    return bool(expected) and list(predicted) == list(expected)


def edit_metrics(reliable: list[bool], general: list[list[bool]], local: list[list[bool]]
                 ) -> dict[str, float]:
    """Side metrics of one edit stage from per-edit hits: ``reliable[i]`` for edit i's prompt,
    ``general[i]`` for each of its rephrased prompts, ``local[i]`` for each of its locality
    prompts. Percentages; a metric without prompts is left out. The counts ``n_*`` let
    :func:`editing_section` pool stages."""
    flat_g = [h for hits in general for h in hits]
    flat_l = [h for hits in local for h in hits]
    out: dict[str, float] = {"reliability": 100.0 * sum(reliable) / max(1, len(reliable)),
                             "n_edits": len(reliable)}
    if flat_g:
        out["generalisation"] = 100.0 * sum(flat_g) / len(flat_g)
    out["n_rephrase"] = len(flat_g)
    if flat_l:
        out["locality"] = 100.0 * sum(flat_l) / len(flat_l)
    out["n_locality"] = len(flat_l)
    return out


def pooled(sides: list[dict[str, float]]) -> dict[str, Any]:
    """Reliability, generalisation and locality over the union of several stages' prompts
    (weighted by their counts); None where no stage has prompts for the metric."""
    out: dict[str, Any] = {"edits": sum(int(s.get("n_edits", 0)) for s in sides)}
    for metric, count in zip(METRICS, ("n_edits", "n_rephrase", "n_locality")):
        n = sum(s.get(count, 0) for s in sides if metric in s)
        out[metric] = (sum(s[metric] * s[count] for s in sides if metric in s) / n) if n else None
    return out


def editing_section(stages, phases: list[list[str]], side_rows: list[dict]) -> dict[str, Any]:
    """results.json ``editing``: per row of R, the three metrics pooled over the edit stages
    trained so far (row 0, the base model, and rows before the first edit stage: None; a row
    that did not score every such stage, under an evaluation schedule: None too), and the
    per-stage matrices of each metric (rows x edit stages, None where not scored)."""
    names = [s.name for s in stages if get_kind(s.kind).edits]
    phase_of = {name: k for k, phase in enumerate(phases, 1) for name in phase}
    rows, matrices = [], {m: [] for m in METRICS}
    for r, side in enumerate(side_rows):
        done = [n for n in names if phase_of.get(n, len(phases) + 1) <= r]
        sides = [side.get(n) for n in done]
        rows.append(pooled(sides) if done and all(sides) else None)
        for m in METRICS:
            matrices[m].append([(side.get(n) or {}).get(m) for n in names])
    return {
        "stages": names,
        "note": "edits so far: pooled over the edit stages trained up to each row; reliability "
                "and generalisation = % of edit / rephrased prompts whose target_new is the "
                "top-1 prediction at every token (teacher-forced); locality = % of locality "
                "prompts whose top-1 predictions along their answer equal the base model's",
        "rows": rows,
        "final": rows[-1] if rows else None,
        "matrices": matrices,
    }


def encode_edits(encoder, records: list) -> list:
    """Every record with an answer is an edit: prompt -> target_new (:meth:`encode_edit`)."""
    return encoder.encode_answered(records, lambda r: encoder.encode_edit(r, r.prompt, r.response))


KIND = Kind(
    name="edit", order=4,
    description="fact edits (prompt -> target_new) by constrained fine-tuning or an editor; "
                "scored by reliability, generalisation and locality",
    metrics=("reliability",), default_metric="reliability",
    read_record=edit_record, encode=encode_edits, edits=True,
)

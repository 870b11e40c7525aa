"""The math shared by the regularisation strategies (EWC, online EWC, MAS, L2, LwF).

Pure functions on tensors and named-parameter dicts, kept apart from the hooks so that each
defining property can be tested without a training run. Conventions:

- Parameters are addressed by ``model.named_parameters()`` names and only trainable ones count
  (``requires_grad``): under LoRA these are the adapter weights, under full fine-tuning all.
- An *answer position* is a position whose logits predict a supervised token, i.e. ``t`` with
  ``labels[t + 1] != -100`` (the shift Hugging Face applies inside its loss).
- Importance estimates use per-example gradients, because the mean of squared (or absolute)
  gradients is not the square of the mean gradient: many examples at once in one batched pass
  (``per_example``), or one forward and backward per example where that cannot run.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from everlearn.data.encode import IGNORE, Encoded, collate, image_inputs
from everlearn.strategies.common import per_example as PE

Tensors = dict[str, torch.Tensor]


# --- parameters ------------------------------------------------------------------------------
def trainable(model) -> dict[str, torch.nn.Parameter]:
    """The weights training changes, by name (LoRA adapters under LoRA, all under full FT)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(params: dict[str, torch.Tensor]) -> Tensors:
    """Detached fp32 copies (anchors), on the parameters' device."""
    return {n: p.detach().to(torch.float32).clone() for n, p in params.items()}


def to_cpu(tensors: Tensors, prefix: str) -> Tensors:
    """Contiguous CPU copies with a name prefix, for a strategy's ``state_dict``."""
    return {f"{prefix}{n}": t.detach().cpu().contiguous().clone() for n, t in tensors.items()}


def from_prefixed(tensors: Tensors, prefix: str) -> Tensors:
    """The entries of a loaded state whose name starts with ``prefix`` (prefix removed)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# --- the quadratic penalty -------------------------------------------------------------------
def quadratic_penalty(params: dict[str, torch.Tensor], anchors: Tensors,
                      weights: Tensors | None = None) -> torch.Tensor:
    """``sum_i w_i (theta_i - anchor_i)^2`` over the parameters that have an anchor.

    ``weights=None`` is the unweighted squared distance (L2 to the previous weights). Anchors
    and weights are moved to the parameter's device the first time they meet it (in place, so
    the move happens once). Parameters without an anchor (added after it was taken) are free.
    """
    total = None
    for name, p in params.items():
        a = anchors.get(name)
        if a is None:
            continue
        if a.device != p.device:
            a = anchors[name] = a.to(p.device)
        diff = p.to(torch.float32) - a
        if weights is None:
            term = (diff * diff).sum()
        else:
            w = weights[name]
            if w.device != p.device:
                w = weights[name] = w.to(p.device)
            term = (w * diff * diff).sum()
        total = term if total is None else total + term
    if total is None:
        p = next(iter(params.values()), None)
        return torch.zeros((), device=p.device if p is not None else "cpu")
    return total


def decay_and_add(old: Tensors | None, new: Tensors, gamma: float) -> Tensors:
    """Online EWC's running Fisher: ``F = gamma * F_old + F_new`` (Schwarz et al. 2018)."""
    if old is None:
        return {n: t.clone() for n, t in new.items()}
    out = {}
    for n, t in new.items():
        prev = old.get(n)
        out[n] = t.clone() if prev is None else gamma * prev.to(t.device) + t
    return out


def accumulate(old: Tensors | None, new: Tensors, mode: str, count: int) -> Tensors:
    """MAS importance over stages: ``sum`` (the authors' code) or the running ``average``
    of the ``count`` stages seen including ``new``."""
    if old is None:
        return {n: t.clone() for n, t in new.items()}
    out = {}
    for n, t in new.items():
        prev = old.get(n)
        if prev is None:
            out[n] = t.clone()
        elif mode == "sum":
            out[n] = prev.to(t.device) + t
        else:
            out[n] = prev.to(t.device) * ((count - 1) / count) + t / count
    return out


# --- examples --------------------------------------------------------------------------------
def torch_seed(seed: int, stage_index: int, purpose: str) -> int:
    """A seed for a ``torch.Generator`` from (run seed, stage, purpose), stable across
    processes (unlike ``hash``), so a resumed run draws the same samples."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{stage_index}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, L-1) bool: positions whose logits predict a supervised token."""
    return labels[:, 1:] != IGNORE


def sample_examples(encoder, stage, n: int, rng: random.Random) -> list[Encoded]:
    """Up to ``n`` of the stage's own training examples (with at least one label), in a
    seeded random order, encoded like the trainer does (cpt text is packed)."""
    examples = [e for e in encoder.encode_stage(stage.kind, stage.train)
                if any(lab != IGNORE for lab in e.labels)]
    if len(examples) > n:
        examples = [examples[i] for i in sorted(rng.sample(range(len(examples)), n))]
    return examples


def single_batches(examples: Iterable[Encoded], pad_id: int, device) -> list[dict]:
    """One batch per example (per-example gradients)."""
    return [{k: v.to(device) for k, v in collate([e], pad_id).items()} for e in examples]


def _grads(loss: torch.Tensor, names: list[str], params: list[torch.Tensor]) -> Tensors:
    """d loss / d param, zeros for parameters the loss does not reach; leaves ``.grad`` alone."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {n: (torch.zeros_like(p, dtype=torch.float32) if g is None else g.to(torch.float32))
            for n, p, g in zip(names, params, grads)}


class _EvalMode:
    """Deterministic forward passes (no dropout) while importances are estimated."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def sampled_tokens(logp: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(P,) one token per row of ``logp`` (P, V) drawn from ``exp(logp)``, given ``noise``
    (P, V) of independent Exp(1) draws: ``argmax(p / noise)`` (the exponential form of the
    Gumbel-max trick, as ``torch.multinomial`` draws one sample). The noise is drawn outside,
    so the batched pass and the loop use the same draws."""
    return (logp.exp() / noise).argmax(-1)


def _fisher_objective(sample: bool) -> PE.Objective:
    """Minus the mean log-likelihood of an example's answer tokens, the tokens being sampled
    from the model (``sample``: ``extra`` is the noise) or the data's (``extra``)."""

    def nll(logits, valid, extra):
        logp = F.log_softmax(logits, dim=-1)
        target = sampled_tokens(logp.detach(), extra) if sample else extra
        ll = logp.gather(-1, target[:, None]).squeeze(-1)
        return -(ll * valid).sum() / valid.sum()

    return nll


def _mas_objective(logits, valid, extra):
    """The squared L2 norm of the answer logits, averaged over the answer positions."""
    return (logits.pow(2).sum(-1) * valid).sum() / valid.sum()


def _pad_rows(parts: list[torch.Tensor], value) -> torch.Tensor:
    """(B, P, ...) from per-example (P_i, ...) tensors, padded with ``value`` after P_i."""
    most = max(p.shape[0] for p in parts)
    out = parts[0].new_full((len(parts), most, *parts[0].shape[1:]), value)
    for k, p in enumerate(parts):
        out[k, :p.shape[0]] = p
    return out


def per_example_sum(model, params: dict[str, torch.Tensor], batches: list[dict],
                    objective: PE.Objective, extra_of, reduce, autocast=None,
                    size: int | None = None, pad=0) -> Tensors:
    """``sum_x reduce(d objective_x / d theta)`` over ``batches`` (one example each).

    ``extra_of(batch, positions)`` is called once per example, in order, for the example's own
    input to ``objective`` ((P, ...) rows, padded with ``pad`` in a chunk). Chunks of ``size``
    examples (default :func:`per_example.default_chunk`: 1 on a CPU) go through the batched
    pass; the rest, or all where it cannot run, one forward and backward each."""
    names, plist = list(params), list(params.values())
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    size = PE.default_chunk(params) if size is None else size
    batched = PE.can_batch(model, batches, size)
    with _EvalMode(model):
        start = 0
        while start < len(batches):
            part = batches[start:start + (size if batched else 1)]
            start += len(part)
            extras = [extra_of(b, PE.answer_positions(b["labels"][0])) for b in part]
            grads = None
            if batched and len(part) > 1:
                grads = PE.try_batched(model, params, PE.stack_chunk(part),
                                       _pad_rows(extras, pad), objective, autocast)
                batched = grads is not None
            if grads is not None:
                for n, g in grads.items():
                    total[n] += reduce(g.to(torch.float32)).sum(0)
                continue
            for b, extra in zip(part, extras):
                positions = PE.answer_positions(b["labels"][0])
                with autocast() if autocast is not None else contextlib.nullcontext():
                    logits = PE.answer_logits(model, b["input_ids"], positions,
                                              attention_mask=b["attention_mask"],
                                              **image_inputs(b))
                valid = torch.ones(len(positions), dtype=torch.bool, device=logits.device)
                for n, g in _grads(objective(logits, valid, extra), names, plist).items():
                    total[n] += reduce(g)
    return total


def diag_fisher(model, params: dict[str, torch.Tensor], batches: list[dict],
                sample: bool = True, generator: torch.Generator | None = None,
                autocast=None, size: int | None = None) -> Tensors:
    """Diagonal Fisher ``F_i = mean_x (d/d theta_i  log p(y | x))^2`` over ``batches`` (one
    example each), log p being the mean token log-likelihood of the answer tokens.

    ``sample=True`` draws every answer token from the model's own predictive distribution (the
    true Fisher, as in Kirkpatrick et al.); ``sample=False`` uses the data's labels (the
    empirical Fisher). Either way the result is a mean of squares, so it is non-negative.
    Per-example gradients come from the batched pass (``strategies.common.per_example``,
    chunks of ``size``) where it runs, else from one forward and backward per example.
    """
    if not batches:
        return {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    vocab = _vocab_size(model) if sample else None
    if sample and vocab is None:  # the loop, its noise drawn from the logits' shape
        objective, size = _sampled_after_forward(generator), 1

        def extra_of(batch, positions):
            return positions
    else:
        objective = _fisher_objective(sample)

        def extra_of(batch, positions):
            if not sample:
                return batch["labels"][0, positions + 1]
            noise = torch.empty((len(positions), vocab), device=positions.device)
            return noise.exponential_(1, generator=generator)

    fisher = per_example_sum(model, params, batches, objective, extra_of, lambda g: g * g,
                             autocast, size, pad=1.0 if sample else 0)
    return {n: f / len(batches) for n, f in fisher.items()}


def _vocab_size(model) -> int | None:
    """Rows of the model's output layer (the logits' width), or None where it has none."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else None


def _sampled_after_forward(generator) -> PE.Objective:
    """The sampled Fisher's objective for the loop when the vocabulary is not known in
    advance: the noise is drawn from the logits' shape (same draws as :func:`diag_fisher`)."""
    base = _fisher_objective(True)

    def nll(logits, valid, extra):
        noise = torch.empty_like(logits).exponential_(1, generator=generator)
        return base(logits, valid, noise)

    return nll


def mas_importance(model, params: dict[str, torch.Tensor], batches: list[dict],
                   autocast=None, size: int | None = None) -> Tensors:
    """MAS importance ``Omega_i = mean_x |d/d theta_i  ||F(x)||^2|`` (Aljundi et al. 2018,
    eq. 2-3): F(x) is the logits at the answer positions, squared L2 norm averaged over the
    positions. Labels only choose the positions; their values are never read (unsupervised).
    Per-example gradients as in :func:`diag_fisher`."""
    if not batches:
        return {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    def no_extra(batch, positions):
        return torch.zeros(len(positions), device=positions.device)

    omega = per_example_sum(model, params, batches, _mas_objective, no_extra, torch.abs,
                            autocast, size)
    return {n: o / len(batches) for n, o in omega.items()}


# --- distillation (LwF) ----------------------------------------------------------------------
def teacher_buckets(logits: torch.Tensor, k: int, temperature: float):
    """Compress teacher logits (P, V) into the top-``k`` tokens plus one "rest" bucket.

    Returns (idx (P, k) long, logp (P, k + 1) fp32): the log-probabilities at temperature
    ``temperature`` of the k most likely tokens and of everything else together. ``k`` is
    capped at V - 1 so the rest bucket is never empty.
    """
    logits = logits.to(torch.float32)
    k = max(1, min(k, logits.shape[-1] - 1))
    idx = logits.topk(k, dim=-1).indices
    return idx, bucket_logprobs(logits, idx, temperature)


def bucket_logprobs(logits: torch.Tensor, idx: torch.Tensor, temperature: float) -> torch.Tensor:
    """(P, k + 1) log-probabilities at ``temperature`` of the tokens ``idx`` and the rest."""
    logp = F.log_softmax(logits.to(torch.float32) / temperature, dim=-1)
    top = logp.gather(-1, idx)
    rest = torch.logsumexp(logp.scatter(-1, idx, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([top, rest], dim=-1)


def bucket_kl(teacher_logp: torch.Tensor, student_logits: torch.Tensor, idx: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """Mean over positions of KL(teacher || student) on the k + 1 buckets of the teacher.

    A proper KL between the two distributions coarsened to the same buckets: >= 0, exactly 0
    when the student equals the teacher, and a lower bound of the full-vocabulary KL.
    """
    if teacher_logp.shape[0] == 0:
        return student_logits.sum() * 0.0
    student = bucket_logprobs(student_logits, idx, temperature)
    p = teacher_logp.exp()
    kl = torch.where(p > 0, p * (teacher_logp - student), torch.zeros_like(p)).sum(-1)
    return kl.mean()

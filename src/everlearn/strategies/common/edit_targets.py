"""Keys and target values of locate-then-edit editors (ROME, MEMIT, AlphaEdit), read from and
optimised on the model itself.

* **prefixes** (ROME Sec. 3.1, Eq. 3's x_j; MEMIT's context templates): short texts the model
  writes itself (top-5 sampling, seeded, from "The", "Therefore", "Because", "I", "You"),
  each followed by ". "; the empty prefix comes first. A key is averaged over them, and a
  value is optimised so that every prefixed prompt writes the new target.
* **key** k* (ROME Eq. 3): the down-projection's input at the subject's last token (the
  record's ``subject``, found in the prompt's tokens; without one, the prompt's last token),
  averaged over the prefixes.
* **value** (ROME Eq. 4; MEMIT Eq. 16): a vector delta added at that position to a module's
  output (ROME: the MLP's, MEMIT: the last edited layer's) and optimised with Adam: the mean
  negative log-likelihood of target_new after every prefixed prompt, plus ``kl_factor`` times
  the KL divergence of the next-token distribution at the subject of "<subject> is a" from the
  unedited one (the "essence" term), plus ``weight_decay`` * ||delta||^2 / ||h||^2, where h is
  the module's output there before the edit; ||delta|| is clamped to ``clamp_norm`` * ||h||
  after every step, and the optimisation stops early once the NLL is below ``stop_loss``.
  The value is h + delta.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from everlearn.data.encode import IGNORE
from everlearn.data.records import Record
from everlearn.strategies.common.mlp_access import add_at_positions, capture_inputs

PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")


@dataclass
class EditRequest:
    """One edit: the record (for the encoder's format), its prompt, target_new and subject."""

    record: Record
    prompt: str
    target: str
    subject: str | None


@dataclass
class ValueSettings:
    steps: int
    lr: float
    kl_factor: float
    weight_decay: float
    clamp_norm: float
    stop_loss: float


def requests_of(records: list[Record]) -> list[EditRequest]:
    """The edits among ``records`` (records without an answer are not edits)."""
    return [EditRequest(r, r.prompt, r.response, (r.meta or {}).get("subject") or None)
            for r in records if r.answers]


@torch.no_grad()
def generate_prefixes(model, encoder, count: int, length: int, seed: int) -> list[str]:
    """The empty prefix and ``count`` texts of ``length`` tokens the model samples (top 5)."""
    out = [""]
    if count <= 0:
        return out
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for i in range(count):
            ids = encoder.start_ids(PREFIX_STARTS[i % len(PREFIX_STARTS)])
            start = len(ids)
            for _ in range(length):
                logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1]
                top = torch.topk(logits.float().cpu(), min(5, logits.shape[-1]))
                pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen)
                ids.append(int(top.indices[pick]))
            text = encoder.tok.decode(ids[start - 1 if start else 0:], skip_special_tokens=True)
            text = " ".join(text.replace("{", "").replace("}", "").split())
            out.append(text + ". ")
    finally:
        model.train(was_training)
    return out


def subject_position(encoder, ids: list[int], subject: str | None, prefix: str) -> int:
    """Index of the subject's last token in ``ids`` (the first token after which the decoded
    text holds the subject once more than ``prefix`` does); the last token without one."""
    if subject:
        needle = subject.lower()
        before = prefix.lower().count(needle)
        for p in range(len(ids)):
            text = encoder.tok.decode(ids[:p + 1], skip_special_tokens=True).lower()
            if text.count(needle) > before:
                return p
    return len(ids) - 1


def padded(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device)


def prompt_rows(encoder, req: EditRequest, prefixes: list[str]) -> tuple[list, list[int]]:
    """The prompt ids of ``req`` after every prefix, and the subject's position in each."""
    rows, positions = [], []
    for prefix in prefixes:
        ids = encoder.edit_prompt_ids(req.record, prefix + req.prompt)
        rows.append(ids)
        positions.append(subject_position(encoder, ids, req.subject, prefix))
    return rows, positions


@torch.no_grad()
def average_keys(model, encoder, modules: dict[int, torch.nn.Module], reqs: list[EditRequest],
                 prefixes: list[str], autocast) -> tuple[dict[int, torch.Tensor], int]:
    """Per layer, the keys of ``reqs`` (d_in x n, each averaged over the prefixes), and the
    tokens read."""
    rows, positions = [], []
    for req in reqs:
        r, p = prompt_rows(encoder, req, prefixes)
        rows += r
        positions += p
    device = next(model.parameters()).device
    ids, mask = padded(rows, encoder.pad_id, device)
    with capture_inputs(modules) as found, autocast():
        model(input_ids=ids, attention_mask=mask)
    out = {}
    at = torch.arange(len(rows))
    for layer in modules:
        keys = found[layer][0][at, torch.tensor(positions)]  # rows x d_in
        out[layer] = keys.reshape(len(reqs), len(prefixes), -1).mean(1).T.contiguous()
    return out, sum(len(r) for r in rows)


@torch.no_grad()
def outputs_at_subject(model, encoder, module: torch.nn.Module, reqs: list[EditRequest],
                       autocast) -> torch.Tensor:
    """``module``'s output at the subject's last token of every unprefixed prompt (d x n)."""
    rows, positions = [], []
    for req in reqs:
        r, p = prompt_rows(encoder, req, [""])
        rows += r
        positions += p
    ids, mask = padded(rows, encoder.pad_id, next(model.parameters()).device)
    with output_capture(module) as found, autocast():
        model(input_ids=ids, attention_mask=mask)
    return found[0][torch.arange(len(rows)), torch.tensor(positions)].T.contiguous()


@contextlib.contextmanager
def output_capture(module: torch.nn.Module):
    found: list[torch.Tensor] = []

    def hook(_module, _args, output):
        out = output[0] if isinstance(output, tuple) else output
        found.append(out.detach().float())

    handle = module.register_forward_hook(hook)
    try:
        yield found
    finally:
        handle.remove()


def value_batch(encoder, req: EditRequest, prefixes: list[str]) -> dict:
    """The sequences a value is optimised on: every prefixed prompt followed by target_new
    (labels on the target), then "<subject> is a" for the KL term (when there is a subject)."""
    rows, positions, labels = [], [], []
    for prefix in prefixes:
        ex = encoder.encode_edit(req.record, prefix + req.prompt, req.target)
        prompt_ids = encoder.edit_prompt_ids(req.record, prefix + req.prompt)
        rows.append(list(ex.input_ids))
        labels.append(list(ex.labels))
        positions.append(subject_position(encoder, prompt_ids, req.subject, prefix))
    kl_rows = 0
    if req.subject:
        ids = encoder.edit_prompt_ids(req.record, f"{req.subject} is a")
        rows.append(ids)
        labels.append([IGNORE] * len(ids))
        positions.append(subject_position(encoder, ids, req.subject, ""))
        kl_rows = 1
    return {"rows": rows, "labels": labels, "positions": positions, "kl_rows": kl_rows}


def optimise_value(model, encoder, module: torch.nn.Module, req: EditRequest,
                   prefixes: list[str], cfg: ValueSettings, autocast
                   ) -> tuple[torch.Tensor, float, int, int]:
    """(value h + delta at ``module``'s output, final NLL, steps, tokens): see the module
    docstring. The model's weights are not changed."""
    b = value_batch(encoder, req, prefixes)
    device = next(model.parameters()).device
    ids, mask = padded(b["rows"], encoder.pad_id, device)
    labels, _ = padded(b["labels"], IGNORE, device)
    targets = labels[:, 1:]
    n_kl, positions = b["kl_rows"], b["positions"]
    n_rw = len(b["rows"]) - n_kl
    with torch.no_grad(), output_capture(module) as found, autocast():
        logits0 = model(input_ids=ids, attention_mask=mask).logits.float()
    h = found[0][0, positions[0]].clone()  # the output at the unprefixed prompt's subject
    kl_ref = (torch.log_softmax(logits0[n_rw:, :][torch.arange(n_kl), positions[n_rw:]], -1)
              if n_kl else None)
    delta = torch.zeros_like(h, requires_grad=True)
    adam = torch.optim.Adam([delta], lr=cfg.lr)
    limit = cfg.clamp_norm * float(h.norm())
    nll_value, steps = float("nan"), 0
    for _ in range(cfg.steps):
        with torch.enable_grad(), add_at_positions(module, delta, positions), autocast():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        nll = token_nll(logits[:n_rw, :-1], targets[:n_rw])
        loss = nll + cfg.weight_decay * delta.pow(2).sum() / h.pow(2).sum().clamp_min(1e-12)
        if n_kl:
            cur = torch.log_softmax(logits[n_rw:][torch.arange(n_kl), positions[n_rw:]], -1)
            loss = loss + cfg.kl_factor * F.kl_div(cur, kl_ref, log_target=True,
                                                   reduction="batchmean")
        nll_value, steps = float(nll.detach()), steps + 1
        if nll_value < cfg.stop_loss:
            break
        (delta.grad,) = torch.autograd.grad(loss, [delta])  # no gradient into the weights
        adam.step()
        with torch.no_grad():
            norm = float(delta.norm())
            if limit > 0 and norm > limit:
                delta.mul_(limit / norm)
    tokens = steps * int(mask.sum())
    return (h + delta.detach()), nll_value, steps, tokens


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the mean negative log-likelihood of each row's labelled tokens."""
    logp = torch.log_softmax(logits, -1)
    keep = targets != IGNORE
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * keep
    return (-(picked.sum(-1) / keep.sum(-1).clamp_min(1))).mean()

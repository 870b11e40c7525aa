"""Dark Experience Replay++ (Buzzega et al. 2020): replay stored logits as well as labels.

The DER++ objective of the paper, for each training step:

    L = CE(stream batch) + alpha * ||z_now(x') - z_stored(x')||^2 + beta * CE(x'', y'')

with ``x'`` and ``x''`` two mini-batches drawn independently from a reservoir buffer (the paper's
Algorithm 1 uses reservoir sampling; ``selection: balanced`` is offered too).

Choices for language models, and why:

* **Compressed targets.** A full vocabulary of logits per response token is too large to keep
  (49k floats per token for SmolLM2), so each stored example keeps, per response token, the
  ``top_k`` token ids of the model's logits and the logits there (float32). Ids, values and
  per-example token counts are plain tensors in the strategy state.
* **Distillation term.** ``loss: mse`` (default) is the paper's: mean squared error between the
  current and the stored *raw logits*, restricted to the stored top-k entries (the paper argues
  logits keep information that softmax squashes). ``loss: kl`` is the usual LLM alternative:
  KL(stored || current) between the two distributions renormalised over the stored top-k ids;
  it ignores per-token shifts of the logits, which MSE penalises.
* **When targets are stored.** The paper stores ``(x, y, z)`` while training on the stream;
  here the buffer is filled at the end of each stage, with the logits of the model as it is then
  (dropout off). This is the accepted end-of-task variant: the targets are the model's best
  version of that stage, and a stage is not slowed down by storing.
* **Both buffer terms share one forward pass** (the two draws are concatenated), made inside
  ``extra_loss`` under the run's autocast; the draws come from an RNG seeded by the run seed and
  the stage, so a resumed run draws the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from everlearn.data.encode import IGNORE, image_inputs
from everlearn.errors import ResumeError
from everlearn.strategies.base import Strategy
from everlearn.strategies.common.buffer import Memory, eval_mode, record_batch, stage_rng


@dataclass
class DEROptions:
    buffer_size: int = field(default=200, metadata={"help": "Examples kept in the buffer."})
    selection: str = field(
        default="reservoir", metadata={"help": "'reservoir' (the paper's) or 'balanced'."})
    alpha: float = field(
        default=0.1, metadata={"help": "Weight of the logit-replay term (tuned per benchmark)."})
    beta: float = field(
        default=0.5, metadata={"help": "Weight of the buffer cross-entropy term (DER++; 0 = DER)."})
    top_k: int = field(
        default=8, metadata={"help": "Logits kept per response token (the top-k ids)."})
    loss: str = field(
        default="mse", metadata={"help": "'mse' on top-k logits (paper) or 'kl' on top-k."})
    batch_size: int | None = field(
        default=None, metadata={"help": "Buffer mini-batch size (default: train.batch_size)."})

    def check(self) -> tuple[str, str] | None:
        if self.buffer_size < 1:
            return "buffer_size", f"expected an integer >= 1, got {self.buffer_size}"
        if self.selection not in ("reservoir", "balanced"):
            return "selection", f"expected 'reservoir' or 'balanced', got {self.selection!r}"
        for name in ("alpha", "beta"):
            if getattr(self, name) < 0:
                return name, f"expected a number >= 0, got {getattr(self, name)}"
        if self.top_k < 1:
            return "top_k", f"expected an integer >= 1, got {self.top_k}"
        if self.loss not in ("mse", "kl"):
            return "loss", f"expected 'mse' or 'kl', got {self.loss!r}"
        if self.batch_size is not None and self.batch_size < 1:
            return "batch_size", f"expected an integer >= 1 or null, got {self.batch_size}"
        return None


# --- the math -----------------------------------------------------------------------------
def response_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logits that predict each labelled token, rows in (example, position) order: [N, V]."""
    mask = labels[:, 1:] != IGNORE
    return logits[:, :-1][mask]


def compress_logits(logits: torch.Tensor, labels: torch.Tensor, k: int):
    """Top-k (ids, values) of every response token's logits, and the token count per example."""
    sel = response_logits(logits, labels).float()
    values, ids = sel.topk(min(k, sel.shape[-1]), dim=-1)
    counts = (labels[:, 1:] != IGNORE).sum(-1)
    return ids, values, counts


def gather_topk(logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The current logits at stored top-k ids: [N, k]."""
    return response_logits(logits, labels).float().gather(-1, ids)


def distill_loss(z_now: torch.Tensor, z_stored: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """DER's logit-matching term on top-k entries: MSE on logits, or renormalised top-k KL."""
    if kind == "mse":
        return F.mse_loss(z_now, z_stored)
    p_log = torch.log_softmax(z_stored, dim=-1)
    q_log = torch.log_softmax(z_now, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens (what the model's own loss computes)."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                           labels[:, 1:].reshape(-1), ignore_index=IGNORE)


# --- the strategy -------------------------------------------------------------------------
class DER(Strategy):
    name = "der"
    summary = "Dark Experience Replay++: replay buffered examples' top-k logits and labels"
    # FSDP: its hooks only choose data or add forward passes every rank makes alike
    unsupported_parallel = {}
    paper = ("Buzzega et al. 2020, Dark Experience for General Continual Learning: "
             "a Strong, Simple Baseline (NeurIPS)")
    Options = DEROptions

    def __init__(self, options=None):
        super().__init__(options)
        self.memory = Memory(self.name, self.options.buffer_size, self.options.selection)
        # One (ids [n_i, k], values [n_i, k]) per buffer entry, aligned with memory.entries.
        self.targets: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._rng = stage_rng(None, 0, self.name, "batches")

    def setup(self, ctx):
        super().setup(ctx)
        self.memory.setup(ctx)

    def before_stage(self, stage):
        self._rng = stage_rng(self.ctx, stage.index, self.name, "batches")

    def _batch_size(self) -> int:
        return self.options.batch_size or self.ctx.config.train.batch_size

    def buffer_terms(self, model, logit_idx: list[int], label_idx: list[int]):
        """(distillation term, cross-entropy term) on the given buffer entries, one forward."""
        records = self.memory.records
        rows = [records[i] for i in logit_idx] + [records[i] for i in label_idx]
        batch = record_batch(self.ctx, rows)
        with self.ctx.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           **image_inputs(batch)).logits
        labels = batch["labels"]
        n = len(logit_idx)
        distill = ce = None
        if logit_idx:
            ids = torch.cat([self.targets[i][0] for i in logit_idx]).to(logits.device).long()
            stored = torch.cat([self.targets[i][1] for i in logit_idx]).to(logits.device)
            now = gather_topk(logits[:n], labels[:n], ids)
            distill = distill_loss(now, stored, self.options.loss)
        if label_idx:
            ce = token_cross_entropy(logits[n:], labels[n:])
        return distill, ce

    def extra_loss(self, model, batch, outputs):
        if not len(self.memory):
            return None
        opts = self.options
        size = self._batch_size()
        logit_idx = self.memory.sample(self._rng, size) if opts.alpha > 0 else []
        label_idx = self.memory.sample(self._rng, size) if opts.beta > 0 else []
        if not logit_idx and not label_idx:
            return None
        distill, ce = self.buffer_terms(model, logit_idx, label_idx)
        terms = []
        if distill is not None:
            terms.append(opts.alpha * distill)
        if ce is not None:
            terms.append(opts.beta * ce)
        return sum(terms[1:], terms[0])

    @torch.no_grad()
    def _store(self, records) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Compressed logits of ``records`` under the current model (dropout off)."""
        model = self.ctx.model
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        size = self._batch_size()
        with eval_mode(model):
            for s in range(0, len(records), size):
                batch = record_batch(self.ctx, records[s:s + size])
                with self.ctx.autocast():
                    logits = model(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"],
                                   **image_inputs(batch)).logits
                ids, values, counts = compress_logits(logits, batch["labels"], self.options.top_k)
                ids, values = ids.to(torch.int32).cpu(), values.cpu()
                start = 0
                for c in counts.tolist():
                    out.append((ids[start:start + c].clone(), values[start:start + c].clone()))
                    start += c
        return out

    def after_stage(self, stage):
        before = list(self.memory.entries)  # keeps evicted records alive while ids are compared
        known = {id(rec): t for (_, rec), t in zip(before, self.targets)}
        self.memory.add(stage)
        fresh = [rec for _, rec in self.memory.entries if id(rec) not in known]
        stored = dict(zip(map(id, fresh), self._store(fresh)))
        self.targets = [known.get(id(rec)) or stored[id(rec)] for _, rec in self.memory.entries]
        del before

    def buffer_size(self) -> int:
        return len(self.memory)

    def state_dict(self):
        k = self.options.top_k
        if self.targets:
            ids = torch.cat([t[0] for t in self.targets])
            values = torch.cat([t[1] for t in self.targets])
        else:
            ids, values = torch.zeros(0, k, dtype=torch.int32), torch.zeros(0, k)
        counts = torch.tensor([t[0].shape[0] for t in self.targets], dtype=torch.int64)
        return {"meta": {"memory": self.memory.state()},
                "tensors": {"ids": ids.contiguous(), "values": values.contiguous(),
                            "counts": counts}}

    def load_state_dict(self, state):
        self.memory.load(state["meta"].get("memory", {}))
        tensors = state.get("tensors", {})
        if "counts" not in tensors:
            self.targets = []
            return
        ids, values = tensors["ids"], tensors["values"]
        self.targets, start = [], 0
        for c in tensors["counts"].tolist():
            self.targets.append((ids[start:start + c].clone(), values[start:start + c].clone()))
            start += c
        if len(self.targets) != len(self.memory):
            raise ResumeError(f"der state: {len(self.targets)} stored targets for "
                             f"{len(self.memory)} buffered examples")

"""GEM (Lopez-Paz & Ranzato 2017): no update may increase the loss of any earlier stage.

A-GEM (``agem``) averages the earlier stages into one reference gradient; GEM keeps one
constraint per stored stage. After each backward pass the stream gradient ``g`` is compared
with the gradient ``g_k`` of each earlier stage ``k`` on its part of the episodic memory
(all flattened over the trainable weights). If some ``<g, g_k> < 0``, ``g`` is replaced by the
closest vector that conflicts with none of them, the paper's projection QP (Section 3; the
section numbers of this docstring are not checked against the paper's text):

    min_z  1/2 ||g - z||^2    s.t.  <z, g_k> >= 0  for every stored stage k,

solved in its dual (Section 3: the QP's dual and g~ = G^T v* + g, with G = -A), ``A`` the
matrix of the ``g_k`` as rows:

    min_v  1/2 v^T (A A^T) v + (A g)^T v    s.t.  v >= margin,     z = g + A^T v.

The dual has one variable per stored stage, so it is solved exactly: ``A A^T`` is factored
(eigendecomposition) and the bounded problem becomes a non-negative least squares solved by
scipy's Lawson-Hanson active set (``scipy.optimize.nnls``); the KKT conditions are then checked
to tolerance. ``margin`` is the paper's small constant gamma added to v (Section 3: a small
gamma >= 0 added to v* tilts the projection toward updates with positive backward transfer; the
authors' experiments use 0.5), applied as the lower bound, as the authors' code does. Like
their code, ``g`` passes untouched when it conflicts with no stored gradient.

Deviations: the memory keeps ``memory_size`` examples in all under replay's ``balanced`` rule
(equal slots per stage, the paper's per-task episodic memory of the most recent stages'
examples); each step draws ``sample_size`` of a stage's memory examples for ``g_k`` (the paper
uses the stage's whole memory every step; a language model pays one forward and backward pass
per stage per step already). As for A-GEM, the guarantee (first order: no stored stage's memory
loss increases) holds for the gradient handed to the optimizer; AdamW rescales it per weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from everlearn.strategies.common.gradient_memory import GradientMemoryStrategy, take_grads


@dataclass
class GEMOptions:
    memory_size: int = field(
        default=200, metadata={"help": "Examples of earlier stages kept in the episodic memory "
                                       "(in all, equal slots per stage)."})
    sample_size: int | None = field(
        default=None, metadata={"help": "Memory examples of each stored stage per step for its "
                                        "gradient (default: train.batch_size)."})
    margin: float = field(
        default=0.5, metadata={"help": "The paper's gamma: lower bound on the dual variables "
                                       "(0: the exact projection; the authors use 0.5)."})

    def check(self) -> tuple[str, str] | None:
        if self.memory_size < 1:
            return "memory_size", f"expected an integer >= 1, got {self.memory_size}"
        if self.sample_size is not None and self.sample_size < 1:
            return "sample_size", f"expected an integer >= 1 or null, got {self.sample_size}"
        if not (self.margin >= 0 and np.isfinite(self.margin)):
            return "margin", f"expected a finite number >= 0, got {self.margin}"
        return None


# --- the math -----------------------------------------------------------------------------
def solve_dual(gram: np.ndarray, ag: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The GEM dual: argmin_{v >= margin} 1/2 v^T gram v + ag^T v (``gram = A A^T``,
    ``ag = A g``), exactly, by non-negative least squares on a square root of ``gram``."""
    from scipy.optimize import nnls

    gram = np.asarray(gram, dtype=np.float64)
    t = gram.shape[0]
    q = np.asarray(ag, dtype=np.float64) + gram @ np.full(t, margin)  # v = margin + u, u >= 0
    eigval, eigvec = np.linalg.eigh((gram + gram.T) / 2)
    keep = eigval > eigval.max(initial=0.0) * 1e-12
    if not keep.any():
        return np.full(t, margin)
    root = np.sqrt(eigval[keep])
    r = root[:, None] * eigvec[:, keep].T          # gram = r^T r
    b = (eigvec[:, keep].T @ q) / root            # r^T b = q (q lies in gram's range)
    u, _ = nnls(r, -b, maxiter=50 * t + 100)      # min ||r u + b||^2, u >= 0
    return margin + u


def project_grads(grads: list[torch.Tensor | None], memory_grads: list[list[torch.Tensor | None]],
                  margin: float = 0.0) -> tuple[list[torch.Tensor | None], bool]:
    """GEM's projection of per-parameter gradients ``grads`` against each stored stage's
    ``memory_grads[k]`` (``None``: zero). Returns the new gradients and whether they changed."""
    t = len(memory_grads)
    ag = np.zeros(t)
    gram = np.zeros((t, t))
    for i, gi in enumerate(memory_grads):
        ag[i] = _dot(grads, gi)
        for j in range(i + 1):
            gram[i, j] = gram[j, i] = _dot(gi, memory_grads[j])
    if t == 0 or ag.min() >= 0:
        return list(grads), False
    v = solve_dual(gram, ag, margin)
    out = []
    for p, g in enumerate(grads):
        parts = [(float(v[k]), mg[p]) for k, mg in enumerate(memory_grads) if mg[p] is not None]
        if not parts:
            out.append(g)
            continue
        acc = g.double().clone() if g is not None else torch.zeros_like(parts[0][1],
                                                                         dtype=torch.float64)
        for coef, mg in parts:
            acc.add_(mg.double(), alpha=coef)
        out.append(acc.to((g if g is not None else parts[0][1]).dtype))
    return out, True


def _dot(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> float:
    terms = [(x.double() * y.double()).sum() for x, y in zip(a, b)
             if x is not None and y is not None]
    return float(torch.stack(terms).sum()) if terms else 0.0


# --- the strategy -------------------------------------------------------------------------
class GEM(GradientMemoryStrategy):
    name = "gem"
    summary = "GEM: solve a QP per step so no stored stage's memory gradient is opposed"
    paper = "Lopez-Paz & Ranzato 2017, Gradient Episodic Memory for Continual Learning (NeurIPS)"
    Options = GEMOptions
    details = """
After each backward pass the stream gradient g is checked against the gradient g_k of every
earlier stage k on a sample of its memory (`sample_size` examples per stage). If some
`<g, g_k> < 0`, g is replaced by the closest vector conflicting with none of them: the paper's
projection QP (Section 3, not checked), `min_z 1/2 ||g - z||^2 s.t. <z, g_k> >= 0` for all
k, solved exactly in its dual, `min_{v >= margin} 1/2 v^T (A A^T) v + (A g)^T v` with
`z = g + A^T v` (A: the g_k as rows), by non-negative least squares on a square root of
A A^T (scipy's active set).
`margin` is the paper's gamma added to v (the authors' experiments: 0.5), applied as the lower
bound as their code does. Deviations: the memory is `memory_size` examples in all, equal slots
per stage; each g_k comes from a sample of the stage's memory, not the whole of it, each step.
As with A-GEM, AdamW rescales the projected gradient per weight, so the no-conflict guarantee
holds for the gradient handed to the optimizer. Reported: steps and projected steps per stage
(`strategy_metrics.gem.projected_steps`).
"""
    unsupported_parallel = {
        "fsdp": "it projects the flattened whole-model gradient",
        "zero": "it projects the whole-model gradient, which ZeRO keeps in flat partitions",
    }

    def _stage_indices(self) -> dict[int, list[int]]:
        """Memory positions by stored stage, stages in order."""
        by_stage: dict[int, list[int]] = {}
        for i, (stage, _) in enumerate(self.memory.entries):
            by_stage.setdefault(stage, []).append(i)
        return dict(sorted(by_stage.items()))

    def stage_gradient(self, model, params, positions: list[int]) -> list[torch.Tensor | None]:
        """Gradients of the loss on a sample of the memory entries at ``positions``."""
        size = self.options.sample_size or self.ctx.config.train.batch_size
        picked = self._rng.sample(positions, min(size, len(positions)))
        records = self.memory.records
        return self.memory_gradient(model, params, [records[i] for i in picked])

    def after_backward(self, model):
        if not len(self.memory):
            return
        params = [p for p in model.parameters() if p.requires_grad]
        grads = take_grads(params)  # the stream gradient g, kept aside
        memory_grads = [self.stage_gradient(model, params, positions)
                        for positions in self._stage_indices().values()]
        new, changed = project_grads(grads, memory_grads, self.options.margin)
        for p, g in zip(params, new):
            p.grad = g
        self.count_step(changed)

    def metrics(self):
        return {"projected_steps": {k: {"steps": v[0], "projected": v[1]}
                                    for k, v in self.stats.items()}}


"""EWC, online EWC, MAS, L2 and LwF: the defining property of each, on the math and on the hooks,
and less forgetting than sequential fine-tuning on a two-stage tiny stream."""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from everlearn.data.encode import Encoded, Encoder, collate
from everlearn.data.records import Record
from everlearn.errors import ConfigError
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.stages.stream import Stage
from everlearn.strategies import build_strategy
from everlearn.strategies.base import RunContext
from everlearn.strategies.common import penalty as P
from everlearn.strategies.ewc import EWC, EWCOptions
from everlearn.strategies.l2 import L2, L2Options
from everlearn.strategies.lwf import LwF, LwFOptions
from everlearn.strategies.mas import MAS, MASOptions
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config


# --- helpers ---------------------------------------------------------------------------------
class ToyLM(nn.Module):
    """Position-wise LM: logits_t = head(tanh(emb(x_t))). ``dead`` never reaches the output,
    and embedding rows of tokens absent from the inputs get no gradient."""

    def __init__(self, vocab: int = 12, dim: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.head = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.dead = nn.Parameter(torch.randn(3, generator=g))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.tanh(self.emb[input_ids]) @ self.head.T)


def answer_inputs(batches) -> tuple[list[int], list[int]]:
    """(tokens read at answer positions, the other rows of the toy vocabulary)."""
    used = sorted({int(t) for b in batches
                   for t in b["input_ids"][:, :-1][b["labels"][:, 1:] != -100]})
    return used, [t for t in range(12) if t not in used]


def toy_batches(n: int = 5, used=range(1, 6)) -> list[dict]:
    """Single-example batches over the tokens ``used`` (prompt of 2, answer of 2 tokens)."""
    rng = random.Random(0)
    out = []
    for _ in range(n):
        ids = [rng.choice(list(used)) for _ in range(4)]
        out.append(collate([Encoded(ids, [-100, -100] + ids[2:])], pad_id=0))
    return out


def _stage(index: int, word: str, answer: str, n: int = 8) -> Stage:
    train = [Record(prompt=f"{word} question {i}", response=answer) for i in range(n)]
    return Stage(index=index, name=word, kind="sft", metric="exact_match", train=train,
                 test=train[:2])


_TINY: list = []


def _tiny_ctx(seed: int = 0) -> RunContext:
    """A fresh copy of the tiny random model (built once per module: building is slow)."""
    if not _TINY:
        tok = build_tiny_tokenizer()
        _TINY.extend([tok, build_tiny_model(tok)])
    tok, model = _TINY
    return RunContext(model=copy.deepcopy(model), tokenizer=tok, encoder=Encoder(tok, 48),
                      config=None, stream=None, seed=seed)


def _with(strategy, ctx):
    strategy.setup(ctx)
    return strategy


@torch.no_grad()
def _nudge(model, scale: float = 0.05, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))


def _loss_batch(ctx, stage) -> tuple[dict, object]:
    batch = ctx.batch(stage.train[:4])
    out = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=batch["labels"])
    return batch, out


# --- the quadratic penalty (EWC, MAS, L2) ----------------------------------------------------
def test_quadratic_penalty_is_zero_at_the_anchor_quadratic_and_weighted():
    theta = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    anchor = {"a": theta["a"].clone(), "b": theta["b"].clone()}
    fisher = {"a": torch.tensor([2.0, 0.0]), "b": torch.tensor([0.5])}
    assert P.quadratic_penalty(theta, anchor, fisher).item() == 0.0
    step = {"a": torch.tensor([0.1, 0.3]), "b": torch.tensor([-0.2])}
    pen = [P.quadratic_penalty({n: theta[n] + s * step[n] for n in theta}, anchor, fisher).item()
           for s in (1.0, 2.0, 3.0)]
    assert pen[0] == pytest.approx(2.0 * 0.1**2 + 0.5 * 0.2**2)
    assert pen[1] == pytest.approx(4 * pen[0]) and pen[2] == pytest.approx(9 * pen[0])
    # A weight with zero Fisher is free: moving it changes nothing.
    free = {"a": torch.tensor([1.0, 50.0]), "b": theta["b"]}
    assert P.quadratic_penalty(free, anchor, fisher).item() == 0.0
    # Unweighted (L2) and parameters without an anchor.
    assert P.quadratic_penalty({"a": theta["a"] + 1, "c": torch.ones(4)}, anchor).item() == 2.0


def test_online_fisher_decays_the_old_fisher_by_gamma_and_mas_accumulates():
    old, new = {"w": torch.tensor([4.0, 1.0])}, {"w": torch.tensor([1.0, 0.0])}
    assert torch.allclose(P.decay_and_add(old, new, 0.5)["w"], torch.tensor([3.0, 0.5]))
    assert torch.allclose(P.decay_and_add(None, new, 0.5)["w"], new["w"])
    assert torch.allclose(P.accumulate(old, new, "sum", 2)["w"], torch.tensor([5.0, 1.0]))
    # Running mean over 3 stages when `old` already averages 2 of them.
    assert torch.allclose(P.accumulate(old, new, "average", 3)["w"],
                          torch.tensor([3.0, 2.0 / 3.0]))


# --- Fisher and MAS importance ---------------------------------------------------------------
def test_fisher_is_the_mean_of_squared_per_example_gradients_and_zero_where_unused():
    model = ToyLM()
    params = dict(model.named_parameters())
    batches = toy_batches()
    fisher = P.diag_fisher(model, params, batches, sample=False)
    # Reference: an independent per-example loop with the model's own cross-entropy.
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    grads_sum = {n: torch.zeros_like(p) for n, p in params.items()}
    for b in batches:
        logits = model(b["input_ids"]).logits[:, :-1]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           b["labels"][:, 1:].reshape(-1))
        model.zero_grad()
        loss.backward()
        for n, p in params.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            ref[n] += g**2 / len(batches)
            grads_sum[n] += g / len(batches)
    for n in params:
        assert torch.allclose(fisher[n], ref[n], atol=1e-7), n
    assert not torch.allclose(fisher["head"], grads_sum["head"] ** 2)  # per-example, not batch
    assert all((f >= 0).all() for f in fisher.values())
    # Weights the data uses carry Fisher; weights it does not use carry none.
    used, unused = answer_inputs(batches)
    assert (fisher["emb"][used].sum(-1) > 0).all()
    assert fisher["emb"][unused].abs().sum() == 0 and fisher["dead"].abs().sum() == 0


def test_sampled_fisher_is_seeded_and_nonnegative():
    model = ToyLM()
    params = dict(model.named_parameters())

    def sampled(seed):
        return P.diag_fisher(model, params, toy_batches(),
                             generator=torch.Generator().manual_seed(seed))

    a, b, c = sampled(3), sampled(3), sampled(4)
    assert all(torch.equal(a[n], b[n]) for n in params)  # same seed, same Fisher (resume)
    assert any(not torch.equal(a[n], c[n]) for n in params)  # labels really are sampled
    assert all((f >= 0).all() for f in a.values()) and a["head"].sum() > 0
    assert a["dead"].abs().sum() == 0 and a["emb"][answer_inputs(toy_batches())[1]].sum() == 0


def test_mas_importance_is_mean_abs_gradient_unsupervised_and_zero_for_unused_weights():
    model = ToyLM()
    params = dict(model.named_parameters())
    batches = toy_batches()
    omega = P.mas_importance(model, params, batches)
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    for b in batches:
        logits = model(b["input_ids"]).logits[:, :-1][b["labels"][:, 1:] != -100]
        model.zero_grad()
        logits.pow(2).sum(-1).mean().backward()
        for n, p in params.items():
            if p.grad is not None:
                ref[n] += p.grad.abs() / len(batches)
    for n in params:
        assert torch.allclose(omega[n], ref[n], atol=1e-6), n
    assert all((o >= 0).all() for o in omega.values())
    used, unused = answer_inputs(batches)
    assert omega["dead"].abs().sum() == 0 and omega["emb"][unused].abs().sum() == 0
    assert (omega["emb"][used].sum(-1) > 0).all()
    # Unsupervised: other label values at the same positions give the same importance.
    relabelled = [{**b, "labels": torch.where(b["labels"] == -100, b["labels"], 7)}
                  for b in batches]
    again = P.mas_importance(model, params, relabelled)
    assert all(torch.equal(again[n], omega[n]) for n in params)


# --- EWC hooks -------------------------------------------------------------------------------
def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it():
    ctx = _tiny_ctx()
    ewc = _with(EWC(EWCOptions(ewc_lambda=10.0, fisher_samples=4)), ctx)
    red = _stage(1, "red", "alpha")
    batch, out = _loss_batch(ctx, red)
    assert ewc.extra_loss(ctx.model, batch, out) is None  # stage 1 trains freely
    ewc.after_stage(red)
    (idx, fisher, anchor), = ewc.terms
    assert idx == 1 and set(fisher) == set(P.trainable(ctx.model))
    assert all((f >= 0).all() for f in fisher.values())
    assert sum(f.sum() for f in fisher.values()) > 0
    assert ewc.extra_loss(ctx.model, batch, out).item() == 0.0
    _nudge(ctx.model)
    pen = ewc.extra_loss(ctx.model, batch, out)
    params = P.trainable(ctx.model)
    expected = 5.0 * sum((fisher[n] * (p.detach() - anchor[n]) ** 2).sum()
                         for n, p in params.items())
    assert pen.item() > 0 and pen.item() == pytest.approx(expected.item(), rel=1e-5)


def test_multi_penalty_ewc_keeps_a_term_per_stage_and_online_ewc_one_decayed_term():
    ctx = _tiny_ctx()
    multi = _with(EWC(EWCOptions(fisher_samples=4)), ctx)
    online = _with(EWC(EWCOptions(fisher_samples=4, online=True, gamma=0.25)), ctx)
    red, green = _stage(1, "red", "alpha"), _stage(2, "green", "bravo")
    multi.after_stage(red)
    online.after_stage(red)
    first = P.snapshot(P.trainable(ctx.model))
    _nudge(ctx.model)  # "training" stage 2
    multi.after_stage(green)
    online.after_stage(green)
    assert [t[0] for t in multi.terms] == [1, 2]
    (_, f1, a1), (_, f2, a2) = multi.terms
    assert all(torch.equal(a1[n], first[n]) for n in first)  # each stage keeps its own anchor
    assert any(not torch.equal(a2[n], first[n]) for n in first)
    assert len(online.terms) == 1
    _, f_online, a_online = online.terms[0]
    for n in f1:
        assert torch.allclose(f_online[n], 0.25 * f1[n] + f2[n])
        assert torch.equal(a_online[n], a2[n])  # one anchor: the latest weights
    batch, out = _loss_batch(ctx, green)
    params = P.trainable(ctx.model)
    lam = multi.options.ewc_lambda
    both = lam / 2 * (P.quadratic_penalty(params, a1, f1) + P.quadratic_penalty(params, a2, f2))
    assert multi.extra_loss(ctx.model, batch, out).item() == pytest.approx(both.item())


def test_regularizer_state_round_trips_to_the_same_penalty():
    ctx = _tiny_ctx()
    red = _stage(1, "red", "alpha")
    made = [_with(EWC(EWCOptions(fisher_samples=3)), ctx),
            _with(MAS(MASOptions(mas_samples=3)), ctx), _with(L2(L2Options()), ctx)]
    for s in made:
        s.after_stage(red)
    _nudge(ctx.model)
    batch, out = _loss_batch(ctx, red)
    for s in made:
        fresh = type(s)(s.options)
        fresh.load_state_dict(s.state_dict())
        want = s.extra_loss(ctx.model, batch, out)
        assert want.item() > 0
        assert torch.equal(fresh.extra_loss(ctx.model, batch, out), want), s.name


# --- MAS hooks -------------------------------------------------------------------------------
def test_mas_sums_importance_over_stages_and_pulls_to_the_latest_weights():
    ctx = _tiny_ctx()
    mas = _with(MAS(MASOptions(mas_samples=4)), ctx)
    red, green = _stage(1, "red", "alpha"), _stage(2, "green", "bravo")
    mas.after_stage(red)
    o1 = {n: t.clone() for n, t in mas.omega.items()}
    assert all((o >= 0).all() for o in o1.values()) and sum(o.sum() for o in o1.values()) > 0
    _nudge(ctx.model)
    o2 = mas.importance_of(green)
    mas.after_stage(green)
    for n in o1:
        assert torch.allclose(mas.omega[n], o1[n] + o2[n])
    batch, out = _loss_batch(ctx, green)
    assert mas.extra_loss(ctx.model, batch, out).item() == 0.0  # anchor = latest weights


# --- L2 hooks --------------------------------------------------------------------------------
def test_l2_gradient_points_back_to_the_anchor():
    ctx = _tiny_ctx()
    l2 = _with(L2(L2Options(l2_lambda=3.0)), ctx)
    red = _stage(1, "red", "alpha")
    batch, out = _loss_batch(ctx, red)
    assert l2.extra_loss(ctx.model, batch, out) is None
    l2.after_stage(red)
    anchor = P.snapshot(P.trainable(ctx.model))
    _nudge(ctx.model)
    params = P.trainable(ctx.model)
    ctx.model.zero_grad()
    l2.extra_loss(ctx.model, batch, out).backward()
    for n, p in params.items():
        assert torch.allclose(p.grad, 3.0 * (p.detach() - anchor[n]), atol=1e-6), n

    def dist():
        return sum(((p.detach() - anchor[n]) ** 2).sum() for n, p in params.items()).item()

    before = dist()
    with torch.no_grad():
        for p in params.values():
            p -= 0.1 * p.grad
    assert dist() == pytest.approx(before * 0.7**2, rel=1e-4)  # straight back to the anchor


# --- LwF -------------------------------------------------------------------------------------
def test_bucket_kl_is_zero_for_the_teacher_positive_otherwise_and_below_the_full_kl():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(7, 30, generator=g) * 3
    student = teacher + torch.randn(7, 30, generator=g)
    for T in (1.0, 2.0):
        idx, logp = P.teacher_buckets(teacher, 5, T)
        assert idx.shape == (7, 5) and logp.shape == (7, 6)
        assert torch.allclose(logp.exp().sum(-1), torch.ones(7))
        assert P.bucket_kl(logp, teacher, idx, T).abs().item() < 1e-6
        kl = P.bucket_kl(logp, student, idx, T).item()
        pt = torch.log_softmax(teacher / T, -1)
        full = (pt.exp() * (pt - torch.log_softmax(student / T, -1))).sum(-1).mean().item()
        assert 0 < kl <= full + 1e-6
    idx, logp = P.teacher_buckets(teacher, 100, 2.0)  # k capped below the vocabulary
    assert idx.shape == (7, 29)


def test_lwf_is_a_noop_in_stage_one_then_distils_the_previous_model():
    ctx = _tiny_ctx()
    lwf = _with(LwF(LwFOptions(top_k=8)), ctx)
    red, green = _stage(1, "red", "alpha"), _stage(2, "green", "bravo")
    lwf.before_stage(red)
    assert lwf.train_data(red, red.train) == red.train and not lwf.cache
    batch, out = _loss_batch(ctx, red)
    assert lwf.extra_loss(ctx.model, batch, out) is None  # no teacher in stage 1
    lwf.after_stage(red)
    lwf.before_stage(green)
    assert lwf.train_data(green, green.train) == green.train
    assert len(lwf.cache) == len(green.train)
    # Student == teacher: zero, whatever the batch order and padding.
    records = [green.train[5], Record(prompt="green question 1234567", response="bravo"),
               green.train[2]]
    batch = ctx.batch(records)
    assert batch["attention_mask"].sum(-1).tolist()[0] < batch["input_ids"].shape[1]
    ctx.model.train()
    out = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert abs(lwf.extra_loss(ctx.model, batch, out).item()) < 1e-6
    # Moved weights: positive, and a gradient step on it moves back towards the teacher.
    _nudge(ctx.model, 0.2)
    params = list(P.trainable(ctx.model).values())
    out = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    kl = lwf.extra_loss(ctx.model, batch, out)
    assert kl.item() > 1e-3
    # The trainer's sparse forward (logits at labelled positions only) gives the same KL.
    from everlearn.training.losses import labelled_token_loss

    sparse_batch = dict(batch)
    _, sparse_out, sparse_batch["logit_positions"] = labelled_token_loss(
        ctx.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert lwf.extra_loss(ctx.model, sparse_batch, sparse_out).item() == pytest.approx(
        kl.item(), rel=1e-5)
    grads = torch.autograd.grad(kl, params)
    with torch.no_grad():
        for p, gr in zip(params, grads):
            p -= 1e-2 * gr
    out = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert lwf.extra_loss(ctx.model, batch, out).item() < kl.item()
    # An input the teacher never saw is not distilled.
    other = ctx.batch([Record(prompt="blue question 0", response="charlie")])
    out = ctx.model(input_ids=other["input_ids"], attention_mask=other["attention_mask"])
    assert lwf.extra_loss(ctx.model, other, out) is None


# --- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, field", [
    ({"name": "ewc", "fisher": "true"}, "fisher"),
    ({"name": "ewc", "gamma": 1.5}, "gamma"),
    ({"name": "ewc", "fisher_samples": 0}, "fisher_samples"),
    ({"name": "mas", "accumulate": "max"}, "accumulate"),
    ({"name": "l2", "l2_lambda": -1}, "l2_lambda"),
    ({"name": "lwf", "temperature": 0}, "temperature"),
])
def test_invalid_options_name_the_field(tmp_path, spec, field):
    cfg = build_config(tiny_config(tmp_path, [constant_task(tmp_path, "red", "alpha")],
                                   strategies=[spec]))
    with pytest.raises(ConfigError, match=rf"strategies\.0\.options\.{field}:"):
        build_strategy(cfg.strategies)


# --- less forgetting than sequential fine-tuning ---------------------------------------------
STRONG = {
    "ewc": {"ewc_lambda": 10000.0, "fisher_samples": 16},
    "mas": {"mas_lambda": 0.3, "mas_samples": 16},
    "l2": {"l2_lambda": 1.0},
    "lwf": {"alpha": 1.0},
}


@pytest.fixture(scope="module")
def two_stage_runs(tmp_path_factory):
    """Stage red->alpha trained once; then green->bravo under seqft and each regulariser, from
    the same weights with the same seed. Returns {name: (old NLL, new NLL, distance moved)}."""
    from everlearn.models.loading import load_base_model, make_trainable
    from everlearn.runs.session import make_accelerator, seed_everything
    from everlearn.stages.stream import build_stream
    from everlearn.training.trainer import Trainer

    tmp = tmp_path_factory.mktemp("two_stage")
    stages = [constant_task(tmp, "red", "alpha", n_train=16),
              constant_task(tmp, "green", "bravo", n_train=16)]

    def config(spec):
        return build_config(tiny_config(tmp, stages, strategies=[spec]))

    cfg = config("seqft")
    stream = build_stream(cfg)
    red, green = stream.stages
    acc = make_accelerator("fp32")
    seed_everything(0)
    model, tok = load_base_model(cfg.model)
    model = make_trainable(model, cfg.model)
    encoder = Encoder(tok, cfg.train.max_length)

    def ctx_for(strategy):
        strategy.setup(RunContext(model=model, tokenizer=tok, encoder=encoder, config=cfg,
                                  stream=stream, seed=0, accelerator=acc))
        return strategy

    def nll(stage):
        model.eval()
        b = collate(encoder.encode_stage("sft", stage.test), encoder.pad_id)
        with torch.no_grad():
            return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         labels=b["labels"]).loss.item()

    first = ctx_for(build_strategy(cfg.strategies))
    Trainer(acc, encoder, cfg.train, first, 0, quiet=True).train_phase(model, [red], 1)
    after_red = {k: v.clone() for k, v in model.state_dict().items()}
    results = {"stage1": (nll(red), nll(green), 0.0)}
    runs = {"seqft": {"name": "seqft"}, **{n: {"name": n, **o} for n, o in STRONG.items()},
            "ewc_empirical": {"name": "ewc", **STRONG["ewc"], "fisher": "empirical"}}
    for name, spec in runs.items():
        model.load_state_dict(after_red)
        strategy = ctx_for(build_strategy(config(spec).strategies))
        strategy.after_stage(red)  # what the runner calls at the end of stage 1
        seed_everything(2)
        Trainer(acc, encoder, cfg.train, strategy, 0, quiet=True).train_phase(model, [green], 2)
        moved = sum(((p.detach() - after_red[n]) ** 2).sum()
                    for n, p in model.named_parameters()).sqrt().item()
        results[name] = (nll(red), nll(green), moved)
    return results


def test_stage_one_is_learned_and_seqft_forgets_it(two_stage_runs):
    red_nll, green_nll, _ = two_stage_runs["stage1"]
    assert red_nll < 0.5 and green_nll > 3.0
    assert two_stage_runs["seqft"][0] > 3.0  # sequential fine-tuning forgets red->alpha


@pytest.mark.parametrize("name", sorted(STRONG))
def test_regularizer_forgets_less_than_seqft_and_still_learns(two_stage_runs, name):
    old, new, moved = two_stage_runs[name]
    seq_old, _, seq_moved = two_stage_runs["seqft"]
    assert old < seq_old - 1.0  # the first stage's answers stay far more likely
    assert new < 0.5 * two_stage_runs["stage1"][1]  # and the second stage is still learned
    if name != "lwf":  # weight-space penalties keep the weights nearer the anchor
        assert moved < seq_moved


def test_sampled_fisher_protects_more_than_the_empirical_fisher(two_stage_runs):
    """Why ``fisher: sampled`` is the default: the labels of a stage the model fits well give
    near-zero gradients, so the empirical Fisher under-weights the weights that matter."""
    assert two_stage_runs["ewc"][0] < two_stage_runs["ewc_empirical"][0] - 1.0


@pytest.mark.parametrize("name", ["ewc", "mas"])
def test_no_importance_passes_after_the_last_stage(tmp_path, three_stages, name):
    from everlearn.runs.runner import Run
    from tests.conftest import tiny_config

    cfg = build_config(tiny_config(tmp_path, three_stages[:2], strategies=[
        {"name": name, "fisher_samples" if name == "ewc" else "mas_samples": 4}],
        train={"steps": 2, "precision": "fp32"}))
    run = Run(cfg, tmp_path / name, quiet=True)
    res = run.execute()
    strategy = run.strategy.members[0]
    if name == "ewc":
        assert [idx for idx, _, _ in strategy.terms] == [1]  # stage 2 is the last: no Fisher
    else:
        assert strategy.stages_seen == 1
    assert res["cost"][1]["strategy_time_s"] < res["cost"][0]["strategy_time_s"]

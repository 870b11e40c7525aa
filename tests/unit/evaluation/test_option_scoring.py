"""Option scoring (``evaluation.option_scoring``): a shared prompt scores as separate sequences do,
and the cached scoring of image prompts equals whole sequences."""

from __future__ import annotations

from pathlib import Path

import torch

from everlearn.data.builtin import get_builtin_task
from everlearn.data.encoders import make_encoder
from everlearn.evaluation.matrix import Evaluator
from everlearn.evaluation.option_scoring import score_options
from everlearn.validation import build_config
from everlearn.vision.models import build_tiny_llava
from tests.helpers.vision import tiny_vision_config


def test_shared_prompt_option_scores_equal_separate_sequences():
    """One prompt pass plus cached option passes gives each option's separate-sequence
    log-likelihood (prompts of different lengths, options of 1 to 4 tokens)."""
    from contextlib import nullcontext

    import torch

    from everlearn.evaluation.option_scoring import OptionItem, score_options
    from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, seed=3).eval()
    g = torch.Generator().manual_seed(0)
    items = [OptionItem(torch.randint(5, 200, (n,), generator=g).tolist(),
                        [torch.randint(5, 200, (m,), generator=g).tolist() for m in (1, 4, 2)])
             for n in (3, 9, 6)]
    fast = score_options(model, items, tok.pad_token_id, "cpu", nullcontext)
    for item, scored in zip(items, fast):
        for option, (lp, n) in zip(item.options, scored):
            ids = torch.tensor([item.prompt + option])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            start = len(item.prompt) - 1
            want = sum(float(logp[start + k, t]) for k, t in enumerate(option))
            assert n == len(option)
            assert abs(lp - want) < 1e-4, (lp, want)


def test_cached_option_scoring_equals_whole_sequences():
    model, processor = build_tiny_llava(seed=2)
    encoder = make_encoder(processor, 96)
    records = get_builtin_task("visual_position").generate(6, seed=0, split="test")

    class Acc:  # the evaluator's accelerator: device and autocast only
        device, process_index, num_processes = torch.device("cpu"), 0, 1
        is_local_main_process = False

        @staticmethod
        def autocast():
            import contextlib
            return contextlib.nullcontext()

    ev = Evaluator(Acc(), encoder, build_config(tiny_vision_config(Path("."), [
        {"builtin": "visual_position"}])).eval, quiet=True)
    stage = type("S", (), {"name": "pos", "kind": "sft"})()
    items = ev._option_items(stage, records)
    assert all(it.pixels is not None for it in items)
    cached = score_options(model.eval(), items, encoder.pad_id, Acc.device, Acc.autocast)
    whole = ev._options_as_sequences(model, items)
    for a, b in zip(cached, whole):
        assert [n for _, n in a] == [n for _, n in b]
        assert torch.allclose(torch.tensor([v for v, _ in a]), torch.tensor([v for v, _ in b]),
                              atol=1e-4)
    # a different image changes the scores
    other = ev._option_items(stage, records[1:2])[0]
    assert torch.tensor([v for v, _ in cached[0]]).sub(
        torch.tensor([v for v, _ in score_options(model, [other], encoder.pad_id, Acc.device,
                                                  Acc.autocast)[0]])).abs().max() > 0


def _separate(model, item, option) -> float:
    ids = torch.tensor([item.prompt + option])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    start = len(item.prompt) - 1
    return sum(float(logp[start + k, t]) for k, t in enumerate(option))


def _shape_spy(shapes: list):
    """A forward hook that notes its module's input shape; token-local, so it leaves the head
    pass on."""
    def spy(module, args, out):
        shapes.append(tuple(args[0].shape))

    spy.token_local = True
    return spy


def _items_with_a_head(head_len: int, tails=(2, 7, 4, 1)):
    from everlearn.evaluation.option_scoring import OptionItem

    g = torch.Generator().manual_seed(1)
    head = torch.randint(5, 200, (head_len,), generator=g).tolist()
    return [OptionItem(head + torch.randint(5, 200, (n,), generator=g).tolist(),
                       [torch.randint(5, 200, (m,), generator=g).tolist() for m in (1, 3)])
            for n in tails]


def test_a_shared_prompt_head_runs_once_and_scores_as_separate_sequences():
    """Prompts opening with the same 12 tokens: the head runs once (a forward of 12 tokens
    for one row), the rests on its repeated cache, padded between head and rest; every option
    still scores its separate-sequence log-likelihood, with LoRA on the model too."""
    from contextlib import nullcontext

    from peft import LoraConfig, get_peft_model

    from everlearn.evaluation.option_scoring import score_options, shared_head_length
    from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    base = build_tiny_model(tok, seed=4)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False)).eval()
    items = _items_with_a_head(12)
    assert shared_head_length([it.prompt for it in items]) == 12
    shapes = []
    handle = model.get_base_model().model.embed_tokens.register_forward_hook(_shape_spy(shapes))
    scored = score_options(model, items, tok.pad_token_id, "cpu", nullcontext)
    handle.remove()
    assert shapes[0] == (1, 12) and shapes[1] == (4, 7)  # the head alone, then the rests
    for item, per_option in zip(items, scored):
        for option, (lp, n) in zip(item.options, per_option):
            assert n == len(option)
            assert abs(lp - _separate(model, item, option)) < 1e-4


def test_a_hook_that_is_not_token_local_keeps_the_whole_prompt_pass():
    """A forward hook (a strategy's router or codebook may look at the whole input) turns the
    head pass off; a hook marked ``token_local`` does not; nor is a short head shared."""
    from contextlib import nullcontext

    from everlearn.evaluation.option_scoring import prefix_shareable, score_options
    from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, seed=4).eval()
    assert prefix_shareable(model)

    def whole_input(module, args):
        return None

    layer = model.model.layers[0]
    handle = layer.register_forward_pre_hook(whole_input)
    assert not prefix_shareable(model)
    shapes = []
    spy = model.model.embed_tokens.register_forward_hook(_shape_spy(shapes))
    score_options(model, _items_with_a_head(12), tok.pad_token_id, "cpu", nullcontext)
    assert shapes[0] == (4, 19)  # one pass over the whole prompts
    handle.remove()
    whole_input.token_local = True
    handle = layer.register_forward_pre_hook(whole_input)
    assert prefix_shareable(model)
    handle.remove()
    shapes.clear()
    score_options(model, _items_with_a_head(5), tok.pad_token_id, "cpu", nullcontext)
    spy.remove()
    assert shapes[0] == (4, 12)  # a 5-token head is below MIN_SHARED_HEAD

"""When the prompts of a batch open with the same tokens, that head can run once.

A test or training batch of one task repeats the chat template's system turn and the task's
instruction in every row: on short classification prompts, more than half of each row. A
causal LM computes each position from the positions before it, so the head's keys and values
are the same in every row; computed once (batch 1) and repeated, they give every row what its
own pass would, up to float rounding, and the rest of each row runs on top of them. This holds
only for a model that works token by token on its input (:func:`prefix_shareable`): no soft
prompt, and no hook or replaced forward that looks at the whole input, unless it declares
itself ``token_local`` (a function attribute). Option scoring
(:mod:`everlearn.evaluation.option_scoring`) and the training loss
(:mod:`everlearn.training.losses`) use it.
"""

from __future__ import annotations

MIN_SHARED_HEAD = 8  # tokens: a shorter common head is not worth a forward pass of its own


def shared_head_length(prompts: list[list[int]]) -> int:
    """The length of the token head every prompt starts with, leaving each at least one token
    after it (the last prompt token's logits score the options' first tokens)."""
    limit = min(len(p) for p in prompts) - 1
    first, n = prompts[0], 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def token_local(fn) -> bool:
    """Whether a hook or replacement forward declares that it works token by token."""
    return getattr(getattr(fn, "__func__", fn), "token_local", False)


def prefix_shareable(model) -> bool:
    """Whether a prompt's head can run apart from its rest: no PEFT soft prompt (prompt
    learning puts its own tokens in the cache) and no forward hook or replaced forward that
    does not declare itself token-local (a strategy's router, codebook or prompt may look at
    the whole input)."""
    config = getattr(model, "active_peft_config", None)
    if config is not None and getattr(config, "is_prompt_learning", False):
        return False
    for module in model.modules():
        hooks = list(module._forward_hooks.values()) + list(module._forward_pre_hooks.values())
        own = module.__dict__.get("forward")
        if own is not None:
            hooks.append(own)
        if not all(token_local(h) for h in hooks):
            return False
    return True



"""Built-in run configurations; `everlearn run` with no config runs ``quickstart``."""

from __future__ import annotations

from typing import Any


def quickstart() -> dict[str, Any]:
    """Four generated tasks on the embedded SmolLM2-135M-Instruct with LoRA and replay.

    Sized to finish in a few minutes on 2 CPU cores while showing learning on every stage and
    forgetting of earlier ones.
    """
    return {
        "name": "quickstart",
        "model": {"name": "smollm2-135m-instruct", "finetune": "lora",
                  "lora": {"r": 8, "alpha": 16}},
        "train": {"lr": 1e-3, "batch_size": 8, "steps": 30, "max_length": 96,
                  "warmup_ratio": 0.1, "schedule": "cosine"},
        "eval": {"batch_size": 32},
        "stages": [{"builtin": name, "max_train": 240, "max_test": 40}
                   for name in ("arithmetic", "cipher", "classify", "dates")],
        "strategies": [{"name": "replay", "buffer_size": 120, "mix_ratio": 0.2}],
    }


def smoke() -> dict[str, Any]:
    """The quickstart stream on the random tiny model: checks the plumbing in seconds."""
    cfg = quickstart()
    cfg.update(name="smoke", model={"name": "tiny-llama"},
               train={"lr": 1e-3, "batch_size": 8, "steps": 4, "max_length": 96,
                      "precision": "fp32"})  # bf16 autocast is slow for tiny matrices
    for st in cfg["stages"]:
        st.update(max_train=32, max_test=8)
    return cfg


def worldline() -> dict[str, Any]:
    """Continual pre-training on a fictional world whose facts change over 4 periods, on the
    embedded model with LoRA: per-split probe accuracy (invariant / updated / new facts), FUAR
    and the general-ability probes after every period (see docs/temporal.md)."""
    return {
        "name": "worldline",
        "model": {"name": "smollm2-135m-instruct", "finetune": "lora",
                  "lora": {"r": 16, "alpha": 32}},
        "train": {"lr": 2e-3, "batch_size": 8, "steps": 30, "max_length": 128,
                  "warmup_ratio": 0.1, "schedule": "cosine"},
        "eval": {"batch_size": 32, "general_probes": ["kl", "labelled"]},
        "stages": [{"builtin": "worldline", "periods": 4, "max_test": 48,
                    "builtin_options": {"people": 16, "new_people": 4, "companies": 4,
                                        "cities": 6, "roles": 6}}],
    }


def recycle() -> dict[str, Any]:
    """Recyclable tuning on the embedded model: three generated tasks, one LoRA adapter each on
    the old base; then the base is updated by continual pre-training (every weight) on new
    text - one period of the generated worldline world, scored by its cloze probes; then every
    adapter is carried over to the new base by each policy (see docs/recycling.md)."""
    cfg = quickstart()  # the same model, training and tasks, without replay and dates
    del cfg["strategies"]
    cfg["name"] = "recycle"
    cfg["stages"] = cfg["stages"][:3] + [
        {"name": "update", "builtin": "worldline", "periods": 1, "max_test": 48, "steps": 30,
         "builtin_options": {"people": 16, "companies": 4, "cities": 6, "roles": 6}}]
    cfg["recycle"] = {"policies": ["reapply", "retune", "distill", "scratch"], "update": "full",
                      "update_lr": 5e-5, "retune_steps": 8, "lr": 5e-4}
    return cfg


def benchmark_base() -> dict[str, Any]:
    """What ``everlearn run --benchmark NAME`` trains with when no config is given: the
    quickstart's model, training and evaluation settings, no stages (the benchmark's) and the
    default strategy (seqft)."""
    cfg = quickstart()
    del cfg["stages"], cfg["strategies"], cfg["name"]  # the name: the benchmark's
    return cfg


PRESETS = {
    "quickstart": ("4 built-in tasks, SmolLM2-135M-Instruct, LoRA, replay (a few minutes)",
                   quickstart),
    "smoke": ("the quickstart stream on a random tiny model (seconds)", smoke),
    "worldline": ("4 periods of a changing fictional world (cpt), FUAR and general-ability "
                  "probes, SmolLM2-135M-Instruct, LoRA", worldline),
    "recycle": ("recyclable tuning: 3 task adapters, a full cpt update of the base, then "
                "reapply / retune / distill / scratch per adapter, SmolLM2-135M-Instruct",
                recycle),
}

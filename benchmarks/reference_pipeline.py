"""A continual-learning stream run "the common way": the baseline of ``end_to_end.py``.

This is how the LLM continual-learning toolkits we know build it, and what issue 7 asks to beat:

* each stage is a fresh ``transformers.Trainer`` in fp32, the model reloaded from disk with the
  previous stage's adapter (PEFT ``save_pretrained`` / ``PeftModel.from_pretrained``);
* batches padded to the longest example (``DataCollatorForSeq2Seq``), shuffled, no grouping;
* every evaluation round reloads the base model and the latest adapter, then scores every stage
  by greedy generation (up to 8 new tokens, batches of 8, left padding) and exact match, label
  tasks included;
* ``replay`` appends stored examples of earlier stages to the new stage's training set (the
  same 20% share of the examples seen as everlearn's default ``mix_ratio``); ``ewc`` adds the
  penalty in ``Trainer.compute_loss`` with an empirical diagonal Fisher from per-example
  gradients on 64 training examples after each stage (everlearn's defaults: lambda 1000,
  64 examples; everlearn samples the labels, the common implementations use the data's).

It reads the stream (the same records, sampled by the same seed) through everlearn's config and
data readers, so both pipelines train and test on identical examples. Run by ``end_to_end.py``
as a subprocess; on its own::

    .venv/bin/python benchmarks/reference_pipeline.py CONFIG.yaml --strategy seqft --out r.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
)

from everlearn.evaluation.scoring import exact_match
from everlearn.models.loading import embedded_smollm2_dir
from everlearn.stages.stream import build_stream
from everlearn.validation import load_config

SEED = 0
REPLAY_SHARE = 0.2
EWC_LAMBDA = 1000.0
FISHER_EXAMPLES = 64


def chat_prompt(tok, prompt: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)


def tokenize(tok, record, max_length: int) -> dict:
    """Prompt (chat template) + response + EOS; loss on the response; prompt cut from the left."""
    prompt = tok(chat_prompt(tok, record.prompt), add_special_tokens=False)["input_ids"]
    answer = tok(record.response + tok.eos_token, add_special_tokens=False)["input_ids"]
    answer = answer[:max_length]
    prompt = prompt[-(max_length - len(answer)):] if len(answer) < max_length else []
    ids = prompt + answer
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": [-100] * len(prompt) + answer}


def load_model(model_dir: Path, adapter: Path | None, lora: dict, trainable: bool):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    if trainable:
        return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    return model


class CountingCollator(DataCollatorForSeq2Seq):
    """Pads to the longest example of each batch and counts the tokens that are not padding."""

    tokens = 0
    padded = 0

    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors)
        CountingCollator.tokens += int(batch["attention_mask"].sum())
        CountingCollator.padded += batch["attention_mask"].numel()
        return batch


class EWCTrainer(Trainer):
    """Trainer whose loss adds ``lambda/2 * sum_k F_k (theta - theta*_k)^2``."""

    terms: list[tuple[dict, dict]] = []

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        loss = out[0] if return_outputs else out
        penalty = 0.0
        for name, p in model.named_parameters():
            for fisher, anchor in self.terms:
                if name in fisher:
                    penalty = penalty + (fisher[name] * (p - anchor[name]) ** 2).sum()
        loss = loss + EWC_LAMBDA / 2 * penalty
        return (loss, out[1]) if return_outputs else loss


def empirical_fisher(model, examples: list[dict]) -> tuple[dict, dict]:
    """Mean squared per-example gradient of the loss, and the weights it is anchored to."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    for ex in examples:
        model.zero_grad()
        batch = {k: torch.tensor([v]) for k, v in ex.items()}
        model(**batch).loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2 / len(examples)
    model.zero_grad()
    return fisher, {n: p.detach().clone() for n, p in params.items()}


def train_stage(model, data: list[dict], tok, cfg, out_dir: str, ewc_terms) -> float:
    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=cfg.train.batch_size,
        max_steps=cfg.train.steps, learning_rate=cfg.train.lr, lr_scheduler_type="cosine",
        warmup_steps=int(round(cfg.train.warmup_ratio * cfg.train.steps)),
        max_grad_norm=cfg.train.max_grad_norm, weight_decay=cfg.train.weight_decay,
        optim="adamw_torch", use_cpu=True, report_to=[], save_strategy="no",
        logging_strategy="no", eval_strategy="no", dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True, seed=SEED)
    collator = CountingCollator(tok, padding="longest", label_pad_token_id=-100)
    trainer_cls = EWCTrainer if ewc_terms is not None else Trainer
    if ewc_terms is not None:
        EWCTrainer.terms = ewc_terms
    trainer = trainer_cls(model=model, args=args, train_dataset=data, data_collator=collator)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate_round(model_dir: Path, adapter: Path | None, lora: dict, stream, tok,
                   max_new_tokens: int, batch_size: int = 8) -> list[float]:
    """Reload, then generate and exact-match every stage's test set."""
    model = load_model(model_dir, adapter, lora, trainable=False)
    model.eval()
    tok.padding_side = "left"
    row = []
    for stage in stream.stages:
        hits = 0
        for s in range(0, len(stage.test), batch_size):
            chunk = stage.test[s:s + batch_size]
            enc = tok([chat_prompt(tok, r.prompt) for r in chunk], return_tensors="pt",
                      padding=True, add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            for r, out in zip(chunk, gen[:, enc["input_ids"].shape[1]:]):
                hits += exact_match(tok.decode(out, skip_special_tokens=True).strip(), r.answers)
        row.append(100.0 * hits / max(1, len(stage.test)))
    tok.padding_side = "right"
    return row


def run(config: Path, strategy: str, max_new_tokens: int) -> dict:
    cfg = load_config(config)
    stream = build_stream(cfg, str(config))
    model_dir = embedded_smollm2_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lora = {"r": cfg.model.lora.r, "lora_alpha": cfg.model.lora.alpha,
            "lora_dropout": cfg.model.lora.dropout, "target_modules": "all-linear"}
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    R, cost, buffer, ewc_terms = [], [], [], ([] if strategy == "ewc" else None)
    e0 = time.perf_counter()
    base_row = evaluate_round(model_dir, None, lora, stream, tok, max_new_tokens)
    eval_s = [time.perf_counter() - e0]
    adapter = None
    with tempfile.TemporaryDirectory() as work:
        for stage in stream.stages:
            s0 = time.perf_counter()
            model = load_model(model_dir, adapter, lora, trainable=True)
            data = [tokenize(tok, r, cfg.train.max_length) for r in stage.train]
            if strategy == "replay" and buffer:
                k = round(REPLAY_SHARE / (1 - REPLAY_SHARE) * len(data))
                data += rng.sample(buffer, min(k, len(buffer)))
            CountingCollator.tokens = CountingCollator.padded = 0
            train_s = train_stage(model, data, tok, cfg, f"{work}/trainer", ewc_terms)
            tokens, padded = CountingCollator.tokens, CountingCollator.padded
            x0 = time.perf_counter()
            if ewc_terms is not None:
                ewc_terms.append(empirical_fisher(model, rng.sample(data[:len(stage.train)], min(
                    FISHER_EXAMPLES, len(stage.train)))))
            if strategy == "replay":
                buffer += [tokenize(tok, r, cfg.train.max_length) for r in stage.train]
            strategy_s = time.perf_counter() - x0
            adapter = Path(work) / f"stage{stage.index}"
            model.save_pretrained(adapter)
            del model
            e0 = time.perf_counter()
            R.append(evaluate_round(model_dir, adapter, lora, stream, tok, max_new_tokens))
            eval_s.append(time.perf_counter() - e0)
            cost.append({"stage": stage.name, "train_time_s": train_s, "strategy_time_s":
                         strategy_s, "eval_time_s": eval_s[-1], "tokens": tokens,
                         "tokens_per_s": tokens / train_s, "padding": 1 - tokens / padded,
                         "wall_time_s": time.perf_counter() - s0})
    return {"strategy": strategy, "R": R, "base": base_row, "cost": cost,
            "base_eval_time_s": eval_s[0], "wall_time_s": time.perf_counter() - t0,
            "stages": [s.name for s in stream.stages]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path, help="the stream (an everlearn config)")
    p.add_argument("--strategy", choices=["seqft", "replay", "ewc"], default="seqft")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = run(args.config, args.strategy, args.max_new_tokens)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

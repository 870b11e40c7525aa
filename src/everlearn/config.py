"""Run configuration: dataclasses whose fields carry their own docs, YAML in, resolved YAML out.

Every field has ``metadata={"help": ...}`` so the docs and ``--help`` can be generated from the
code. ``load_config`` turns YAML (plus ``key=value`` overrides) into a validated ``RunConfig``;
any problem raises ``ConfigError`` with one line naming the file, the field and what is expected.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from everlearn.errors import ConfigError


def _f(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A dataclass field with a help text (mutable defaults go through ``default_factory``)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


StageKind = Literal["sft", "cpt", "align", "edit"]
MetricName = Literal["accuracy", "exact_match", "rouge_l", "perplexity", "preference_accuracy",
                     "reliability"]


@dataclass
class LoraConfig:
    """LoRA adapter settings, passed to PEFT."""

    r: int = _f(8, "LoRA rank.")
    alpha: int = _f(16, "LoRA scaling numerator (scale = alpha / r).")
    dropout: float = _f(0.0, "Dropout on the LoRA input.")
    target_modules: Union[str, list[str]] = _f(
        "all-linear", "Modules that get adapters: 'all-linear' or a list of module names."
    )


@dataclass
class VisionConfig:
    """Vision-language models (docs/multimodal.md): the parts instruction stages train."""

    train_projector: bool = _f(
        True, "Instruction stages train the projector (whole, also under LoRA) with the "
        "language model, as LLaVA's visual instruction tuning does.")
    train_vision_tower: bool = _f(
        False, "Instruction stages also train the vision tower (whole). Alignment stages "
        "(freeze_lm) always train the tower and projector.")


@dataclass
class ModelConfig:
    """Which causal LM to load and how to make it trainable."""

    name: str = _f(
        "smollm2-135m-instruct",
        "Embedded name (see `everlearn ls`), Hugging Face id, local directory or .gguf file.",
    )
    gguf_file: str | None = _f(None, "GGUF file name inside `name` when `name` is a directory.")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) for a Hub id.")
    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32", "Dtype the weights are held in (compute precision is `train.precision`)."
    )
    finetune: Literal["lora", "full"] = _f("lora", "Train LoRA adapters or all weights.")
    lora: LoraConfig = _f(None, "LoRA settings (used when finetune is 'lora').")
    trust_remote_code: bool = _f(False, "Allow model code from the Hub (off: safer).")
    chat_template: Literal["auto", "never"] = _f(
        "auto", "Wrap instruction data in the tokenizer's chat template when it has one."
    )
    vision: VisionConfig = _f(None, "Vision-language models: what instruction stages train.")

    def __post_init__(self) -> None:
        if self.lora is None:
            self.lora = LoraConfig()
        if self.vision is None:
            self.vision = VisionConfig()


@dataclass
class TrainConfig:
    """The training loop, shared by every stage unless a stage overrides steps or epochs."""

    lr: float = _f(2e-4, "Peak learning rate (re-warmed at each stage).")
    batch_size: int = _f(8, "Examples per optimizer micro-batch.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    steps: int | None = _f(40, "Optimizer steps per stage (takes precedence over epochs).")
    epochs: float | None = _f(None, "Epochs per stage, used when steps is null.")
    warmup_ratio: float = _f(0.1, "Fraction of each stage's steps spent warming up.")
    schedule: Literal["cosine", "linear", "constant"] = _f(
        "cosine", "Learning-rate decay after warm-up."
    )
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float | None = _f(1.0, "Gradient clipping norm (null: no clipping).")
    max_length: int = _f(128, "Token cutoff per example (and block size for cpt packing).")
    precision: Literal["auto", "bf16", "fp32"] = _f(
        "auto", "Compute precision: auto = bf16 autocast where the hardware supports it."
    )
    group_by_length: bool = _f(True, "Batch examples of similar length to avoid padding waste.")
    nonfinite_loss: Literal["stop", "skip"] = _f(
        "stop", "A NaN or infinite loss: stop the stage with an error (earlier results kept), "
        "or skip that batch and count it in the cost (skipped_batches)."
    )
    checkpoint_every: int = _f(
        0, "Write a step checkpoint every this many optimizer steps inside a stage (0: off; "
        "stage checkpoints are written either way). It holds the trainable weights, the "
        "optimizer, learning-rate schedule, RNG and batch-order state and the strategies' "
        "in-stage state, so `--resume` continues mid-stage exactly; only the latest is kept. "
        "Ctrl-C or SIGTERM during training writes one at the next step boundary, also when 0. "
        "Not under DeepSpeed (docs/distributed.md)."
    )


@dataclass
class DataSource:
    """Where a split comes from. In YAML a plain string is shorthand for ``{path: ...}``."""

    path: str = _f("", "File, directory, or `hf:<dataset name or saved directory>` (built-in "
                   "tasks: the stage's `builtin`).")
    format: Literal["auto", "jsonl", "json", "superni", "text", "hf"] = _f(
        "auto", "File format; auto guesses from the path and content."
    )
    split: str | None = _f(None, "Split name for Hugging Face datasets.")
    fields: dict[str, str] = _f(
        {}, "Field mapping record-field -> source-field, e.g. {prompt: question}."
    )


@dataclass
class StageConfig:
    """One stage of the stream: what to train on and how to score it."""

    name: str = _f("", "Stage name (unique; defaults to the task or file name).")
    kind: StageKind | None = _f(
        None, "sft = instruction -> response; cpt = raw text, packed; align = preference pairs "
        "(prompt, chosen, rejected), DPO loss; edit = one batch of fact edits (prompt, "
        "target_new, rephrase_prompt, locality_prompt; see `edit` and docs/editing.md). "
        "Default: the built-in task's kind, else sft.")
    train: DataSource | None = _f(None, "Training data.")
    test: DataSource | None = _f(None, "Test data (builtin tasks and files may share a path).")
    builtin: str | None = _f(None, "A built-in generated task (see `everlearn ls`).")
    metric: MetricName | None = _f(
        None, "Scorer. Default: accuracy when labels are set or the answers form a small closed "
        "set (a classification task), perplexity for cpt, preference_accuracy for align, "
        "reliability for edit, the built-in task's metric, else exact_match.")
    labels: list[str] = _f([], "Label options for scoring by log-likelihood (accuracy).")
    task_id: str | None = _f(None, "Task identifier (used by task-incremental strategies).")
    max_train: int | None = _f(None, "Sample at most this many training records (by seed).")
    max_test: int | None = _f(None, "Sample at most this many test records (by seed).")
    periods: int | None = _f(
        None, "Periods of a built-in suite (`builtin: worldline`): the entry becomes this many "
        "stages, NAME-01 .. NAME-N (default: the suite's, 4 for worldline, 100 for "
        "long_stream, the number of tasks for visual_shapes, whose stages are NAME-<task>).")
    builtin_options: dict[str, Any] = _f(
        {}, "Options of a built-in suite, e.g. {people: 24, change_rate: 0.25} (see `everlearn "
        "ls` and docs/temporal.md).")
    steps: int | None = _f(None, "Override train.steps for this stage.")
    lr: float | None = _f(None, "Override train.lr for this stage (e.g. a higher one for an "
                          "alignment stage that trains a vision encoder from scratch).")
    epochs: float | None = _f(None, "Override train.epochs for this stage.")
    beta: float = _f(0.1, "DPO temperature of an align stage: the loss is -log sigmoid(beta * "
                     "margin of policy-to-reference log-ratios).")
    freeze_lm: bool = _f(
        False, "Vision-language models: an alignment stage that trains only the vision tower "
        "and projector, the language model frozen (LLaVA's feature alignment, on captions such "
        "as `builtin: visual_captions`; docs/multimodal.md). sft stages only.")


@dataclass
class StrategySpec:
    """One continual-learning strategy and its options (validated by the strategy)."""

    name: str = _f("seqft", "Strategy name (see `everlearn ls`).")
    options: dict[str, Any] = _f({}, "Strategy options, e.g. {buffer_size: 200}.")


@dataclass
class LmEvalConfig:
    """lm-evaluation-harness tasks as general-ability probes (optional: needs `pip install
    lm_eval` and each task's data on disk or in the local Hugging Face datasets cache)."""

    tasks: list[str] = _f(
        [], "Task (or group) names measured on every row of R beside `general_probes`, e.g. "
        "[arc_easy, hellaswag] when their data is cached locally, or tasks defined by YAML files "
        "in `include_path` (empty: off). Each task's first metric ('acc' when it has one) is "
        "reported in percent with its delta against the base row.")
    include_path: str | None = _f(
        None, "Directory of extra task YAML files (relative to the config file).")
    limit: int | None = _f(None, "Examples per task (default: all).")
    num_fewshot: int | None = _f(None, "Few-shot examples per prompt (default: the task's).")


@dataclass
class EvalConfig:
    """Evaluation after every stage."""

    batch_size: int = _f(16, "Examples per evaluation batch.")
    max_new_tokens: int | None = _f(
        None, "Generation cap; default = longest tokenised test answer + 4."
    )
    length_normalize: bool = _f(
        False, "Rank label options by mean instead of summed token log-likelihood."
    )
    general_probes: list[Literal["kl", "labelled"]] = _f(
        [], "General-ability probes after every stage (vertical forgetting; empty: off): 'kl' = "
        "KL(base || current) along the base model's greedy answers to built-in general prompts "
        "and the rate of unchanged greedy answers; 'labelled' = accuracy on built-in general "
        "questions the base model answers correctly. See docs/temporal.md.")
    general_max_new_tokens: int = _f(
        16, "Length cap of the greedy answers the 'kl' probe follows and compares.")
    lm_eval: LmEvalConfig = _f(None, "lm-evaluation-harness tasks as further general probes "
                               "(docs/temporal.md).")
    every: int | None = _f(
        None, "Evaluation schedule for long streams: a full row of R (every stage scored) after "
        "every k-th phase and always after the last; the rows in between score only the stages "
        "just trained and the next phase's (the cells LA, BWT and FWT need), plus "
        "`sample_earlier`. Default (null): every row full (the whole matrix), or only the last "
        "when `sample_earlier` is set. Unscored cells are null in results.json.")
    sample_earlier: int | None = _f(
        None, "On rows that are not full, also score this many stages trained before the phase, "
        "drawn from the run seed and the row (0: none; null: no sampling, every row full unless "
        "`every` is set). AP_t then averages the scored stages (the rows are listed in "
        "`ap_estimated`) and forgetting's max runs over the scored rows.")

    def __post_init__(self):
        self.lm_eval = self.lm_eval or LmEvalConfig()


@dataclass
class TrackerConfig:
    """Experiment tracking through accelerate (``tracker: NAME`` is short for ``backend: NAME``)."""

    backend: Literal["none", "tensorboard", "mlflow", "wandb"] = _f(
        "none", "Tracker: none (off), tensorboard, mlflow or wandb (each needs its package: "
        "pip install 'everlearn[trackers]' for the first two, wandb for W&B). Logs training "
        "loss and learning rate every `log_every` steps and, after each phase, the row of R, "
        "AP so far and the phase's cost, against the run's optimizer step.")
    dir: str | None = _f(
        None, "tensorboard: event-file directory (default RUN_DIR/tensorboard); mlflow: "
        "tracking URI (sqlite:///..., http://..., file:...) or a directory for a local file "
        "store (default MLFLOW_TRACKING_URI, else RUN_DIR/mlruns); wandb: local files "
        "directory (default RUN_DIR). Relative paths are from the working directory.")
    project: str | None = _f(
        None, "MLflow experiment / W&B project name (default: the run name).")
    log_every: int = _f(10, "Log training loss and learning rate every this many steps.")


@dataclass
class EditConfig:
    """Edit stages (``kind: edit``): how their prompts are written and how the default editor,
    constrained fine-tuning, trains. The `grace` strategy edits through a codebook instead
    (docs/editing.md)."""

    format: Literal["raw", "chat"] = _f(
        "raw", "How an edit is written: raw = the prompt, a space, target_new (cloze style, as "
        "EasyEdit and CounterFact do; no chat template, no end-of-turn); chat = the prompt as "
        "a user turn and target_new as the assistant's whole answer (chat template).")
    layers: list[int] | None = _f(
        None, "Constrained fine-tuning: decoder layers whose MLP weights an edit stage trains "
        "(0-based; negative counts from the end, -1 = last); every other weight is frozen "
        "during edit stages. Null: the MLPs of every layer. With LoRA, the LoRA weights inside "
        "those MLPs.")
    max_change: float | None = _f(
        None, "Constrained fine-tuning: L-inf bound on how far each trained weight may move "
        "during one edit stage, abs(w - w_entering_the_stage) <= max_change, enforced by "
        "projection after every optimizer step (Zhu et al. 2020). Null: unbounded. Needs "
        "model.finetune: full.")
    lr: float | None = _f(None, "Learning rate of edit stages (default: train.lr).")


RecyclePolicy = Literal["reapply", "retune", "distill", "scratch"]


@dataclass
class RecycleConfig:
    """Recyclable tuning (a run with a `recycle` section; see docs/recycling.md): one LoRA adapter
    per sft stage on the old base, then the base is updated (the last stage, `cpt`, or
    `new_base`) and every adapter is carried over to the new base by each policy."""

    policies: list[RecyclePolicy] = _f(
        ["reapply", "retune", "distill", "scratch"],
        "Policies compared per adapter: reapply = the old adapter's weights on the new base as "
        "they are; retune = start from the old adapter, train `retune_steps` on the task; "
        "distill = train an adapter on the new base to match the old base + adapter (KL on the "
        "answer tokens of the adapter's own training inputs); scratch = a fresh adapter trained "
        "with the stage's full budget. reapply is measured in any case (one evaluation).")
    new_base: str | None = _f(
        None, "A new base checkpoint of the same architecture and tokenizer (local directory, "
        ".gguf file or Hub id) instead of a last `cpt` stage.")
    update: Literal["full", "lora"] = _f(
        "full", "How the last `cpt` stage updates the base: full = every weight trains (the "
        "vendor's continual pre-training); lora = a LoRA adapter trained and merged into the "
        "base weights.")
    update_lr: float | None = _f(
        None, "Learning rate of the base update (default: train.lr).")
    retune_steps: int | None = _f(
        None, "Optimizer steps of retune (default: a quarter of the adapter's own budget, at "
        "least 1).")
    distill_steps: int | None = _f(
        None, "Optimizer steps of distill (default: as retune).")
    lr: float | None = _f(
        None, "Peak learning rate of retune and distill, which start from a trained adapter "
        "(default: train.lr; scratch always uses train.lr).")
    distill_init: Literal["old", "fresh"] = _f(
        "old", "Where distill starts: the old adapter's weights, or a fresh adapter.")
    distill_task_weight: float = _f(
        0.0, "Weight of the task loss (on the data's answers) added to distill's KL; 0: "
        "distillation alone, the data's answers are not read.")
    temperature: float = _f(1.0, "Softmax temperature of distill's teacher and student.")
    top_k: int = _f(
        50, "Teacher tokens kept per answer position (the rest is one bucket), for distill and "
        "for the kl_to_old measure.")


@dataclass
class BoundaryConfig:
    """Where a text stream's boundaries fall (``boundaries: none`` is short for ``{mode: none}``).
    Strategies that act between stages (EWC's Fisher, LwF's teacher, replay's buffer, a new
    inc_lora adapter, merging) act at each boundary, and R gets a row there."""

    mode: Literal["fixed", "detector", "none"] = _f(
        "fixed", "fixed = a boundary every `every_tokens` stream tokens; detector = where the "
        "shift detector fires on the training loss (docs/temporal.md#the-shift-detector); "
        "none = no boundary, one segment (strategies never see a stage end).")
    every_tokens: int | None = _f(
        None, "fixed: stream tokens between boundaries; a multiple of train.max_length (the "
        "block size), so every boundary falls exactly on a block edge.")
    window: int = _f(
        8, "detector: chunks (optimizer steps) in the reference window the loss is standardised "
        "against; also the shortest segment, in chunks.")
    threshold: float = _f(
        5.0, "detector: the CUSUM of standardised loss increases that places a boundary (h).")
    drift: float = _f(
        0.5, "detector: standard deviations subtracted from every chunk's score before it is "
        "summed (k); rises smaller than this are ignored.")
    min_std: float = _f(
        0.05, "detector: floor on the reference window's standard deviation, in nats, so a "
        "flat loss does not turn noise into large scores.")
    direction: Literal["up", "both"] = _f(
        "up", "detector: up = only a rise of the loss places a boundary (text the model "
        "predicts worse); both = a sudden fall as well (a second sum; learning also lowers the "
        "loss, so more false alarms are possible).")


@dataclass
class TextStreamConfig:
    """A boundary-free text stream (docs/temporal.md#a-stream-without-task-boundaries): the cpt
    stages' training text, in stage order, is one continuous token stream trained on once, in
    order, in chunks of train.batch_size x train.grad_accum blocks of train.max_length tokens
    (one optimizer step per chunk). The stages stay the columns of R (perplexity on each one's
    held-out text); the rows of R are the stream's boundaries."""

    token_budget: int | None = _f(
        None, "Stream tokens trained on in total: the stream is cut after this many (null: the "
        "whole stream).")
    boundaries: BoundaryConfig = _f(None, "Where boundaries fall: fixed, detector or none.")

    def __post_init__(self) -> None:
        if self.boundaries is None:
            self.boundaries = BoundaryConfig()


@dataclass
class RunConfig:
    """A whole continual-learning run."""

    name: str = _f("run", "Run name, used for the run directory.")
    output_dir: str = _f("runs", "Parent directory of run directories.")
    seed: int = _f(0, "Seed for sampling, shuffling and initialisation.")
    scenario: Literal["TIL", "DIL", "CIL"] = _f(
        "TIL", "TIL: task id known at test time; DIL: shifting domain, no task id; CIL: the "
        "label options of all label stages pooled at test time, no task id."
    )
    model: ModelConfig = _f(None, "The model.")
    train: TrainConfig = _f(None, "The training loop.")
    eval: EvalConfig = _f(None, "Evaluation.")
    stages: list[StageConfig] = _f([], "The ordered stages of the stream.")
    strategies: list[StrategySpec] = _f([], "Strategies, composed in order (default: seqft).")
    keep_stage_weights: Literal["auto", "all", "last"] = _f(
        "auto", "Keep trainable weights of every stage or only the last (auto: all for LoRA)."
    )
    tracker: TrackerConfig = _f(None, "Experiment tracker (off by default).")
    edit: EditConfig = _f(None, "Edit stages: prompt format and the constrained fine-tuning "
                          "editor (docs/editing.md).")
    recycle: RecycleConfig | None = _f(
        None, "Recyclable tuning instead of a continual stream (`recycle: {}` for the defaults; "
        "see docs/recycling.md): per-task adapters on the old base, a base update, and each "
        "adapter carried over to the new base by every policy.")

    text_stream: TextStreamConfig | None = _f(
        None, "Train the cpt stages as one boundary-free token stream instead of stage by stage "
        "(`text_stream: {}` for the defaults; see docs/temporal.md).")

    def __post_init__(self) -> None:
        self.model = self.model or ModelConfig()
        self.train = self.train or TrainConfig()
        self.eval = self.eval or EvalConfig()
        self.tracker = self.tracker or TrackerConfig()
        self.edit = self.edit or EditConfig()
        if not self.strategies:
            self.strategies = [StrategySpec()]


# ---------------------------------------------------------------------------------------------
# Building typed dataclasses from plain YAML data, naming the field on any error.


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _Mismatch(Exception):
    """Raised inside conversion; carries the dotted path of the offending field."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except _Mismatch as exc:
                errors.append(exc)
        # Prefer the error from deepest inside a structure (most specific).
        deepest = max(errors, key=lambda e: len(e.path))
        if deepest.path != path:
            raise deepest
        raise _Mismatch(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise _Mismatch(path, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch(path, f"expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch(path, f"expected a mapping, got {value!r}")
        _, val_tp = get_args(tp)
        return {str(k): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            value = _yaml11_float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch(path, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug in this module


def _shorthand(cls: type, value: Any) -> Any:
    """Accept the YAML shorthands users write: a string for a data source or strategy."""
    if cls is DataSource and isinstance(value, str):
        return {"path": value}
    if cls is StrategySpec and isinstance(value, str):
        return {"name": value}
    if cls is TrackerConfig and isinstance(value, str):
        return {"backend": value}
    if cls is BoundaryConfig and isinstance(value, str):
        return {"mode": value}
    if cls is StrategySpec and isinstance(value, dict) and "options" not in value:
        value = dict(value)
        name = value.pop("name", None)
        return {"name": name, "options": value} if name is not None else value
    return value


def _yaml11_float(text: str) -> float | str:
    """Numbers like ``1e-3`` that YAML 1.1 leaves as strings; other text is returned as is."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _build(cls: type, value: Any, path: str) -> Any:
    value = _shorthand(cls, value)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _Mismatch(path, f"expected a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise _Mismatch(where, f"unknown field; expected one of {', '.join(sorted(names))}")
    kwargs = {}
    for key, raw in value.items():
        sub = f"{path}.{key}" if path else key
        kwargs[key] = _convert(raw, hints[key], sub)
    return cls(**kwargs)


def _check_suite(st: StageConfig, p: str) -> None:
    """A built-in suite entry (``builtin: worldline``): its kind, ``periods`` and options."""
    from everlearn.data.builtin.suites import get_suite  # here: the suites import this module

    suite = get_suite(st.builtin)
    if suite is None:
        if st.periods is not None:
            raise _Mismatch(f"{p}.periods", "expected only with a built-in suite "
                            "(e.g. builtin: worldline)")
        if st.builtin_options:
            raise _Mismatch(f"{p}.builtin_options", "expected only with a built-in suite "
                            "(e.g. builtin: worldline)")
        return
    if st.kind not in (None, suite.kind):
        raise _Mismatch(f"{p}.kind", f"expected '{suite.kind}' (or nothing) for the "
                        f"{suite.name} suite, got {st.kind!r}")
    st.kind = suite.kind
    options = _build(suite.Options, st.builtin_options, f"{p}.builtin_options")
    problem = options.check() if hasattr(options, "check") else None
    if problem:
        raise _Mismatch(f"{p}.builtin_options.{problem[0]}", problem[1])
    st.periods = suite.periods_for(options) if st.periods is None else st.periods
    if st.periods < 1:
        raise _Mismatch(f"{p}.periods", f"expected an integer >= 1, got {st.periods}")


def _is_plain_name(name: str) -> bool:
    """A run name names a directory under ``output_dir``: a name, never a path out of it."""
    return (bool(name.strip()) and name not in (".", "..") and "/" not in name
            and "\\" not in name and not Path(name).is_absolute())


def _check_semantics(cfg: RunConfig) -> None:
    """Checks that need more than types: ranges and cross-field rules."""

    def need(ok: bool, path: str, message: str) -> None:
        if not ok:
            raise _Mismatch(path, message)

    need(_is_plain_name(cfg.name), "name",
         f"expected a run name (not empty, no '/', not '.' or '..'), got {cfg.name!r}")
    t = cfg.train
    need(t.lr > 0, "train.lr", f"expected a positive number, got {t.lr}")
    need(math.isfinite(t.lr), "train.lr", f"expected a finite number, got {t.lr}")
    need(t.batch_size >= 1, "train.batch_size", f"expected an integer >= 1, got {t.batch_size}")
    need(t.grad_accum >= 1, "train.grad_accum", f"expected an integer >= 1, got {t.grad_accum}")
    need(t.checkpoint_every >= 0, "train.checkpoint_every",
         f"expected an integer >= 0 (0: off), got {t.checkpoint_every}")
    need(t.max_length >= 8, "train.max_length", f"expected an integer >= 8, got {t.max_length}")
    need(0 <= t.warmup_ratio < 1, "train.warmup_ratio",
         f"expected 0 <= x < 1, got {t.warmup_ratio}")
    need(
        t.steps is not None or t.epochs is not None,
        "train.steps",
        "expected steps or epochs to be set",
    )
    need(cfg.eval.batch_size >= 1, "eval.batch_size", "expected an integer >= 1")
    need(cfg.tracker.log_every >= 1, "tracker.log_every",
         f"expected an integer >= 1, got {cfg.tracker.log_every}")
    need(cfg.eval.general_max_new_tokens >= 1, "eval.general_max_new_tokens",
         f"expected an integer >= 1, got {cfg.eval.general_max_new_tokens}")
    need(cfg.eval.every is None or cfg.eval.every >= 1, "eval.every",
         f"expected an integer >= 1 or null, got {cfg.eval.every}")
    need(cfg.eval.sample_earlier is None or cfg.eval.sample_earlier >= 0, "eval.sample_earlier",
         f"expected an integer >= 0 or null, got {cfg.eval.sample_earlier}")
    lm = cfg.eval.lm_eval
    need(lm.limit is None or lm.limit >= 1, "eval.lm_eval.limit",
         f"expected an integer >= 1 or null, got {lm.limit}")
    need(lm.num_fewshot is None or lm.num_fewshot >= 0, "eval.lm_eval.num_fewshot",
         f"expected an integer >= 0 or null, got {lm.num_fewshot}")
    need(not lm.tasks or importlib.util.find_spec("lm_eval") is not None, "eval.lm_eval.tasks",
         "lm-evaluation-harness is not installed: expected `pip install lm_eval`, or tasks: []")
    need(cfg.model.lora.r >= 1, "model.lora.r", f"expected an integer >= 1, got {cfg.model.lora.r}")
    need(bool(cfg.stages), "stages", "expected at least one stage")
    seen: set[str] = set()
    for i, st in enumerate(cfg.stages):
        p = f"stages.{i}"
        _check_suite(st, p)
        if st.builtin is None:
            need(st.train is not None and bool(st.train.path), f"{p}.train",
                 "expected a data path (or set `builtin`)")
            need(st.test is not None and bool(st.test.path), f"{p}.test", "expected a data path")
        else:
            need(st.train is None and st.test is None, f"{p}.builtin",
                 "expected either `builtin` or `train`/`test`, not both")
        if not st.name:
            st.name = st.builtin or _name_from_path(st.train.path)
        need(st.name not in seen, f"{p}.name", f"expected a unique stage name, '{st.name}' repeats")
        need(st.name.isprintable(), f"{p}.name",
             f"expected a name without control characters, got {st.name!r}")
        seen.add(st.name)
        for key in ("max_train", "max_test", "steps"):
            v = getattr(st, key)
            need(v is None or v >= 1, f"{p}.{key}", f"expected an integer >= 1 or null, got {v}")
        need(st.lr is None or st.lr > 0, f"{p}.lr", f"expected a positive number or null, "
             f"got {st.lr}")
        if st.kind is None:
            st.kind = _builtin_kind(st.builtin) if st.builtin else "sft"
        need(st.beta > 0, f"{p}.beta", f"expected a positive number, got {st.beta}")
        if st.kind == "align" and st.metric not in (None, "preference_accuracy"):
            raise _Mismatch(f"{p}.metric", "expected 'preference_accuracy' for an align stage, "
                            f"got {st.metric!r}")
        if st.kind != "align" and st.metric == "preference_accuracy":
            raise _Mismatch(f"{p}.metric", "preference_accuracy scores preference pairs: only "
                            f"for align stages (this stage is {st.kind})")
        if st.kind == "cpt" and st.metric not in (None, "perplexity"):
            raise _Mismatch(f"{p}.metric",
                            f"expected 'perplexity' for a cpt stage, got {st.metric!r}")
        if st.kind == "edit" and st.metric not in (None, "reliability"):
            raise _Mismatch(f"{p}.metric", "expected 'reliability' for an edit stage, got "
                            f"{st.metric!r}")
        if st.freeze_lm and st.kind != "sft":
            raise _Mismatch(f"{p}.freeze_lm", "an alignment stage trains on image-text pairs: "
                            f"only for sft stages (this stage is {st.kind})")
        if st.kind != "edit" and st.metric == "reliability":
            raise _Mismatch(f"{p}.metric", "reliability scores fact edits: only for edit "
                            f"stages (this stage is {st.kind})")
    _check_edit(cfg)
    if cfg.text_stream is not None:
        _check_text_stream(cfg)
    if cfg.recycle is not None:
        _check_recycle(cfg)


def _check_recycle(cfg: RunConfig) -> None:
    """A recycle run: sft stages (one adapter each), then the update (a last cpt stage or
    ``recycle.new_base``), LoRA, and none of the stream-only features."""
    rc = cfg.recycle
    if cfg.model.finetune != "lora":
        raise _Mismatch("model.finetune", "expected 'lora': a recycle run trains one LoRA "
                        f"adapter per task, got {cfg.model.finetune!r}")
    if [s.name for s in cfg.strategies] != ["seqft"] or cfg.strategies[0].options:
        raise _Mismatch("strategies", "a recycle run trains each task's adapter on its own; "
                        "strategies are not used (remove them)")
    if cfg.tracker.backend != "none":
        raise _Mismatch("tracker", "a recycle run does not log to a tracker; expected none")
    if cfg.eval.general_probes:
        raise _Mismatch("eval.general_probes", "not measured in a recycle run; expected []")
    if cfg.eval.lm_eval.tasks:
        raise _Mismatch("eval.lm_eval.tasks", "not measured in a recycle run; expected []")
    if not rc.policies or len(set(rc.policies)) != len(rc.policies):
        raise _Mismatch("recycle.policies", f"expected a non-empty list without repeats, got "
                        f"{rc.policies}")
    *tasks, last = cfg.stages
    update = last if last.kind == "cpt" else None
    if rc.new_base is not None and update is not None:
        raise _Mismatch("recycle.new_base", "expected either a last cpt stage (the update) or "
                        "new_base, not both")
    if rc.new_base is None and update is None:
        raise _Mismatch(f"stages.{len(cfg.stages) - 1}.kind", "a recycle run updates the base "
                        f"with a last cpt stage (or recycle.new_base); got {last.kind!r}")
    if rc.new_base is not None:
        tasks.append(last)
        if not rc.new_base.strip():
            raise _Mismatch("recycle.new_base", "expected a model path or Hub id")
    if update is not None and (update.periods or 1) != 1:
        raise _Mismatch(f"stages.{len(cfg.stages) - 1}.periods",
                        f"expected 1: the update is one cpt stage, got {update.periods}")
    if not tasks:
        raise _Mismatch("stages", "expected at least one sft stage before the update")
    for i, st in enumerate(tasks):
        if st.kind != "sft":
            raise _Mismatch(f"stages.{i}.kind", "expected 'sft': the stages before the update "
                            f"are downstream tasks with one adapter each, got {st.kind!r}")
    for key in ("retune_steps", "distill_steps", "top_k"):
        v = getattr(rc, key)
        if v is not None and v < 1:
            raise _Mismatch(f"recycle.{key}", f"expected an integer >= 1, got {v}")
    for key in ("update_lr", "lr", "temperature"):
        v = getattr(rc, key)
        if v is not None and v <= 0:
            raise _Mismatch(f"recycle.{key}", f"expected a positive number, got {v}")
    if rc.distill_task_weight < 0:
        raise _Mismatch("recycle.distill_task_weight",
                        f"expected a number >= 0, got {rc.distill_task_weight}")


def _check_text_stream(cfg: RunConfig) -> None:
    """A text stream: cpt stages only, no per-stage budgets, every row of R full, boundaries
    that make sense for the block size."""
    ts, b = cfg.text_stream, cfg.text_stream.boundaries
    if cfg.recycle is not None:
        raise _Mismatch("text_stream", "a recycle run has no text stream; remove one of them")
    if cfg.train.checkpoint_every:
        raise _Mismatch("train.checkpoint_every", "a text stream takes no step checkpoints "
                        "(a killed run resumes at its last boundary); expected 0")
    if ts.token_budget is not None and ts.token_budget < 2:
        raise _Mismatch("text_stream.token_budget",
                        f"expected an integer >= 2 or null, got {ts.token_budget}")
    for i, st in enumerate(cfg.stages):
        if st.kind != "cpt":
            raise _Mismatch(f"stages.{i}.kind", "a text_stream concatenates the text of cpt "
                            f"stages; expected 'cpt', got {st.kind!r}")
        for key in ("steps", "epochs"):
            if getattr(st, key) is not None:
                raise _Mismatch(f"stages.{i}.{key}", "a text_stream trains every token once, "
                                "in order; per-stage steps and epochs do not apply (set "
                                "text_stream.token_budget)")
    for key in ("every", "sample_earlier"):
        if getattr(cfg.eval, key) is not None:
            raise _Mismatch(f"eval.{key}", "a text_stream scores every stage at every "
                            "boundary; expected null")
    length = cfg.train.max_length
    if b.mode == "fixed":
        if b.every_tokens is None:
            raise _Mismatch("text_stream.boundaries.every_tokens",
                            "expected an integer (stream tokens between boundaries) for mode "
                            "fixed")
        if b.every_tokens < length or b.every_tokens % length:
            raise _Mismatch("text_stream.boundaries.every_tokens",
                            f"expected a positive multiple of train.max_length ({length}), got "
                            f"{b.every_tokens}")
    elif b.every_tokens is not None:
        raise _Mismatch("text_stream.boundaries.every_tokens",
                        f"only with mode fixed (mode is {b.mode!r})")
    if b.window < 2:
        raise _Mismatch("text_stream.boundaries.window",
                        f"expected an integer >= 2, got {b.window}")
    for key in ("threshold", "min_std"):
        if getattr(b, key) <= 0:
            raise _Mismatch(f"text_stream.boundaries.{key}",
                            f"expected a positive number, got {getattr(b, key)}")
    if b.drift < 0:
        raise _Mismatch("text_stream.boundaries.drift",
                        f"expected a number >= 0, got {b.drift}")


def _check_edit(cfg: RunConfig) -> None:
    """The ``edit`` section: bounds that need a positive number and full fine-tuning."""
    e = cfg.edit
    if e.max_change is not None:
        if e.max_change <= 0:
            raise _Mismatch("edit.max_change", f"expected a positive number or null, got "
                            f"{e.max_change}")
        if cfg.model.finetune != "full":
            raise _Mismatch("edit.max_change", "bounds the change of full weights: needs "
                            f"model.finetune: full, got {cfg.model.finetune!r}")
    if e.lr is not None and e.lr <= 0:
        raise _Mismatch("edit.lr", f"expected a positive number or null, got {e.lr}")
    if e.layers is not None and (not e.layers or len(set(e.layers)) != len(e.layers)):
        raise _Mismatch("edit.layers", f"expected a non-empty list of layer indices without "
                        f"repeats, or null, got {e.layers}")


def _builtin_kind(name: str) -> str:
    """The stage kind a built-in task is made for (an unknown name is reported by the stream)."""
    from everlearn.data.builtin import get_builtin_task

    try:
        return get_builtin_task(name).kind
    except KeyError:
        return "sft"


def _name_from_path(path: str) -> str:
    """`data/task1687_x/train.json` -> `task1687_x`; `news_2021.jsonl` -> `news_2021`."""
    p = Path(path.split(":", 1)[-1])
    return p.parent.name if p.stem in ("train", "test", "data") and p.parent.name else p.stem


def build_config(data: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Validate plain data into a ``RunConfig``; errors name ``source`` and the field."""
    try:
        cfg = _build(RunConfig, data, "")
        _check_semantics(cfg)
    except _Mismatch as exc:
        raise ConfigError(f"{source}: {exc.path}: {exc.message}") from None
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` -> (["train", "lr"], 0.0001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r}: the key before '=' is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-4 as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    """Set ``value`` at the dotted ``keys`` inside plain config data (lists by index)."""
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                expected = (f"expected an index below {len(node)}" if node else
                            f"the list is empty; set it whole, e.g. {'.'.join(keys[:depth])}=[...]")
                raise ConfigError(f"override {text!r}: {where}: {expected}")
            idx = int(key)
            if last:
                node[idx] = value
            else:
                if node[idx] is None or isinstance(node[idx], str):
                    node[idx] = _shorthand_for_path(keys[:depth + 1], node[idx])
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if node.get(key) is None:  # a list when the next key is an index
                    node[key] = [] if keys[depth + 1].isdigit() else {}
                elif isinstance(node[key], str):
                    node[key] = _shorthand_for_path(keys[:depth + 1], node[key])
                node = node[key]
        else:
            raise ConfigError(f"override {text!r}: {where}: cannot index into {node!r}")


def _shorthand_for_path(keys: list[str], value: Any) -> Any:
    """Expand a string shorthand so an override can reach inside it (e.g. train.path)."""
    if value is None:
        return {}
    if keys and keys[0] == "strategies":
        return {"name": value}
    if keys == ["tracker"]:
        return {"backend": value}
    if keys == ["text_stream", "boundaries"]:
        return {"mode": value}
    return {"path": value}


def _normalize_top(data: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Accept `strategy:` (singular, string or list) as an alias of `strategies:`."""
    if "strategy" in data:
        if "strategies" in data:
            raise ConfigError(f"{source}: strategy: give either `strategy` or `strategies`, "
                              "not both")
        value = data.pop("strategy")
        data["strategies"] = value if isinstance(value, list) else [value]
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key given twice in one mapping (YAML keeps the
    last silently: ``seed: 0`` then ``seed: 7`` would run seed 7 from a file that says 0)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader's own construct_mapping refuses it with its message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}, first at line {seen[key]}; keep one",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (``yaml.safe_load``'s loader, duplicate keys refused); one-line
    errors on a bad file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read ({exc})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{p}: {where}: invalid YAML ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """YAML file (or ``base`` data) + overrides -> validated ``RunConfig``.

    Relative data paths in the file are resolved against the file's directory, so a config
    works from any working directory.
    """
    source = str(path) if path is not None else "<preset>"
    data = read_yaml(path) if path is not None else copy.deepcopy(base or {})
    data = _normalize_top(data, source)
    for text in overrides:
        try:
            keys, value = parse_override(text)
            if keys[0] == "strategy":
                keys[0] = "strategies"
                if len(keys) == 1:
                    value = value if isinstance(value, list) else [value]
            apply_override(data, keys, value, text)
        except ConfigError as exc:  # name the file the override applies to
            raise ConfigError(f"{source}: {exc}") from None
    cfg = build_config(data, source)
    if path is not None:
        _resolve_paths(cfg, Path(path).resolve().parent)
    return cfg


def _resolve_paths(cfg: RunConfig, root: Path) -> None:
    """Relative paths (stage data, model, strategy options marked ``path``) -> absolute."""
    from everlearn.strategies import STRATEGIES  # here: strategies import this module

    for spec in cfg.strategies:
        cls = STRATEGIES.get(spec.name)
        for f in dataclasses.fields(cls.Options) if cls else ():
            value = spec.options.get(f.name)
            if f.metadata.get("path") and isinstance(value, str) and ":" not in value:
                if not Path(value).expanduser().is_absolute():
                    spec.options[f.name] = str(root / value)
    for st in cfg.stages:
        for src in (st.train, st.test):
            if src is None or not src.path or ":" in src.path.split("/")[0]:
                continue  # hf:..., builtin:... are not file paths
            if not Path(src.path).is_absolute():
                src.path = str(root / src.path)
    include = cfg.eval.lm_eval.include_path
    if include and not Path(include).expanduser().is_absolute():
        cfg.eval.lm_eval.include_path = str(root / include)
    name = cfg.model.name
    if name.startswith((".", "/", "~")) or name.endswith(".gguf"):
        p = Path(name).expanduser()
        cfg.model.name = str(p if p.is_absolute() else root / p)
    new_base = cfg.recycle.new_base if cfg.recycle is not None else None
    if new_base and (new_base.startswith((".", "/", "~")) or new_base.endswith(".gguf")):
        p = Path(new_base).expanduser()
        cfg.recycle.new_base = str(p if p.is_absolute() else root / p)


def to_dict(cfg: Any) -> Any:
    """Plain data for YAML/JSON output (the resolved config written into a run directory)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


# Fields a resumed run may change: they do not touch what the finished rows were computed with.
RESUME_MAY_CHANGE = ("tracker", "output_dir", "train.checkpoint_every")


def changed_fields(before: Any, after: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, old value, new value) for every leaf where two config dicts differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in list(before) + [k for k in after if k not in before]:
            out += changed_fields(before.get(key), after.get(key), f"{prefix}{key}.")
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [c for i, (a, b) in enumerate(zip(before, after))
                for c in changed_fields(a, b, f"{prefix}{i}.")]
    return [] if before == after else [(prefix.rstrip("."), before, after)]

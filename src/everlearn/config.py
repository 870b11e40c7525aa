"""Run configuration: the sections of a run, each field with its docs and range, each section
checking its own rules; resolved YAML out.

The fields come from ``schema.field(default, help, **ranges)``, so docs/config.md and the
one-line errors are generated from the code, and a simple bound (``gt=0``, ``ge=1``...) is
declared once, on its field, and checked by ``schema.build``. What a range cannot say (one field
against another, a stage's kind against its metric, a text stream's or recycle run's whole
shape) is checked by the section's ``check`` method; ``RunConfig.fill`` sets the defaults that
depend on other fields first. This module knows no registry (built-in tasks and suites,
strategies): ``validation`` adds what needs them and is where ``build_config`` and
``load_config`` live.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from everlearn.schema import FieldError, field

# The one rule of a learning rate, declared on each of the five fields that hold one (train.lr,
# a stage's lr, edit.lr, recycle.update_lr, recycle.lr): inf or 1e400 would pass `> 0` and fail
# at step 2 as "loss is nan", naming neither the file nor the field.
LEARNING_RATE = {"gt": 0, "finite": True}


@dataclass
class LoraConfig:
    """LoRA adapter settings, passed to PEFT."""

    r: int = field(8, "LoRA rank.", ge=1)
    alpha: int = field(16, "LoRA scaling numerator (scale = alpha / r).", ge=1)
    dropout: float = field(0.0, "Dropout on the LoRA input.", ge=0, lt=1)
    target_modules: Union[str, list[str]] = field(
        "all-linear", "Modules that get adapters: 'all-linear' or a list of module names.",
        min_len=1, each={"min_len": 1})


@dataclass
class VisionConfig:
    """Vision-language models (docs/multimodal.md): the parts instruction stages train."""

    train_projector: bool = field(
        True, "Instruction stages train the projector (whole, also under LoRA) with the "
        "language model, as LLaVA's visual instruction tuning does.")
    train_vision_tower: bool = field(
        False, "Instruction stages also train the vision tower (whole). Alignment stages "
        "(freeze_lm) always train the tower and projector.")


@dataclass
class ModelConfig:
    """Which causal LM to load and how to make it trainable."""

    name: str = field(
        "smollm2-135m-instruct",
        "Embedded name (see `everlearn ls`), Hugging Face id, local directory or .gguf file; "
        "a path or bare name is looked for beside the config file first, then is a Hub id.",
    )
    gguf_file: str | None = field(None, "GGUF file name inside `name` when `name` is a directory.")
    revision: str | None = field(None, "Hub revision (branch, tag or commit) for a Hub id.")
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        "float32", "Dtype the weights are held in (compute precision is `train.precision`)."
    )
    finetune: Literal["lora", "full"] = field("lora", "Train LoRA adapters or all weights.")
    lora: LoraConfig = field(None, "LoRA settings (used when finetune is 'lora').")
    trust_remote_code: bool = field(False, "Allow model code from the Hub (off: safer).")
    chat_template: Literal["auto", "never"] = field(
        "auto", "Wrap instruction data in the tokenizer's chat template when it has one."
    )
    vision: VisionConfig = field(None, "Vision-language models: what instruction stages train.")

    def __post_init__(self) -> None:
        if self.lora is None:
            self.lora = LoraConfig()
        if self.vision is None:
            self.vision = VisionConfig()


@dataclass
class TrainConfig:
    """The training loop, shared by every stage unless a stage overrides steps or epochs."""

    lr: float = field(2e-4, "Peak learning rate (re-warmed at each stage).", **LEARNING_RATE)
    batch_size: int = field(8, "Examples per optimizer micro-batch.", ge=1)
    grad_accum: int = field(1, "Micro-batches per optimizer step.", ge=1)
    steps: int | None = field(40, "Optimizer steps per stage (takes precedence over epochs).",
                              ge=1)
    epochs: float | None = field(None, "Epochs per stage, used when steps is null.", gt=0,
                                 finite=True)
    warmup_ratio: float = field(0.1, "Fraction of each stage's steps spent warming up.", ge=0,
                                lt=1)
    schedule: Literal["cosine", "linear", "constant"] = field(
        "cosine", "Learning-rate decay after warm-up."
    )
    weight_decay: float = field(0.0, "AdamW weight decay.", ge=0, finite=True)
    max_grad_norm: float | None = field(1.0, "Gradient clipping norm (null: no clipping).", gt=0)
    max_length: int = field(128, "Token cutoff per example (and block size for cpt packing).",
                            ge=8)
    precision: Literal["auto", "bf16", "fp32"] = field(
        "auto", "Compute precision: auto = bf16 autocast where the hardware supports it."
    )
    group_by_length: bool = field(True, "Batch examples of similar length to avoid padding waste.")
    gradient_checkpointing: bool = field(
        False, "Recompute each decoder layer's activations in the backward pass instead of "
        "keeping them: less memory per step (about 1 GB less at batch 8 x 100 tokens on "
        "SmolLM2-135M) for about one more forward pass of compute; the same gradients.")
    nonfinite_loss: Literal["stop", "skip"] = field(
        "stop", "A NaN or infinite loss: stop the stage with an error (earlier results kept), "
        "or skip that batch and count it in the cost (skipped_batches)."
    )
    checkpoint_every: int = field(
        0, "Write a step checkpoint every this many optimizer steps inside a stage (0: off; "
        "stage checkpoints are written either way). It holds the trainable weights, the "
        "optimizer, learning-rate schedule, RNG and batch-order state and the strategies' "
        "in-stage state, so `--resume` continues mid-stage exactly; only the latest is kept. "
        "Ctrl-C or SIGTERM during training writes one at the next step boundary, also when 0. "
        "Not under DeepSpeed (docs/distributed.md).", ge=0)

    def check(self, where: str) -> None:
        if self.steps is None and self.epochs is None:
            raise FieldError(f"{where}.steps", "expected steps or epochs to be set")


# the probe splits of a temporal stage (everlearn.evaluation.temporal.SPLITS)
PROBE_SPLITS = ("invariant", "updated", "new")


@dataclass
class DataSource:
    """Where a split comes from. In YAML a plain string is shorthand for ``{path: ...}``."""

    path: str = field("", "File, directory, or `hf:<dataset name or saved directory>` (built-in "
                      "tasks: the stage's `builtin`).")
    format: Literal["auto", "jsonl", "json", "superni", "text", "csv", "hf", "olora",
                    "twiki_probes", "ckl_lama"] = field(
        "auto", "File format; auto guesses from the path and content (csv: a header row, one "
        "record a row; olora: O-LoRA's {label, sentence} records with labels.json beside them; "
        "twiki_probes: TemporalWiki's subject,relation,object probes; ckl_lama: CKL's "
        "InvariantLAMA / UpdatedLAMA / NewLAMA files; the last three as `benchmark:` reads them)."
    )
    probes: dict[str, str] = field(
        {}, "Test data only, instead of `path`: temporal probes, a file per split {invariant: "
        "FILE, updated: FILE, new: FILE} (any of them), read as prompt/answer records that "
        "carry their split, so the run reports probe accuracy per split and FUAR "
        "(docs/temporal.md).")
    split: str | None = field(None, "Split name for Hugging Face datasets.")
    fields: dict[str, str] = field(
        {}, "Field mapping record-field -> source-field, e.g. {prompt: question}."
    )

    @staticmethod
    def shorthand(value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


@dataclass
class StageConfig:
    """One stage of the stream: what to train on and how to score it."""

    name: str = field("", "Stage name (unique; defaults to the task or file name).")
    kind: str | None = field(
        None, "A stage kind (`everlearn ls` lists them): sft = instruction -> response; "
        "cpt = raw text, packed; align = preference pairs (prompt, chosen, rejected), DPO loss; "
        "edit = one batch of fact edits (prompt, target_new, rephrase_prompt, locality_prompt; "
        "see `edit` and docs/editing.md). "
        "Default: the built-in task's kind, else sft.")
    train: DataSource | None = field(None, "Training data.")
    test: DataSource | None = field(None, "Test data (builtin tasks and files may share a path).")
    builtin: str | None = field(None, "A built-in generated task (see `everlearn ls`).")
    metric: str | None = field(
        None, "The metric the stage is scored by (`everlearn ls` lists each kind's). Default: "
        "accuracy when labels are set or the answers form a small closed set (a classification "
        "task), perplexity for cpt (exact_match when its test records are probes: prompts "
        "and answers), preference_accuracy for align, reliability for edit, the "
        "built-in task's metric, else exact_match.")
    labels: list[str] = field([], "Label options for scoring by log-likelihood (accuracy).",
                              each={"min_len": 1}, unique=True)
    task_id: str | None = field(None, "Task identifier (used by task-incremental strategies).")
    max_train: int | None = field(None, "Sample at most this many training records (by seed).",
                                  ge=1)
    max_test: int | None = field(None, "Sample at most this many test records (by seed).", ge=1)
    periods: int | None = field(
        None, "Periods of a built-in suite (`builtin: worldline`): the entry becomes this many "
        "stages, NAME-01 .. NAME-N (default: the suite's, 4 for worldline, 100 for "
        "long_stream, the number of tasks for visual_shapes, whose stages are NAME-<task>).",
        ge=1)
    builtin_options: dict[str, Any] = field(
        {}, "Options of a built-in suite, e.g. {people: 24, change_rate: 0.25} (see `everlearn "
        "ls` and docs/temporal.md).")
    steps: int | None = field(None, "Override train.steps for this stage.", ge=1)
    lr: float | None = field(None, "Override train.lr for this stage (e.g. a higher one for an "
                             "alignment stage that trains a vision encoder from scratch).",
                             **LEARNING_RATE)
    epochs: float | None = field(None, "Override train.epochs for this stage.", gt=0,
                                 finite=True)
    beta: float = field(0.1, "DPO temperature of an align stage: the loss is -log sigmoid(beta * "
                        "margin of policy-to-reference log-ratios).", gt=0, finite=True)
    freeze_lm: bool = field(
        False, "Vision-language models: an alignment stage that trains only the vision tower "
        "and projector, the language model frozen (LLaVA's feature alignment, on captions such "
        "as `builtin: visual_captions`; docs/multimodal.md). sft stages only.")

    def fill(self) -> None:
        """The name from the task or file, and kind sft, where the YAML leaves them out (a
        built-in task's own kind is filled before, by ``validation``)."""
        if not self.name and (self.builtin or (self.train is not None and self.train.path)):
            self.name = self.builtin or _name_from_path(self.train.path)
        if self.kind is None:
            self.kind = "sft"

    def check(self, where: str) -> None:
        """Data given one way and a printable name (the kind, its metric and freeze_lm are
        checked against the registries of kinds and metrics: everlearn.validation.check_kind)."""
        if self.builtin is None:
            if self.train is None or not self.train.path:
                raise FieldError(f"{where}.train", "expected a data path (or set `builtin`)")
            if self.test is None or not (self.test.path or self.test.probes):
                raise FieldError(f"{where}.test", "expected a data path (or `probes`)")
            if self.train.probes:
                raise FieldError(f"{where}.train.probes", "probes are test data; expected "
                                 "`path` for the training data")
            self._check_probes(f"{where}.test")
        elif self.train is not None or self.test is not None:
            raise FieldError(f"{where}.builtin",
                             "expected either `builtin` or `train`/`test`, not both")
        if not self.name.isprintable():
            raise FieldError(f"{where}.name",
                             f"expected a name without control characters, got {self.name!r}")

    def _check_probes(self, where: str) -> None:
        probes = self.test.probes
        if probes and self.test.path:
            raise FieldError(f"{where}.probes", "expected either `path` or `probes`, not both")
        for split, path in probes.items():
            if split not in PROBE_SPLITS:
                raise FieldError(f"{where}.probes.{split}",
                                 f"expected a split among {', '.join(PROBE_SPLITS)}")
            if not path:
                raise FieldError(f"{where}.probes.{split}", "expected a file path")


@dataclass
class StrategySpec:
    """One continual-learning strategy and its options (validated by the strategy)."""

    name: str = field("seqft", "Strategy name (see `everlearn ls`).")
    options: dict[str, Any] = field({}, "Strategy options, e.g. {buffer_size: 200}.")

    @staticmethod
    def shorthand(value: Any) -> Any:
        """``replay`` -> ``{name: replay}``; ``{name: replay, buffer_size: 5}`` -> the options
        under ``options``."""
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "options" not in value:
            value = dict(value)
            name = value.pop("name", None)
            return {"name": name, "options": value} if name is not None else value
        return value


@dataclass
class LmEvalConfig:
    """lm-evaluation-harness tasks as general-ability probes (optional: needs `pip install
    lm_eval` and each task's data on disk or in the local Hugging Face datasets cache)."""

    tasks: list[str] = field(
        [], "Task (or group) names measured on every row of R beside `general_probes`, e.g. "
        "[arc_easy, hellaswag] when their data is cached locally, or tasks defined by YAML files "
        "in `include_path` (empty: off). Each task's first metric ('acc' when it has one) is "
        "reported in percent with its delta against the base row.")
    include_path: str | None = field(
        None, "Directory of extra task YAML files (relative to the config file).")
    limit: int | None = field(None, "Examples per task (default: all).", ge=1)
    num_fewshot: int | None = field(None, "Few-shot examples per prompt (default: the task's).",
                                    ge=0)

    def check(self, where: str) -> None:
        if self.tasks and importlib.util.find_spec("lm_eval") is None:
            raise FieldError(f"{where}.tasks", "lm-evaluation-harness is not installed: "
                             "expected `pip install lm_eval`, or tasks: []")


@dataclass
class EvalConfig:
    """Evaluation after every stage."""

    batch_size: int = field(16, "Examples per evaluation batch.", ge=1)
    max_new_tokens: int | None = field(
        None, "Generation cap; default = longest tokenised test answer + 4.", ge=1)
    length_normalize: bool = field(
        False, "Rank label options by mean instead of summed token log-likelihood."
    )
    general_probes: list[Literal["kl", "labelled"]] = field(
        [], "General-ability probes after every stage (vertical forgetting; empty: off): 'kl' = "
        "KL(base || current) along the base model's greedy answers to built-in general prompts "
        "and the rate of unchanged greedy answers; 'labelled' = accuracy on built-in general "
        "questions the base model answers correctly. See docs/temporal.md.")
    general_max_new_tokens: int = field(
        16, "Length cap of the greedy answers the 'kl' probe follows and compares.", ge=1)
    lm_eval: LmEvalConfig = field(None, "lm-evaluation-harness tasks as further general probes "
                                  "(docs/temporal.md).")
    every: int | None = field(
        None, "Evaluation schedule for long streams: a full row of R (every stage scored) after "
        "every k-th phase and always after the last; the rows in between score only the stages "
        "just trained and the next phase's (the cells LA, BWT and FWT need), plus "
        "`sample_earlier`. Default (null): every row full (the whole matrix), or only the last "
        "when `sample_earlier` is set. Unscored cells are null in results.json.", ge=1)
    sample_earlier: int | None = field(
        None, "On rows that are not full, also score this many stages trained before the phase, "
        "drawn from the run seed and the row (0: none; null: no sampling, every row full unless "
        "`every` is set). AP_t then averages the scored stages (the rows are listed in "
        "`ap_estimated`) and forgetting's max runs over the scored rows.", ge=0)
    predictions: bool = field(
        True, "Write what the model produced for every test record after every row, one JSON "
        "Lines file per row and stage: RUN_DIR/predictions/row-TT/JJ-STAGE.jsonl (generated "
        "text; the chosen option and every option's log-likelihood; preference log-ratios; "
        "edit hits), with the reference and the record's score. false: no files (they grow "
        "with rows x test records).")

    def __post_init__(self):
        self.lm_eval = self.lm_eval or LmEvalConfig()


@dataclass
class TrackerConfig:
    """Experiment tracking through accelerate (``tracker: NAME`` is short for ``backend: NAME``)."""

    backend: Literal["none", "tensorboard", "mlflow", "wandb"] = field(
        "none", "Tracker: none (off), tensorboard, mlflow or wandb (each needs its package: "
        "pip install 'everlearn[trackers]' for the first two, wandb for W&B). Logs training "
        "loss and learning rate every `log_every` steps and, after each phase, the row of R, "
        "AP so far and the phase's cost, against the run's optimizer step.")
    dir: str | None = field(
        None, "tensorboard: event-file directory (default RUN_DIR/tensorboard); mlflow: "
        "tracking URI (sqlite:///..., http://..., file:...) or a directory for a local file "
        "store (default MLFLOW_TRACKING_URI, else RUN_DIR/mlruns); wandb: local files "
        "directory (default RUN_DIR). Relative paths are from the working directory.")
    project: str | None = field(
        None, "MLflow experiment / W&B project name (default: the run name).")
    log_every: int = field(10, "Log training loss and learning rate every this many steps "
                           "(also the cadence of results.json's cost[].loss_curve, which is "
                           "kept with tracker none too).", ge=1)

    @staticmethod
    def shorthand(value: Any) -> Any:
        return {"backend": value} if isinstance(value, str) else value


@dataclass
class EditConfig:
    """Edit stages (``kind: edit``): how their prompts are written and how the default editor,
    constrained fine-tuning, trains. The `grace` strategy edits through a codebook instead
    (docs/editing.md)."""

    format: Literal["raw", "chat"] = field(
        "raw", "How an edit is written: raw = the prompt, a space, target_new (cloze style, as "
        "EasyEdit and CounterFact do; no chat template, no end-of-turn); chat = the prompt as "
        "a user turn and target_new as the assistant's whole answer (chat template).")
    layers: list[int] | None = field(
        None, "Constrained fine-tuning: decoder layers whose MLP weights an edit stage trains "
        "(0-based; negative counts from the end, -1 = last); every other weight is frozen "
        "during edit stages. Null: the MLPs of every layer. With LoRA, the LoRA weights inside "
        "those MLPs.", min_len=1, unique=True)
    max_change: float | None = field(
        None, "Constrained fine-tuning: L-inf bound on how far each trained weight may move "
        "during one edit stage, abs(w - w_entering_the_stage) <= max_change, enforced by "
        "projection after every optimizer step (Zhu et al. 2020). Null: unbounded. Needs "
        "model.finetune: full.", gt=0)
    lr: float | None = field(None, "Learning rate of edit stages (default: train.lr).",
                             **LEARNING_RATE)
    batch_size: int | None = field(
        None, "Editors (grace, wise, ...): edits of a stage applied together in one update, in "
        "the stage's order; 1 = one at a time. Null: the whole stage as one batch. Constrained "
        "fine-tuning trains a stage's edits together (null only).", ge=1)


RecyclePolicy = Literal["reapply", "retune", "distill", "scratch"]


@dataclass
class RecycleConfig:
    """Recyclable tuning (a run with a `recycle` section; see docs/recycling.md): one LoRA adapter
    per sft stage on the old base, then the base is updated (the last stage, `cpt`, or
    `new_base`) and every adapter is carried over to the new base by each policy."""

    policies: list[RecyclePolicy] = field(
        ["reapply", "retune", "distill", "scratch"],
        "Policies compared per adapter: reapply = the old adapter's weights on the new base as "
        "they are; retune = start from the old adapter, train `retune_steps` on the task; "
        "distill = train an adapter on the new base to match the old base + adapter (KL on the "
        "answer tokens of the adapter's own training inputs); scratch = a fresh adapter trained "
        "with the stage's full budget. reapply is measured in any case (one evaluation).",
        min_len=1, unique=True)
    new_base: str | None = field(
        None, "A new base checkpoint of the same architecture and tokenizer (local directory, "
        ".gguf file or Hub id) instead of a last `cpt` stage.")
    update: Literal["full", "lora"] = field(
        "full", "How the last `cpt` stage updates the base: full = every weight trains (the "
        "vendor's continual pre-training); lora = a LoRA adapter trained and merged into the "
        "base weights.")
    update_lr: float | None = field(
        None, "Learning rate of the base update (default: train.lr).", **LEARNING_RATE)
    retune_steps: int | None = field(
        None, "Optimizer steps of retune (default: a quarter of the adapter's own budget, at "
        "least 1).", ge=1)
    distill_steps: int | None = field(
        None, "Optimizer steps of distill (default: as retune).", ge=1)
    lr: float | None = field(
        None, "Peak learning rate of retune and distill, which start from a trained adapter "
        "(default: train.lr; scratch always uses train.lr).", **LEARNING_RATE)
    distill_init: Literal["old", "fresh"] = field(
        "old", "Where distill starts: the old adapter's weights, or a fresh adapter.")
    distill_task_weight: float = field(
        0.0, "Weight of the task loss (on the data's answers) added to distill's KL; 0: "
        "distillation alone, the data's answers are not read.", ge=0, finite=True)
    temperature: float = field(1.0, "Softmax temperature of distill's teacher and student.",
                               gt=0, finite=True)
    top_k: int = field(
        50, "Teacher tokens kept per answer position (the rest is one bucket), for distill and "
        "for the kl_to_old measure.", ge=1)

    def check(self, run: RunConfig) -> None:
        """sft stages (one adapter each), then the update (a last cpt stage or ``new_base``),
        LoRA, and none of the stream-only features."""
        if run.model.finetune != "lora":
            raise FieldError("model.finetune", "expected 'lora': a recycle run trains one LoRA "
                             f"adapter per task, got {run.model.finetune!r}")
        if [s.name for s in run.strategies] != ["seqft"] or run.strategies[0].options:
            raise FieldError("strategies", "a recycle run trains each task's adapter on its "
                             "own; strategies are not used (remove them)")
        if run.tracker.backend != "none":
            raise FieldError("tracker", "a recycle run does not log to a tracker; expected none")
        if run.eval.general_probes:
            raise FieldError("eval.general_probes", "not measured in a recycle run; expected []")
        if run.eval.lm_eval.tasks:
            raise FieldError("eval.lm_eval.tasks", "not measured in a recycle run; expected []")
        self._check_stages(run.stages)

    def _check_stages(self, stages: list[StageConfig]) -> None:
        *tasks, last = stages
        update = last if last.kind == "cpt" else None
        if self.new_base is not None and update is not None:
            raise FieldError("recycle.new_base", "expected either a last cpt stage (the update) "
                             "or new_base, not both")
        if self.new_base is None and update is None:
            raise FieldError(f"stages.{len(stages) - 1}.kind", "a recycle run updates the base "
                             f"with a last cpt stage (or recycle.new_base); got {last.kind!r}")
        if self.new_base is not None:
            tasks.append(last)
            if not self.new_base.strip():
                raise FieldError("recycle.new_base", "expected a model path or Hub id")
        if update is not None and (update.periods or 1) != 1:
            raise FieldError(f"stages.{len(stages) - 1}.periods",
                             f"expected 1: the update is one cpt stage, got {update.periods}")
        if not tasks:
            raise FieldError("stages", "expected at least one sft stage before the update")
        for i, st in enumerate(tasks):
            if st.kind != "sft":
                raise FieldError(f"stages.{i}.kind", "expected 'sft': the stages before the "
                                 "update are downstream tasks with one adapter each, got "
                                 f"{st.kind!r}")


@dataclass
class BoundaryConfig:
    """Where a text stream's boundaries fall (``boundaries: none`` is short for ``{mode: none}``).
    Strategies that act between stages (EWC's Fisher, LwF's teacher, replay's buffer, a new
    inc_lora adapter, merging) act at each boundary, and R gets a row there."""

    mode: Literal["fixed", "detector", "none"] = field(
        "fixed", "fixed = a boundary every `every_tokens` stream tokens; detector = where the "
        "shift detector fires on the training loss (docs/temporal.md#the-shift-detector); "
        "none = no boundary, one segment (strategies never see a stage end).")
    every_tokens: int | None = field(
        None, "fixed: stream tokens between boundaries; a multiple of train.max_length (the "
        "block size), so every boundary falls exactly on a block edge.")
    window: int = field(
        8, "detector: chunks (optimizer steps) in the reference window the loss is standardised "
        "against; also the shortest segment, in chunks.", ge=2)
    threshold: float = field(
        5.0, "detector: the CUSUM of standardised loss increases that places a boundary (h).",
        gt=0)
    drift: float = field(
        0.5, "detector: standard deviations subtracted from every chunk's score before it is "
        "summed (k); rises smaller than this are ignored.", ge=0)
    min_std: float = field(
        0.05, "detector: floor on the reference window's standard deviation, in nats, so a "
        "flat loss does not turn noise into large scores.", gt=0)
    direction: Literal["up", "both"] = field(
        "up", "detector: up = only a rise of the loss places a boundary (text the model "
        "predicts worse); both = a sudden fall as well (a second sum; learning also lowers the "
        "loss, so more false alarms are possible).")

    @staticmethod
    def shorthand(value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value

    def check(self, where: str, block: int) -> None:
        """``every_tokens`` with mode fixed only, and a multiple of the block size."""
        if self.mode == "fixed":
            if self.every_tokens is None:
                raise FieldError(f"{where}.every_tokens", "expected an integer (stream tokens "
                                 "between boundaries) for mode fixed")
            if self.every_tokens < block or self.every_tokens % block:
                raise FieldError(f"{where}.every_tokens", "expected a positive multiple of "
                                 f"train.max_length ({block}), got {self.every_tokens}")
        elif self.every_tokens is not None:
            raise FieldError(f"{where}.every_tokens", f"only with mode fixed (mode is "
                             f"{self.mode!r})")


@dataclass
class TextStreamConfig:
    """A boundary-free text stream (docs/temporal.md#a-stream-without-task-boundaries): the cpt
    stages' training text, in stage order, is one continuous token stream trained on once, in
    order, in chunks of train.batch_size x train.grad_accum blocks of train.max_length tokens
    (one optimizer step per chunk). The stages stay the columns of R (perplexity on each one's
    held-out text); the rows of R are the stream's boundaries."""

    token_budget: int | None = field(
        None, "Stream tokens trained on in total: the stream is cut after this many (null: the "
        "whole stream).", ge=2)
    boundaries: BoundaryConfig = field(None, "Where boundaries fall: fixed, detector or none.")

    def __post_init__(self) -> None:
        if self.boundaries is None:
            self.boundaries = BoundaryConfig()

    def check(self, run: RunConfig) -> None:
        """cpt stages only, no per-stage budgets, every row of R full, no step checkpoints,
        boundaries that make sense for the block size."""
        if run.recycle is not None:
            raise FieldError("text_stream", "a recycle run has no text stream; remove one of "
                             "them")
        if run.train.checkpoint_every:
            raise FieldError("train.checkpoint_every", "a text stream takes no step checkpoints "
                             "(a killed run resumes at its last boundary); expected 0")
        for i, st in enumerate(run.stages):
            if st.kind != "cpt":
                raise FieldError(f"stages.{i}.kind", "a text_stream concatenates the text of "
                                 f"cpt stages; expected 'cpt', got {st.kind!r}")
            for key in ("steps", "epochs"):
                if getattr(st, key) is not None:
                    raise FieldError(f"stages.{i}.{key}", "a text_stream trains every token "
                                     "once, in order; per-stage steps and epochs do not apply "
                                     "(set text_stream.token_budget)")
        for key in ("every", "sample_earlier"):
            if getattr(run.eval, key) is not None:
                raise FieldError(f"eval.{key}", "a text_stream scores every stage at every "
                                 "boundary; expected null")
        self.boundaries.check("text_stream.boundaries", run.train.max_length)


@dataclass
class RunConfig:
    """A whole continual-learning run."""

    name: str = field("run", "Run name, used for the run directory.")
    output_dir: str = field("runs", "Parent directory of run directories.")
    seed: int = field(0, "Seed for sampling, shuffling and initialisation.", ge=0,
                      le=2**32 - 1)
    scenario: Literal["TIL", "DIL", "CIL"] = field(
        "TIL", "TIL: task id known at test time; DIL: shifting domain, no task id; CIL: the "
        "label options of all label stages pooled at test time, no task id."
    )
    model: ModelConfig = field(None, "The model.")
    train: TrainConfig = field(None, "The training loop.")
    eval: EvalConfig = field(None, "Evaluation.")
    stages: list[StageConfig] = field([], "The ordered stages of the stream.")
    strategies: list[StrategySpec] = field([], "Strategies, composed in order (default: seqft).")
    keep_stage_weights: Literal["auto", "all", "last"] = field(
        "auto", "Keep trainable weights of every stage or only the last (auto: all for LoRA)."
    )
    tracker: TrackerConfig = field(None, "Experiment tracker (off by default).")
    edit: EditConfig = field(None, "Edit stages: prompt format and the constrained fine-tuning "
                             "editor (docs/editing.md).")
    recycle: RecycleConfig | None = field(
        None, "Recyclable tuning instead of a continual stream (`recycle: {}` for the defaults; "
        "see docs/recycling.md): per-task adapters on the old base, a base update, and each "
        "adapter carried over to the new base by every policy.")

    text_stream: TextStreamConfig | None = field(
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

    def fill(self) -> None:
        """Defaults that depend on other fields: each stage's name and kind."""
        for st in self.stages:
            st.fill()

    def check(self) -> None:
        """The rules a field's own range cannot say, section by section, then across them."""
        if not _is_plain_name(self.name):
            raise FieldError("name", "expected a run name (not empty, no '/', not '.' or '..'), "
                             f"got {self.name!r}")
        self.train.check("train")
        self.eval.lm_eval.check("eval.lm_eval")
        if not self.stages:
            raise FieldError("stages", "expected at least one stage")
        seen: set[str] = set()
        for i, st in enumerate(self.stages):
            st.check(f"stages.{i}")
            if st.name in seen:
                raise FieldError(f"stages.{i}.name",
                                 f"expected a unique stage name, '{st.name}' repeats")
            seen.add(st.name)
        if self.edit.max_change is not None and self.model.finetune != "full":
            raise FieldError("edit.max_change", "bounds the change of full weights: needs "
                             f"model.finetune: full, got {self.model.finetune!r}")
        if self.text_stream is not None:
            self.text_stream.check(self)
        if self.recycle is not None:
            self.recycle.check(self)


def _is_plain_name(name: str) -> bool:
    """A run name names a directory under ``output_dir``: a name, never a path out of it."""
    return (bool(name.strip()) and name not in (".", "..") and "/" not in name
            and "\\" not in name and not Path(name).is_absolute())


def _name_from_path(path: str) -> str:
    """`data/task1687_x/train.json` -> `task1687_x`; `news_2021.jsonl` -> `news_2021`."""
    p = Path(path.split(":", 1)[-1])
    return p.parent.name if p.stem in ("train", "test", "data") and p.parent.name else p.stem



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
RESUME_MAY_CHANGE = ("tracker", "output_dir", "train.checkpoint_every", "eval.predictions")


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

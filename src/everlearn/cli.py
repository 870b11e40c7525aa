"""Command line: ``everlearn run | eval | report | compare | sweep | ls | validate | export``.

Errors from bad input print as one line (``everlearn: error: FILE: FIELD: expected ...``) with
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from everlearn import __version__
from everlearn.errors import ConfigError, EverlearnError
from everlearn.progress_bars import library_bars_off
from everlearn.runs.config_source import benchmark_overrides, load_run_config
from everlearn.wording import plural

EPILOG = """examples:
  everlearn run                                   # the built-in quickstart (4 stages, replay)
  everlearn run --preset smoke                    # the same stream on a tiny random model
  everlearn run stream.yaml train.lr=1e-4 stages.0.max_train=200
  everlearn run stream.yaml strategy=[replay] --output runs/mine
  everlearn run --resume runs/mine                # continue after the last finished stage
  everlearn eval stream.yaml --weights runs/mine/checkpoints/phase-02
  everlearn validate stream.yaml
  everlearn report runs/mine                      # runs/mine/report/index.html with figures
  everlearn compare runs/a-seed0 runs/a-seed1 runs/b --format csv --out table.csv
  everlearn sweep stream.yaml strategy=[seqft,replay] seed=[0,1,2] --jobs 2 -o runs/sw
  everlearn sweep --resume runs/sw                # after a kill: finish what is missing
  everlearn run --benchmark superni-15 --order 1 --data-dir CL_Benchmark/SuperNI
  everlearn verify runs/bench-*                   # runs beside the benchmark's published numbers
  everlearn ls
  everlearn export runs/mine --stage 2 --out adapters/stage2   # a PEFT adapter directory
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="everlearn", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Continual learning of LLMs: train a stream of stages, get the accuracy "
                    "matrix, forgetting and transfer metrics, and cost per stage.")
    p.add_argument("--version", action="version", version=f"everlearn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_eval, _add_report, _add_compare, _add_sweep, _add_ls_validate,
                _add_verify, _add_export):
        add(sub)
    return p


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="train a stream and write a run directory",
                         description="Train a stream. CONFIG is a YAML file (none: the built-in "
                         "quickstart); key=value pairs override config fields.")
    run.add_argument("config", nargs="?", help="stream YAML (omit for the quickstart)")
    run.add_argument("overrides", nargs="*", metavar="key=value",
                     help="config overrides, e.g. train.lr=1e-4 stages.0.max_train=200")
    run.add_argument("--preset", help="a built-in config instead of CONFIG (see `everlearn ls`)")
    run.add_argument("--output", "-o", help="run directory (default: OUTPUT_DIR/NAME-TIMESTAMP)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run after its last "
                     "finished stage (takes the config from RUN_DIR)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    run.add_argument("--benchmark", metavar="NAME", help="a built-in benchmark's stream (see "
                     "`everlearn ls`), read from --data-dir")
    run.add_argument("--order", type=int, metavar="K", help="the benchmark's task order K "
                     "(default: its first)")
    run.add_argument("--data-dir", metavar="DIR", help="the folder holding the benchmark's "
                     "tasks in a layout its authors publish (e.g. CL_Benchmark), or "
                     "hf:OWNER/NAME[/FOLDER][@REVISION], a Hugging Face dataset holding it")
    run.add_argument("--base-cache", metavar="DIR", help="share the base row's stage scores "
                     "with other runs through DIR, keyed by the content of the model, data and "
                     "scoring settings (a sweep uses SWEEP_DIR/cache)")


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="score a model (or a stage checkpoint) on a stream",
                        description="Evaluate without training: one row of scores per stage.")
    ev.add_argument("config", nargs="?", help="stream YAML (omit for the quickstart)")
    ev.add_argument("overrides", nargs="*", metavar="key=value")
    ev.add_argument("--preset", help="a built-in config instead of CONFIG")
    ev.add_argument("--weights", metavar="PHASE_DIR",
                    help="a run's checkpoints/phase-NN directory whose weights to load")
    ev.add_argument("--json", action="store_true", help="print the scores as JSON")
    ev.add_argument("--quiet", "-q", action="store_true")


def _add_report(sub) -> None:
    rep = sub.add_parser("report", help="write RUN_DIR/report/index.html from results.json",
                         description="A self-contained HTML page (figures embedded) plus the "
                         "PNG figures in RUN_DIR/report/; works on unfinished runs too.")
    rep.add_argument("run_dir", metavar="RUN_DIR")


def _add_compare(sub) -> None:
    cmp = sub.add_parser("compare", help="runs side by side; seeds and stream orders pooled",
                         description="A table of runs: AP, BWT, FWT, forgetting, cost. Runs "
                         "whose configs differ only in seed or stage order are pooled into a "
                         "mean and a Student-t confidence interval (95% unless --confidence). "
                         "Runs of different streams (stage sets) get separate tables; "
                         "directories without readable results are listed as skipped.")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    cmp.add_argument("--format", default="markdown", help="markdown (default), csv or html")
    cmp.add_argument("--out", metavar="FILE", help="write the table to FILE instead of stdout")
    cmp.add_argument("--confidence", type=float, default=0.95, metavar="P",
                     help="level of the pooled intervals, 0 < P < 1 (default 0.95)")


def _add_sweep(sub) -> None:
    sw = sub.add_parser("sweep", help="run a grid of configs, then compare them",
                        description="Run the cartesian product of the axes key=[a,b,...] "
                        "(strategies x seeds x stream orders x any field), each point a run "
                        "directory SWEEP_DIR/NN-key=value_.../, then write SWEEP_DIR/compare.md, "
                        ".csv and .html. key=value (no brackets) fixes a field for every point; "
                        "order=[0,1,2] permutes the stages (0: as configured, k: the k-th "
                        "seeded permutation) or order=[[a,b],[b,a]] names them.")
    sw.add_argument("config", nargs="?", help="stream YAML (omit for the quickstart)")
    sw.add_argument("grid", nargs="*", metavar="key=[a,b]",
                    help="axes, e.g. strategy=[seqft,replay] seed=[0,1] order=[0,1]")
    sw.add_argument("--preset", help="a built-in config instead of CONFIG")
    sw.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                    help="points run at once, each in its own process with cores/N threads "
                    "(default 1)")
    sw.add_argument("--output", "-o", metavar="SWEEP_DIR",
                    help="sweep directory (default: OUTPUT_DIR/NAME-sweep-TIMESTAMP)")
    sw.add_argument("--resume", metavar="SWEEP_DIR", help="finish a stopped sweep: complete "
                    "points are kept, half-done ones resumed, the rest started")
    sw.add_argument("--quiet", "-q", action="store_true", help="print only where the "
                    "comparison went")


def _add_ls_validate(sub) -> None:
    sub.add_parser("ls", help="list stage kinds, strategies, built-in tasks and suites, "
                  "embedded models, benchmarks and presets")

    val = sub.add_parser("validate", help="check a config, its data, the model's config and "
                         "tokenizer and the tracker's package, without training")
    val.add_argument("config", nargs="?", help="stream YAML")
    val.add_argument("--preset", help="a built-in config instead of CONFIG")
    val.add_argument("overrides", nargs="*", metavar="key=value")


def _add_verify(sub) -> None:
    ver = sub.add_parser("verify", help="runs of a benchmark beside its published numbers",
                         description="Pool the runs as `compare` does and put each method's AP "
                         "and BWT (95% CI) beside the benchmark's published values.")
    ver.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ver.add_argument("--benchmark", metavar="NAME", help="the benchmark (default: the one "
                     "whose tasks the runs' stages are)")
    ver.add_argument("--published", metavar="FILE", help="extra published numbers (YAML list "
                     "of method, model, metric, value, source)")
    ver.add_argument("--confidence", type=float, default=0.95, metavar="P")


def cmd_verify(args) -> int:
    from everlearn.report.verify import format_verification, verify_runs

    print(format_verification(verify_runs(args.run_dirs, args.benchmark, args.published,
                                          args.confidence)))
    return 0


def _add_export(sub) -> None:
    ex = sub.add_parser("export", help="write a stage's weights as a PEFT adapter or a model "
                        "directory", description="Export stage K of a run: its LoRA as a PEFT "
                        "adapter directory (PeftModel.from_pretrained loads it), or with "
                        "--merged the base model with the adapter merged in; full fine-tuning "
                        "as a save_pretrained model directory. AutoModelForCausalLM loads "
                        "--merged and full exports.")
    ex.add_argument("run_dir", metavar="RUN_DIR")
    ex.add_argument("--stage", type=int, required=True, metavar="K",
                    help="the phase to export, as RUN_DIR/checkpoints/phase-K (1 = the first)")
    ex.add_argument("--out", required=True, metavar="DIR",
                    help="a new or empty directory to write into")
    ex.add_argument("--merged", action="store_true",
                    help="LoRA: the base model with the adapter merged in (save_pretrained)")
    ex.add_argument("--push-to-hub", metavar="REPO",
                    help="then upload DIR to the Hugging Face Hub model repository REPO")


def cmd_export(args) -> int:
    from everlearn.runs.export import export_stage

    done = export_stage(args.run_dir, args.stage, args.out, merged=args.merged,
                        push_to_hub=args.push_to_hub)
    trained = f" ({'+'.join(done.stages)})" if done.stages else ""
    print(f"stage {done.phase}{trained}: {done.form} written to {done.out}")
    if done.pushed:
        print(f"pushed to https://huggingface.co/{done.pushed}")
    return 0


def cmd_run(args) -> int:
    from everlearn.report.tables import format_summary
    from everlearn.runs.runner import resume_run, start_run

    if args.resume:
        if args.config or args.overrides or args.preset or args.benchmark:
            raise EverlearnError("--resume takes the config from the run directory; "
                                 "do not pass CONFIG or overrides with it")
        path, results = resume_run(args.resume, quiet=args.quiet, base_cache=args.base_cache)
    else:
        bench = benchmark_overrides(args.benchmark, args.order, args.data_dir)
        cfg, source = load_run_config(args.config, args.overrides, args.preset, bench)
        path, results = start_run(cfg, args.output, quiet=args.quiet, source=source,
                                  base_cache=args.base_cache)
    from everlearn.parallel import distributed

    if not distributed.is_main():  # several processes: rank 0 prints and writes the report
        return 0
    print(format_summary(results))
    print(f"\nrun directory: {path}")
    try:  # the run is saved already; a report problem must not turn it into a failure
        from everlearn.report import write_report

        print(f"report: {write_report(path)}")
    except Exception as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"everlearn: warning: report not written ({msg}); "
              f"try `everlearn report {path}`", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from everlearn.report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_compare(args) -> int:
    from everlearn.report.compare import FORMATS, compare_runs, format_comparison

    if args.format not in FORMATS:
        raise EverlearnError(f"--format: expected one of {', '.join(FORMATS)}, "
                             f"got {args.format!r}")
    if not 0 < args.confidence < 1:
        raise EverlearnError(f"--confidence: expected a level between 0 and 1 (e.g. 0.9), "
                             f"got {args.confidence}")
    comparison = compare_runs(args.run_dirs, args.confidence)
    for path, why in comparison.skipped:  # also in the markdown and HTML; not in the CSV
        print(f"everlearn: warning: skipped: {path} ({why})", file=sys.stderr)
    text = format_comparison(comparison, args.format)
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise EverlearnError(f"{args.out}: cannot write ({exc.strerror})") from None
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_sweep(args) -> int:
    from everlearn.runs.sweep import plan_sweep, run_sweep

    if args.jobs < 1:
        raise EverlearnError(f"--jobs: expected an integer >= 1, got {args.jobs}")
    if args.resume:
        if args.config or args.grid or args.preset or args.output:
            raise EverlearnError("--resume takes the grid from the sweep directory; "
                                 "do not pass CONFIG, axes or --output with it")
        sweep_dir = args.resume
    else:
        sweep_dir = plan_sweep(args.config, args.grid, args.preset, args.output)
    return run_sweep(sweep_dir, args.jobs, args.quiet)


def cmd_eval(args) -> int:
    from everlearn.runs.eval_only import evaluate_config

    cfg, source = load_run_config(args.config, args.overrides, args.preset)
    scores = evaluate_config(cfg, args.weights, quiet=args.quiet, source=source)
    from everlearn.parallel import distributed

    if not distributed.is_main():  # several processes: every rank has the scores; one prints
        return 0
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        width = max(len(n) for n in scores)
        for name, s in scores.items():
            print(f"{name.ljust(width)}  {s['metric']:<12} {s['score']:8.2f}  (n={s['n']})")
    return 0


def cmd_ls(args) -> int:
    # torch-free: kinds and strategies are read from their declarations (everlearn.listing)
    from everlearn.data.builtin import list_builtin_tasks
    from everlearn.listing import kind_entries, strategy_entries
    from everlearn.models.source import EMBEDDED_MODELS
    from everlearn.presets import PRESETS
    from everlearn.schema import option_fields

    print("stage kinds (stage field `kind:`; metrics it may be scored by):")
    for kind in kind_entries():
        print(f"  {kind.name:<14} [{', '.join(kind.metrics)}] {kind.description}")
    print("\nstrategies:")
    for entry in strategy_entries():
        print(f"  {entry.name:<14} {entry.summary}")
        for opt, default, help_ in entry.options:
            print(f"  {'':<14}   {opt}={default!r}: {help_}")
    print("\nbuilt-in tasks (stage field `builtin:`):")
    for t in list_builtin_tasks():
        print(f"  {t.name:<14} [{t.metric}] {t.description}")
    from everlearn.data.builtin.suites import SUITES

    print("\nbuilt-in suites (`builtin:` + `periods: N` -> N stages; `builtin_options:`):")
    for s in SUITES.values():
        print(f"  {s.name:<14} [{s.kind}, {s.metric}] {s.description}")
        for opt, default, help_ in option_fields(s):
            print(f"  {'':<14}   {opt}={default!r}: {help_}")
    print("\nembedded models (model.name):")
    for name, desc in EMBEDDED_MODELS.items():
        print(f"  {name:<22} {desc}")
    _print_benchmarks()
    print("\npresets (`everlearn run` with no config runs `quickstart`):")
    for name, (desc, _) in PRESETS.items():
        print(f"  {name:<14} {desc}")
    return 0


def _print_benchmarks() -> None:
    from everlearn.data.benchmarks import benchmark_files, load_benchmark

    print("\nbenchmarks (`everlearn run --benchmark NAME --order K --data-dir DIR`, or "
          "`benchmark:` in a config):")
    for p in benchmark_files():
        b = load_benchmark(p)
        metrics = sorted({b.task_metric(t) or "default" for t in b.tasks})
        print(f"  {b.name:<14} {b.title}; {plural(len(b.tasks), 'task')} [{', '.join(metrics)}]; "
              f"layouts: {', '.join(b.layouts)}; published numbers: {len(b.published)}")
        for k, order in b.orders.items():
            print(f"  {'':<14}   order {k}: {' -> '.join(order)}")
        print(f"  {'':<14}   source: {b.sources.get('repository', '')} "
              f"({b.sources.get('paper', '')})")


def cmd_validate(args) -> int:
    from everlearn.stages.stream import build_stream
    from everlearn.strategies import build_strategy
    from everlearn.validation import check_before_run

    cfg, source = load_run_config(args.config, args.overrides, args.preset)
    stack = build_strategy(cfg.strategies, source, cfg.model.finetune)
    stream = build_stream(cfg, source)
    if cfg.text_stream is not None and stack.plan(stream.stages) is not None:
        raise ConfigError(f"{source}: strategies: a strategy that groups stages into phases "
                          "(joint) does not apply to a text_stream")
    found = check_before_run(cfg, source)
    strategy = "+".join(s.name for s in cfg.strategies)
    print(f"{source}: ok — {plural(len(stream), 'stage')}, strategy {strategy}")
    for st in stream:
        print(f"  {st.index}. {st.name} [{st.kind}, {st.metric}] train={len(st.train)} "
              f"test={len(st.test)}" + (f" labels={st.labels}" if st.labels else "")
              + (" images" if any(r.image for r in st.train + st.test) else "")
              + (" freeze_lm (alignment)" if st.freeze_lm else ""))
    if cfg.text_stream is not None:
        ts, b = cfg.text_stream, cfg.text_stream.boundaries
        budget = f"{ts.token_budget:,} tokens" if ts.token_budget else "all of it"
        where = {"fixed": f"every {b.every_tokens:,} tokens" if b.every_tokens else "",
                 "detector": "where the shift detector fires", "none": "none"}[b.mode]
        print(f"  text stream: the stages' training text in order, one token stream "
              f"(budget: {budget}); boundaries: {where}")
    if cfg.recycle is not None:
        rc = cfg.recycle
        update = (f"new base {rc.new_base}" if rc.new_base else
                  f"stage {stream.stages[-1].name} ({rc.update})")
        print(f"  recycle: adapters carried over the update ({update}) by "
              f"{', '.join(rc.policies)}")
    for line in found:  # the model (and new base) that will load
        print(f"  {line}")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # PEFT calls a transformers method that v5 deprecates; users cannot act on the warning.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command not in ("report", "compare", "sweep", "verify", "ls"):  # no transformers
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    # SIGTERM (a scheduler or `kill`) stops a run like Ctrl-C: finished phases stay saved, and
    # during training the trainer first finishes the step and writes a step checkpoint.
    signal.signal(signal.SIGTERM, _interrupt)
    # -q: transformers' and datasets' own bars too (switched back when the command ends)
    quiet_bars = args.command in ("run", "eval") and args.quiet
    restore_bars = library_bars_off() if quiet_bars else None
    try:
        return {"run": cmd_run, "eval": cmd_eval, "report": cmd_report, "compare": cmd_compare,
                "sweep": cmd_sweep, "ls": cmd_ls, "validate": cmd_validate,
                "verify": cmd_verify, "export": cmd_export}[args.command](args)
    except EverlearnError as exc:
        one_line = " ".join(str(exc).splitlines())  # e.g. a parser's message quoting input
        print(f"everlearn: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("everlearn: interrupted; finished stages (and, during training, the step "
              "reached) are saved (resume with --resume)", file=sys.stderr)
        return 130
    finally:
        if restore_bars is not None:
            restore_bars()
        if args.command in ("run", "eval"):  # torchrun: leave the process group before exit
            from everlearn.parallel import distributed

            distributed.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())

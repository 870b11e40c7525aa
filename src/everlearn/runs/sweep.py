"""``everlearn sweep``: a grid of runs (strategies x seeds x stream orders x any config field),
run one after another or in N local processes, then compared.

Grid syntax, after CONFIG:

* ``key=[a,b,...]`` is an axis: one value per point (``strategy=[seqft,replay]``,
  ``seed=[0,1,2]``, ``train.lr=[1e-4,3e-4]``, ``strategies.0.options.buffer_size=[50,200]``).
  The values are YAML, so a value may itself be a list or a mapping:
  ``strategy=[[replay,ewc],seqft]`` sweeps a composed stack against seqft.
* ``key=value`` (no brackets) is a fixed override applied to every point. To fix a list-valued
  field, give it as a one-value axis: ``stages.0.labels=[[yes,no]]``.
* ``order=[...]`` permutes the entries of ``stages``: ``0`` is the config's order and ``k`` the
  k-th of a fixed sequence of distinct permutations (seeded, the same for any stream with as
  many stages; at most n! - 1), or an explicit list of stage names:
  ``order=[[red,green,blue],[blue,red,green]]``. The resolved order is in each point's
  config.yaml and in sweep.json. Other overrides index stages in the config's order.

The points are the cartesian product of the axes, the first axis varying slowest. Each point
is an ordinary run directory ``SWEEP_DIR/NN-key=value_key=value/`` whose config.yaml (the
resolved config) is written before anything runs, so the sweep never needs the original CONFIG
again. ``SWEEP_DIR/sweep.json`` (rewritten atomically) lists the points and their status. Each
point runs as ``python -m everlearn run --resume POINT_DIR -q`` (for a fresh point that starts
from the base row) with its output in ``POINT_DIR/output.txt``. The points share
``SWEEP_DIR/cache`` (``--base-cache``): a base-row stage score is computed by the first point
that needs it and read by the others whose model, data and scoring settings are the same
(everlearn.runs.base_cache). With ``--jobs N`` each child
gets ``OMP_NUM_THREADS = MKL_NUM_THREADS = cores // N`` (unless set in the environment), so N
processes do not oversubscribe the CPU; on a GPU machine the N processes share the GPU(s).

``--resume SWEEP_DIR`` skips points whose results.json says complete, resumes half-done points
after their last finished stage and starts untouched ones. At the end SWEEP_DIR/compare.md,
.csv and .html compare every point that has results (see ``everlearn compare``): points that
differ only in seed or stream order are pooled into a mean and 95% confidence interval.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from everlearn import __version__
from everlearn.errors import ConfigError, EverlearnError
from everlearn.wording import plural

ORDER = "order"
CACHE = "cache"  # SWEEP_DIR/cache: what the points share (everlearn.runs.base_cache)
_log = logging.getLogger("everlearn")


@dataclass
class Axis:
    key: str
    values: list[Any]
    text: str  # the argument as given, for error messages


def _canonical(key: str) -> str:
    return "strategies" + key[len("strategy"):] if key.split(".")[0] == "strategy" else key


def parse_grid(args: list[str]) -> tuple[list[Axis], list[str]]:
    """``key=[a,b]`` arguments -> axes; ``key=value`` -> fixed overrides (checked later)."""
    axes: list[Axis] = []
    fixed: list[str] = []
    seen: dict[str, str] = {}
    for text in args:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{text!r}: expected key=[a,b,...] (an axis) or key=value")
        canon = _canonical(key)
        if canon in seen:
            raise ConfigError(f"{text!r}: {key} is already set by {seen[canon]!r}")
        seen[canon] = text
        raw = raw.strip()
        if not raw.startswith("["):
            if key == ORDER:
                raise ConfigError(f"{text!r}: expected a list, e.g. order=[0,1,2]")
            fixed.append(text)
            continue
        try:
            values = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{text!r}: invalid list ({problem})") from None
        if not isinstance(values, list):
            raise ConfigError(f"{text!r}: expected a list [a,b,...]")
        if not values:
            raise ConfigError(f"{text!r}: expected at least one value")
        axes.append(Axis(key, values, text))
    if not axes:
        raise ConfigError("expected at least one axis key=[a,b,...], e.g. seed=[0,1,2]")
    return axes, fixed


def expand(axes: list[Axis]) -> list[dict[str, Any]]:
    """The cartesian product, first axis varying slowest: [{key: value, ...}, ...]."""
    return [dict(zip([a.key for a in axes], combo))
            for combo in itertools.product(*[a.values for a in axes])]


def permutation(k: int, n: int) -> list[int]:
    """The k-th stream order of n stages: 0 is the identity, then distinct seeded shuffles."""
    if k < 0 or k >= math.factorial(n):
        raise ValueError(f"expected 0 <= order < {math.factorial(n)} ({n} stages have "
                         f"{math.factorial(n)} orders)")
    rng = random.Random(f"everlearn-order-{n}")
    seen = [list(range(n))]
    while len(seen) <= k:
        perm = list(range(n))
        rng.shuffle(perm)
        if perm not in seen:
            seen.append(perm)
    return seen[k]


def resolve_order(value: Any, names: list[str], text: str) -> list[int]:
    """An ``order`` axis value (number or list of stage names) -> stage indices."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return permutation(value, len(names))
        except ValueError as exc:
            raise ConfigError(f"{text!r}: {value}: {exc}") from None
    if isinstance(value, list) and sorted(map(str, value)) == sorted(names):
        return [names.index(str(v)) for v in value]
    raise ConfigError(f"{text!r}: {value!r}: expected an order number or a list of the stage "
                      f"names {names}")


def _label(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_label(v) for v in value)
    if isinstance(value, dict):
        head = [str(value["name"])] if "name" in value else []
        rest = [f"{k}-{_label(v)}" for k, v in value.items() if k != "name"]
        return "-".join(head + rest)
    return str(value)


def slugs(points: list[dict[str, Any]], axes: list[Axis]) -> list[str]:
    """``NN-key=value_key=value``: the index keeps them unique and in grid order."""
    short = {}
    for a in axes:
        parts = a.key.split(".")
        last = parts[-1]
        clash = sum(1 for b in axes if b.key.split(".")[-1] == last) > 1
        short[a.key] = a.key if clash or last == "name" or last.isdigit() else last
    width = max(2, len(str(len(points) - 1)))
    out = []
    for i, point in enumerate(points):
        parts = []
        for key, value in point.items():
            v = re.sub(r"[^A-Za-z0-9._+-]+", "-", _label(value))[:40] or "x"
            parts.append(f"{short[key]}={v}")
        out.append(f"{i:0{width}d}-" + "_".join(parts))
    return out


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: the override parser reads it back


# ---------------------------------------------------------------------------------------------
# Planning: a sweep directory with one resolved config per point and the manifest.


def plan_sweep(config: str | None, grid: list[str], preset: str | None,
               output: str | None) -> Path:
    """Validate every point, write SWEEP_DIR/<point>/config.yaml and SWEEP_DIR/sweep.json."""
    from everlearn.config import dump_yaml
    from everlearn.runs.config_source import split_overrides
    from everlearn.runs.run_dir import claim_run_dir, write_atomic, write_json

    config, grid = split_overrides(config, grid)
    axes, fixed = parse_grid(grid)
    points = expand(axes)
    names = slugs(points, axes)
    configs, source = point_configs(config, preset, axes, fixed, points, names)
    sweep_dir = _new_sweep_dir(output, configs[0], names)
    for name, cfg in zip(names, configs):
        claim_run_dir(sweep_dir / name)  # the points run with --resume: everlearn's own
        write_atomic(sweep_dir / name / "config.yaml", dump_yaml(cfg))
    manifest = {
        "everlearn_version": __version__,
        "config": str(Path(config).resolve()) if config else source,
        "axes": {a.key: a.values for a in axes},
        "overrides": fixed,
        "points": [{"dir": name, "values": point,
                    "stages": [s.name for s in cfg.stages], "status": "pending"}
                   for name, point, cfg in zip(names, points, configs)],
        "compare": ["compare.md", "compare.csv", "compare.html"],
    }
    write_json(sweep_dir / "sweep.json", manifest)  # last: its presence means the plan is whole
    return sweep_dir


def point_configs(config: str | None, preset: str | None, axes: list[Axis], fixed: list[str],
                  points: list[dict[str, Any]], names: list[str]):
    """(the resolved config of every point, checked, and where the base config came from)."""
    from everlearn.runs.config_source import load_run_config
    from everlearn.runs.tracking import check_available
    from everlearn.strategies import build_strategy

    configs, source = [], None
    for name, point in zip(names, points):
        overrides = fixed + [_override(k, v) for k, v in point.items() if k != ORDER]
        try:
            cfg, source = load_run_config(config, overrides, preset)
            build_strategy(cfg.strategies, source, cfg.model.finetune)  # names and options
        except ConfigError as exc:
            raise ConfigError(f"point {name}: {exc}") from None
        if ORDER in point:
            text = next(a.text for a in axes if a.key == ORDER)
            perm = resolve_order(point[ORDER], [s.name for s in cfg.stages], text)
            cfg.stages = [cfg.stages[i] for i in perm]
        check_available(cfg.tracker.backend)
        configs.append(cfg)
    return configs, source


def _new_sweep_dir(output: str | None, first, names: list[str]) -> Path:
    """``--output`` or OUTPUT_DIR/NAME-sweep-TIMESTAMP (``first``: the first point's config),
    checked to hold neither a sweep nor a run of any point."""
    from everlearn.runs.run_dir import check_new_run_dir

    if output:
        sweep_dir = Path(output)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        sweep_dir = Path(first.output_dir) / f"{first.name}-sweep-{stamp}"
    if (sweep_dir / "sweep.json").exists():
        raise ConfigError(f"{sweep_dir}: already holds a sweep; use --resume {sweep_dir} "
                          "or another --output")
    check_new_run_dir(sweep_dir)  # the sweep's own directory: new or empty, never the user's
    for name in names:
        if (sweep_dir / name / "config.yaml").exists():
            raise ConfigError(f"{sweep_dir / name}: already holds a run; use another --output")
    return sweep_dir


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    path = Path(sweep_dir) / "sweep.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(data["points"], list) and all("dir" in p for p in data["points"])
    except FileNotFoundError:
        raise EverlearnError(f"{path}: missing; not an everlearn sweep directory") from None
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
        raise EverlearnError(f"{path}: expected an everlearn sweep manifest with points") from None
    return data


def point_state(run_dir: Path) -> str:
    """complete (results.json says so), partial (some results) or new."""
    from everlearn.runs.results import run_state

    return run_state(run_dir)


# ---------------------------------------------------------------------------------------------
# Running: child processes, N at a time.


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(max(1, cores() // jobs))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class _Stop(Exception):
    """SIGTERM to the sweep: stop the children, save the manifest, exit."""


def run_sweep(sweep_dir: str | Path, jobs: int = 1, quiet: bool = False,
              echo: Callable[[str], None] = print) -> int:
    """Run every point not yet complete, then write the comparison. Exit status: 0 when all
    points are complete, 1 when some failed, 130 when interrupted. SWEEP_DIR/log.txt gets a
    line per point started and finished (each point's own run logs to its log.txt)."""
    from everlearn.runs.run_log import run_log

    if jobs < 1:
        raise ConfigError(f"--jobs: expected an integer >= 1, got {jobs}")
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)
    with run_log(sweep_dir):
        return _run_points(sweep_dir, manifest, jobs, quiet, echo)


def _run_points(sweep_dir: Path, manifest: dict[str, Any], jobs: int, quiet: bool,
                echo: Callable[[str], None]) -> int:
    points = manifest["points"]
    for p in points:
        p["status"] = point_state(sweep_dir / p["dir"])
    todo = deque(p for p in points if p["status"] != "complete")
    children = _Children(sweep_dir, manifest, jobs, quiet, echo)
    children.done = len(points) - len(todo)
    _log.info("sweep %s: %s, %d complete, %d to run, %d at a time", sweep_dir,
             plural(len(points), "point"), children.done, len(todo), jobs)
    if not quiet:
        threads = children.env["OMP_NUM_THREADS"]
        echo(f"sweep {sweep_dir}: {plural(len(points), 'point')}, {children.done} complete, "
             f"{len(todo)} to run; {min(jobs, max(1, len(todo)))} at a time, "
             f"{plural(int(threads) if threads.isdigit() else threads, 'thread')} each")
    children.save()
    if not children.run_all(todo):
        _log.info("sweep interrupted")
        print(f"everlearn: sweep interrupted; continue with `everlearn sweep --resume "
              f"{sweep_dir}`", file=sys.stderr)
        return 130
    write_comparison(sweep_dir, manifest, echo, quiet)
    failed = [p["dir"] for p in points if p["status"] != "complete"]
    _log.info("sweep finished: %d of %s complete%s", len(points) - len(failed),
             plural(len(points), "point"), f"; failed: {', '.join(failed)}" if failed else "")
    if failed:
        print(f"everlearn: error: {len(failed)} of {plural(len(points), 'point')} failed ("
              + ", ".join(failed) + f"; see their output.txt); fix the cause and run "
              f"`everlearn sweep --resume {sweep_dir}`", file=sys.stderr)
        return 1
    return 0


class _Children:
    """The points' child processes, ``jobs`` at a time, and the manifest they update."""

    def __init__(self, sweep_dir: Path, manifest: dict[str, Any], jobs: int, quiet: bool,
                 echo: Callable[[str], None]):
        self.sweep_dir, self.manifest, self.jobs = sweep_dir, manifest, jobs
        self.quiet, self.echo = quiet, echo
        self.env = child_env(jobs)
        self.running: dict[subprocess.Popen, tuple[dict, float, Any]] = {}
        self.done = 0

    def save(self) -> None:
        from everlearn.runs.run_dir import write_json

        write_json(self.sweep_dir / "sweep.json", self.manifest)

    def run_all(self, todo: deque) -> bool:
        """Run the points of ``todo``; False when interrupted (Ctrl-C or SIGTERM)."""
        def on_term(signum, frame):
            raise _Stop

        try:
            previous = signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread: no handler
            previous = None
        try:
            while todo or self.running:
                while todo and len(self.running) < self.jobs:
                    self._start(todo.popleft())
                time.sleep(0.1)
                for proc in [q for q in self.running if q.poll() is not None]:
                    self._finish(proc)
        except (KeyboardInterrupt, _Stop):
            self._stop_all()
            return False
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return True

    def _start(self, p: dict[str, Any]) -> None:
        run_dir = self.sweep_dir / p["dir"]
        log = open(run_dir / "output.txt", "ab")
        cmd = [sys.executable, "-m", "everlearn", "run", "--resume", str(run_dir), "-q",
               "--base-cache", str(self.sweep_dir / CACHE)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                stdin=subprocess.DEVNULL)
        p["status"] = "running"
        self.running[proc] = (p, time.perf_counter(), log)
        self.save()
        _log.info("point %s: started (process %d; its log: %s)", p["dir"], proc.pid,
                  run_dir / "log.txt")

    def _finish(self, proc: subprocess.Popen) -> None:
        p, t0, log = self.running.pop(proc)
        log.close()
        self.done += 1
        state = point_state(self.sweep_dir / p["dir"])
        p["status"] = "complete" if proc.returncode == 0 and state == "complete" else "failed"
        p["exit_code"] = proc.returncode
        self.save()
        _log.info("point %s: %s, exit %d, %.1f s%s", p["dir"], p["status"], proc.returncode,
                  time.perf_counter() - t0, f" ({_last_line(self.sweep_dir / p['dir'])})"
                  if p["status"] == "failed" else "")
        if not self.quiet:
            msg = f"{time.perf_counter() - t0:.1f} s"
            if p["status"] == "failed":
                msg = f"exit {proc.returncode}: {_last_line(self.sweep_dir / p['dir'])}"
            self.echo(f"[{self.done}/{len(self.manifest['points'])}] {p['dir']}: "
                      f"{p['status']} ({msg})")

    def _stop_all(self) -> None:
        for proc in self.running:  # Ctrl-C reached them too; SIGTERM covers a kill of the sweep
            if proc.poll() is None:
                proc.terminate()
        for proc, (p, _, log) in self.running.items():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            p["status"] = "interrupted"
            _log.info("point %s: interrupted", p["dir"])
        self.save()


def _last_line(run_dir: Path) -> str:
    try:
        lines = (run_dir / "output.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "no output"
    lines = [ln.strip() for ln in lines.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def write_comparison(sweep_dir: Path, manifest: dict[str, Any],
                     echo: Callable[[str], None] = print, quiet: bool = False) -> list[Path]:
    """SWEEP_DIR/compare.md, .csv and .html over every point that has results."""
    from everlearn.report.compare import compare_runs, format_comparison
    from everlearn.runs.run_dir import write_atomic

    dirs = [sweep_dir / p["dir"] for p in manifest["points"]
            if (sweep_dir / p["dir"] / "results.json").is_file()]
    if not dirs:
        return []
    groups = compare_runs(dirs)
    written = []
    for fmt, ext in (("markdown", "md"), ("csv", "csv"), ("html", "html")):
        path = sweep_dir / f"compare.{ext}"
        text = format_comparison(groups, fmt)
        write_atomic(path, text)
        written.append(path)
        if fmt == "markdown" and not quiet:
            echo("")
            echo(text.split("\n\nMean ±")[0])
    if not quiet:
        echo("")
    echo(f"comparison: {', '.join(str(p) for p in written)}")
    _log.info("comparison: %s", ", ".join(str(p) for p in written))
    return written

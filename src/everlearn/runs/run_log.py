"""RUN_DIR/log.txt: what a run did, in order, and why it stopped.

Every run mode (a stream, a text stream, recycling; a sweep for its own directory) appends
its log there: the resolved config, each phase (its stages, strategies, steps, loss, cost),
each evaluation (row, stage, metric, value), Python warnings and everlearn's own, and, when the
run fails, the error with its traceback (an interrupted run says so). The console keeps what it
showed before: warnings and errors of the ``everlearn`` logger; a failure's traceback goes to
the file only (the command line prints the one-line error).

:func:`run_log` attaches the file for the length of a run and removes its handlers at the end,
so a process that runs several times (a notebook, ``cli.main`` called repeatedly, the tests)
does not pile up handlers or write one run's lines into another's log. Nested uses for the
same directory (``start_run`` around ``Run.execute``) attach once; the outermost owns the file.
In a multi-process run rank 0 writes the file; the other ranks log errors only.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

from everlearn.parallel import distributed as dist

log = logging.getLogger("everlearn")
LOG_FILE = "log.txt"
FORMAT = "%(asctime)s %(levelname)s %(message)s"
# py.warnings: where logging.captureWarnings sends Python warnings
LOGGERS = (log, logging.getLogger("py.warnings"))


class _ConsoleFilter(logging.Filter):
    """Keeps records marked ``file_only`` (a failure's traceback) off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def attached(path: Path) -> bool:
    """Whether this process's everlearn log already writes to ``path``/log.txt."""
    target = str((path / LOG_FILE).absolute())
    return any(getattr(h, "baseFilename", None) == target for h in log.handlers)


@contextlib.contextmanager
def run_log(path: str | Path) -> Iterator[None]:
    """Inside the block, the everlearn log and Python warnings go to ``path``/log.txt (created
    with the directory when missing); an exception leaving the block is logged with its
    traceback. The handlers are removed at the end. A no-op when the log already goes there."""
    path = Path(path)
    if attached(path):
        yield
        return
    undo = _attach(path)
    try:
        yield
    except KeyboardInterrupt:
        log.info("interrupted (Ctrl-C or SIGTERM); finished phases are saved")
        raise
    except BaseException as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        log.error("run failed: %s: %s", type(exc).__name__, msg, exc_info=True,
                  extra={"file_only": True})
        raise
    finally:
        undo()


def _attach(path: Path):
    """Add the file (rank 0) and console handlers; returns what undoes it."""
    before = [(lg, lg.level, lg.propagate) for lg in LOGGERS]
    added: list[tuple[logging.Logger, logging.Handler]] = []
    # captureWarnings(True) installs logging's own showwarning; a user's capture stays as it is
    capture = dist.is_main() and getattr(warnings.showwarning, "__module__", "") != "logging"
    if dist.is_main():
        path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path / LOG_FILE, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        added += [(lg, handler) for lg in LOGGERS]
        log.setLevel(logging.INFO)  # INFO goes to the file; the console shows WARNING and up
    else:  # one log file, written by rank 0; the others log errors only
        log.setLevel(logging.ERROR)
    if not any(type(h) is logging.StreamHandler for h in log.handlers):
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        console.addFilter(_ConsoleFilter())
        added.append((log, console))
    for lg, h in added:
        lg.addHandler(h)
    log.propagate = False  # the console handler above prints everlearn's records once
    if capture:
        logging.captureWarnings(True)

    def undo() -> None:
        for lg, h in added:
            lg.removeHandler(h)
        for h in {h for _, h in added}:
            h.close()
        for lg, level, propagate in before:
            lg.setLevel(level)
            lg.propagate = propagate
        if capture:
            logging.captureWarnings(False)

    return undo


# --- the lines a run logs ---------------------------------------------------------------------
COST_FIELDS = (("steps", "steps", "{}"), ("tokens_trained", "tokens", "{:,}"),
               ("tokens_per_s", "tok/s", "{:.0f}"), ("wall_time_s", "wall", "{:.1f} s"),
               ("train_time_s", "train", "{:.1f} s"), ("eval_time_s", "eval", "{:.1f} s"),
               ("strategy_time_s", "strategy", "{:.1f} s"), ("peak_memory_mb", "peak", "{:.0f} MB"),
               ("trainable_params", "trainable", "{:,}"), ("buffer_size", "buffer", "{}"),
               ("skipped_batches", "skipped batches", "{}"))


def score_line(row: int, stage, score) -> str:
    """One evaluation: ``row 2: red accuracy = 66.67 (n=6)``, with the stage's side metrics."""
    side = "".join(f", {k} = {_number(v)}" for k, v in (score.side or {}).items())
    return f"row {row}: {stage.name} {stage.metric} = {_number(score.score)} (n={score.n}){side}"


def cost_line(cost: dict) -> str:
    """A phase's cost in one line (the fields of results.json's ``cost`` entry that it has)."""
    parts = [f"{label} {fmt.format(cost[key])}" for key, label, fmt in COST_FIELDS
             if cost.get(key) is not None]
    if cost.get("final_loss") is not None:
        parts.insert(1, f"final loss {cost['final_loss']:.4f}")
    return f"phase {cost.get('phase')} cost: " + ", ".join(parts)


def _number(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)

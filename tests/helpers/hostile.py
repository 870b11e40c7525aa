"""The table of hostile inputs: each case a command, the exit code it must end with and what its
one line must name; generated from the config fields' declared ranges where that helps."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from everlearn.config import RunConfig
from everlearn.schema import field_range

CONFIG = "stream.yaml"  # the config file every case writes into its workspace


@dataclass
class Case:
    """One hostile input. ``edit`` changes the valid config (a dict) in place; ``text``, when
    set, is the config file's whole text instead; ``argv`` the command after the program name,
    ``{cfg}``, ``{ws}`` and ``{run}`` filled in (the config file, the workspace, a run
    directory that may be written); ``prepare`` makes files in the workspace first; ``code``
    the exit status; ``named``: what the one line must hold (``{ws}`` filled in); ``warn``: a
    stderr line that must hold it on success instead."""

    id: str
    category: str
    argv: list[str]
    named: list[str]
    code: int = 2
    edit: Callable[[dict], None] | None = None
    text: str | None = None
    prepare: Callable[[Path], None] | None = None
    warn: bool = False
    writes_run: bool = False  # the run directory may change (and nothing else)
    needs_run: bool = False  # the workspace holds a finished run at {ws}/done


def set_path(cfg: dict, dotted: str, value: Any) -> None:
    """``cfg`` with the field at ``dotted`` (``train.lr``, ``stages.0.steps``) set."""
    keys = [int(k) if k.isdigit() else k for k in dotted.split(".")]
    node = cfg
    for key in keys[:-1]:
        if isinstance(node, dict) and node.get(key) is None:
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


# --- generated from the fields -------------------------------------------------------------
def plain(tp: Any) -> Any:
    """``X | None`` -> X."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def section_fields(cls: type, prefix: str):
    """(dotted name, type, field) of every leaf field of a config section, sections recursed
    into (lists of sections: their first entry)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = plain(hints[f.name])
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from section_fields(tp, name + ".")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            if f.name == "stages":  # strategies are checked by their own options below
                yield from section_fields(typing.get_args(tp)[0], name + ".0.")
        else:
            yield name, tp, f


def out_of_range(tp: Any, f) -> list[Any]:
    """Values the field's declared range refuses."""
    rng = field_range(f)
    if rng is None:
        return []
    integer = tp is int
    step = 1 if integer else 0.5
    values = []
    if rng.gt is not None:
        values += [rng.gt, rng.gt - step]
    if rng.ge is not None:
        values += [rng.ge - step, rng.ge - 100]
    if rng.lt is not None:
        values += [rng.lt, rng.lt + step]
    if rng.le is not None:
        values += [rng.le + step, 2 ** 40 if integer else 1e300]
    if not integer and (rng.finite or rng.gt is not None or rng.ge is not None):
        values += [math.nan]
    if rng.finite and not integer:
        values += [math.inf, -math.inf]
    if rng.min_len == 1 and tp is str:
        values += [""]
    return [v for v in values if not (isinstance(v, float) and v.is_integer() and integer)]


def wrong_types(tp: Any) -> list[Any]:
    """Values of another type than the field's."""
    if typing.get_origin(tp) is Literal:
        return ["no-such-choice", 3]
    if tp is bool:
        return ["maybe", 2]
    if tp in (int, float):
        return ["abc", [1], True] if tp is int else ["abc", {"a": 1}]
    if tp is str:
        return [[1, 2], {"a": 1}]
    if typing.get_origin(tp) is list:
        return [{"a": 1}]
    return []


# fields whose generated values are refused by a check of their own (not the field's type or
# range), or that need another section to mean anything: covered by the written cases
SKIP = {"stages.0.train", "stages.0.test", "stages.0.builtin", "stages.0.fields",
        "stages.0.builtin_options", "stages.0.name", "stages.0.kind", "stages.0.metric",
        "stages.0.train.fields", "stages.0.test.fields", "stages.0.periods",
        "model.name", "model.gguf_file", "model.revision", "name", "output_dir",
        "stages.0.task_id", "stages.0.train.split", "stages.0.test.split",
        "tracker.dir", "tracker.project", "eval.lm_eval.include_path", "recycle.new_base",
        "stages.0.train.path", "stages.0.test.path", "stages.0.train.format",
        "stages.0.test.format", "model.lora.target_modules"}


def field_cases() -> list[Case]:
    """One `everlearn validate` case per refused value of every field: out of its range, or
    of another type."""
    cases = []
    for dotted, tp, f in section_fields(RunConfig, ""):
        if dotted in SKIP:
            continue
        seen: set[str] = set()
        for kind, values in (("range", out_of_range(tp, f)), ("type", wrong_types(tp))):
            for value in values:
                if repr(value) in seen:
                    continue
                seen.add(repr(value))
                cases.append(Case(
                    id=f"{dotted}={value!r}", category=f"field {kind}",
                    argv=["validate", "{cfg}"], named=[CONFIG, f"{dotted}:"],
                    edit=lambda c, d=dotted, v=value: set_path(c, d, v)))
    return cases


STRATEGY_OPTIONS = {  # strategy: (option, refused values)
    "replay": [("buffer_size", [0, -1, "x"]), ("mix_ratio", [-0.1, 1.5, "x"]),
               ("selection", ["nope"])],
    "ewc": [("lam", [-1, "x"])],
    "l2": [("lam", [-1])],
    "general_mix": [("ratio", [1, -0.5]), ("path", ["", "{ws}/no-such-corpus.jsonl"])],
    "der": [("buffer_size", [0]), ("alpha", [-1])],
    "agem": [("buffer_size", [0])],
}


def strategy_cases() -> list[Case]:
    cases = []
    for name, options in STRATEGY_OPTIONS.items():
        for option, values in options:
            for value in values:
                cases.append(Case(
                    id=f"strategies.{name}.{option}={value!r}", category="strategy option",
                    argv=["validate", "{cfg}"],
                    named=[CONFIG, f"strategies.0.options.{option}:"],
                    edit=lambda c, n=name, o=option, v=value: c.update(strategies=[
                        {"name": n, o: v}])))
        cases.append(Case(id=f"strategies.{name}.unknown", category="strategy option",
                          argv=["validate", "{cfg}"],
                          named=[CONFIG, "strategies.0.options.no_such_option: unknown field"],
                          edit=lambda c, n=name: c.update(strategies=[
                              {"name": n, "no_such_option": 1}])))
    return cases


# --- data files ----------------------------------------------------------------------------
GOOD = '{"prompt": "q", "response": "alpha"}\n'
BAD_LINES = {  # a JSONL line (after one good one) and what its error names
    "invalid_json": ("{nope", "line 2: invalid JSON"),
    "not_an_object": ("[1, 2]", "record 1: expected an object, got list"),
    "no_prompt": ('{"response": "x"}', "record 1: prompt:"),
    "prompt_number": ('{"prompt": 5, "response": "x"}', "record 1: prompt:"),
    "response_number": ('{"prompt": "q", "response": 5}', "record 1: response: expected a "
                                                          "string, got int"),
    "response_empty": ('{"prompt": "q", "response": ""}', "record 1: response: empty"),
    "response_null": ('{"prompt": "q", "response": null}', "record 1: response:"),
    "deep": ("[" * 100_000 + "]" * 100_000, "line 2: nested too deeply"),
    "deep_object": ('{"a":' * 50_000 + "1" + "}" * 50_000, "line 2: nested too deeply"),
    "truncated": ('{"prompt": "q", "resp', "line 2: invalid JSON"),
    "nul_bytes": ('{"prompt": "q\x00", "response": 1}', "line 2: invalid JSON"),
}


def data_cases() -> list[Case]:
    cases = []
    for split in ("train", "test"):
        for stage in (0, 1):
            for name, (line, named) in BAD_LINES.items():
                file = f"bad_{split}_{stage}_{name}.jsonl"

                def prepare(ws, file=file, line=line):
                    (ws / file).write_text(GOOD + line + "\n", encoding="utf-8")

                cases.append(Case(
                    id=f"data.stages.{stage}.{split}.{name}", category="data file",
                    argv=["validate", "{cfg}"], named=[file, named], prepare=prepare,
                    edit=lambda c, s=stage, sp=split, f=file: c["stages"][s].update(
                        {sp: f"{{ws}}/{f}"})))
            cases.append(Case(
                id=f"data.stages.{stage}.{split}.missing", category="data file",
                argv=["validate", "{cfg}"], named=["no-such.jsonl: file not found"],
                edit=lambda c, s=stage, sp=split: c["stages"][s].update(
                    {sp: "{ws}/no-such.jsonl"})))
            cases.append(Case(
                id=f"data.stages.{stage}.{split}.empty", category="data file",
                argv=["validate", "{cfg}"], named=["empty.jsonl: no records found"],
                prepare=lambda ws: (ws / "empty.jsonl").write_text(""),
                edit=lambda c, s=stage, sp=split: c["stages"][s].update(
                    {sp: "{ws}/empty.jsonl"})))
    return cases


# --- written by hand: the cases of the issue -----------------------------------------------
def _user_project(ws: Path) -> None:
    (ws / "proj").mkdir()
    (ws / "proj" / "config.yaml").write_text("# my own notes\nseed: 0\n")


def _config_in_project(ws: Path) -> None:
    (ws / "proj").mkdir()
    (ws / "proj" / "config.yaml").write_text("# my comments\n" + (ws / CONFIG).read_text())


def _a_file(ws: Path) -> None:
    (ws / "afile").write_text("mine\n")


def _dangling(ws: Path) -> None:
    (ws / "dangling").symlink_to(ws / "nowhere")


def _garbage_weights(ws: Path) -> None:
    (ws / "trainable.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage")


def _bad_gguf(ws: Path) -> None:
    (ws / "bad.gguf").write_bytes(b"not a gguf file")


def _u2028(ws: Path) -> None:
    rows = [{"prompt": f"line\u2028break {i}", "response": "alpha"} for i in range(8)]
    (ws / "u2028.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                            for r in rows), encoding="utf-8")


def _lora(c: dict, **lora) -> None:
    c["model"].update(finetune="lora", lora=lora)


def hand_cases() -> list[Case]:
    """The cases of the issue, each as it was found (ids: ``issue: ...``)."""
    cases = written_cases()
    for case in cases:
        case.id = f"issue: {case.id}"
    return cases


def written_cases() -> list[Case]:
    return run_dir_cases() + value_cases() + file_cases()


V = ["validate", "{cfg}"]  # a config checked
RUN = ["run", "{cfg}", "--output", "{run}", "-q"]  # a config run into {run}


def run_dir_cases() -> list[Case]:
    """Files the user owns: a run writes only into a directory everlearn made."""
    v, c = V, Case
    return [
        c("output=user project", "run directory", ["run", "{cfg}", "--output", "{ws}/proj",
                                                   "-q"],
          ["proj: holds files everlearn did not write"], prepare=_user_project),
        c("output=existing file", "run directory", ["run", "{cfg}", "--output", "{ws}/afile",
                                                    "-q"],
          ["afile: exists and is not a directory"], prepare=_a_file),
        c("output=under a file", "run directory", ["run", "{cfg}", "--output",
                                                   "{ws}/afile/run", "-q"],
          ["afile is a file, not a directory"], prepare=_a_file),
        c("output=dangling symlink", "run directory", ["run", "{cfg}", "--output",
                                                       "{ws}/dangling", "-q"],
          ["dangling: a symbolic link to nothing"], prepare=_dangling),
        c("output=''", "run directory", ["run", "{cfg}", "--output", "", "-q"],
          ["--output: expected a directory"]),
        c("output=the config's own directory", "run directory",
          ["run", "{ws}/proj/config.yaml", "--output", "{ws}/proj", "-q"],
          ["proj: holds files everlearn did not write"], prepare=_config_in_project),
        c("name=../../escaped", "run directory", ["run", "{cfg}", "-q"], [CONFIG, "name:"],
          edit=lambda c: c.update(name="../../escaped")),
        c("name=absolute", "run directory", ["run", "{cfg}", "-q"], [CONFIG, "name:"],
          edit=lambda c: c.update(name="/tmp/absolute-run")),
        c("name=a/b", "run directory", v, [CONFIG, "name:"], edit=lambda c: c.update(name="a/b")),
        c("resume=user project", "run directory", ["run", "--resume", "{ws}/proj", "-q"],
          ["proj: not a run directory everlearn made"], prepare=_user_project),
        c("resume=no config", "run directory", ["run", "--resume", "{ws}", "-q"],
          ["config.yaml: missing"]),
    ]


def value_cases() -> list[Case]:
    """Values refused in one line before anything runs."""
    v, run, c = V, RUN, Case
    return [
        c("train.steps=0", "value", v, [CONFIG, "train.steps:"],
          edit=lambda c: c["train"].update(steps=0)),
        c("train.steps=-5", "value", v, [CONFIG, "train.steps:"],
          edit=lambda c: c["train"].update(steps=-5)),
        c("train.weight_decay=-1", "value", v, [CONFIG, "train.weight_decay:"],
          edit=lambda c: c["train"].update(weight_decay=-1)),
        c("model.lora.dropout=5", "value", v, [CONFIG, "model.lora.dropout:"],
          edit=lambda c: _lora(c, dropout=5)),
        c("model.lora.alpha=-16", "value", v, [CONFIG, "model.lora.alpha:"],
          edit=lambda c: _lora(c, alpha=-16)),
        c("model.lora.target_modules=[nope]", "value", run,
          [CONFIG, "model.lora.target_modules: ['nope'] match no module"],
          edit=lambda c: _lora(c, target_modules=["nope"]), writes_run=True),
        c("model.lora.target_modules=[]", "value", v, [CONFIG, "model.lora.target_modules:"],
          edit=lambda c: _lora(c, target_modules=[])),
        c("seed=-1", "value", v, [CONFIG, "seed:"], edit=lambda c: c.update(seed=-1)),
        c("seed=2**40", "value", v, [CONFIG, "seed:"], edit=lambda c: c.update(seed=2 ** 40)),
        c("eval.max_new_tokens=0", "value", v, [CONFIG, "eval.max_new_tokens:"],
          edit=lambda c: c["eval"].update(max_new_tokens=0)),
        c("eval.max_new_tokens=-3", "value", v, [CONFIG, "eval.max_new_tokens:"],
          edit=lambda c: c["eval"].update(max_new_tokens=-3)),
        c("train.epochs=-1", "value", v, [CONFIG, "train.epochs:"],
          edit=lambda c: c["train"].update(epochs=-1, steps=None)),
        c("train.epochs=0", "value", v, [CONFIG, "train.epochs:"],
          edit=lambda c: c["train"].update(epochs=0, steps=None)),
        c("train.max_grad_norm=-1", "value", v, [CONFIG, "train.max_grad_norm:"],
          edit=lambda c: c["train"].update(max_grad_norm=-1)),
        c("labels=['', '']", "value", v, [CONFIG, "stages.0.labels:"],
          edit=lambda c: c["stages"][0].update(labels=["", ""])),
        c("labels never in the answers", "value", v, [CONFIG, "stages.0 ('red'): labels: none "
                                                      "of 'zulu', 'yankee' occurs"],
          code=0, warn=True, edit=lambda c: c["stages"][0].update(labels=["zulu", "yankee"])),
        c("duplicate key", "value", v, [CONFIG, "seed"], text="seed: 0\nseed: 7\n"),
        c("train.lr=.inf", "value", v, [CONFIG, "train.lr: expected a finite number"],
          edit=lambda c: c["train"].update(lr=math.inf)),
        c("train.lr=1e400 (override)", "value", ["validate", "{cfg}", "train.lr=1e400"],
          [CONFIG, "train.lr: expected a finite number"]),
        c("train.lr=abc (override)", "value", ["validate", "{cfg}", "train.lr=abc"],
          [CONFIG, "train.lr: expected a number"]),
        c("unknown override", "value", ["validate", "{cfg}", "train.nope=1"],
          [CONFIG, "train.nope: unknown field"]),
        c("override without =", "value", ["validate", "{cfg}", "train.lr"], ["train.lr"]),
        c("not a mapping", "value", v, [CONFIG], text="- just\n- a list\n"),
        c("YAML syntax", "value", v, [CONFIG], text="train: {lr: [\n"),
        c("empty file", "value", v, [CONFIG], text=""),
        c("stages=[]", "value", v, [CONFIG, "stages:"], edit=lambda c: c.update(stages=[])),
        c("unknown strategy", "value", v, [CONFIG, "strategies.0.name:"],
          edit=lambda c: c.update(strategies=[{"name": "nope"}])),
        c("unknown builtin", "value", v, [CONFIG, "stages.0"],
          edit=lambda c: c["stages"].__setitem__(0, {"builtin": "no-such-task"})),
        c("repeated stage name", "value", v, [CONFIG, "stages"],
          edit=lambda c: c["stages"][1].update(name="red")),
        c("config missing", "value", ["validate", "{ws}/nothing.yaml"], ["nothing.yaml"]),
    ]


def file_cases() -> list[Case]:
    """Files everlearn reads: models, weights, data."""
    v, run, c = V, RUN, Case
    return [
        c("model.name unknown", "model", run,
          [CONFIG, "model.name: 'no-such-model' is not a local directory", "Hub is offline"],
          edit=lambda c: c["model"].update(name="no-such-model"), writes_run=True),
        c("model.name unknown (validate)", "model", v,
          [CONFIG, "model.name: 'no-such-model' is not a local directory", "Hub is offline"],
          edit=lambda c: c["model"].update(name="no-such-model")),
        c("model.name bad gguf (validate)", "model", v,
          [CONFIG, "model.name: cannot load the config and tokenizer of", "bad.gguf"],
          edit=lambda c: c["model"].update(name="{ws}/bad.gguf"), prepare=_bad_gguf),
        c("model.name missing directory", "model", run, [CONFIG, "model.name: path"],
          edit=lambda c: c["model"].update(name="{ws}/no-model-dir"), writes_run=True),
        c("model.name bad gguf", "model", run, [CONFIG, "model.name: cannot load", "bad.gguf"],
          edit=lambda c: c["model"].update(name="{ws}/bad.gguf"), prepare=_bad_gguf,
          writes_run=True),
        c("model.name missing gguf", "model", run, [CONFIG, "model.name: GGUF file"],
          edit=lambda c: c["model"].update(name="{ws}/none.gguf"), writes_run=True),
        c("general_mix path missing", "data file", v,
          [CONFIG, "strategies.0.options.path: ", "no-corpus.jsonl: file not found"],
          edit=lambda c: c.update(strategies=[{"name": "general_mix",
                                              "path": "{ws}/no-corpus.jsonl"}])),
        c("U+2028 inside a string", "data file", v, [CONFIG], code=0,
          prepare=_u2028, edit=lambda c: c["stages"][0].update(train="{ws}/u2028.jsonl")),
        c("eval --weights garbage", "model", ["eval", "{cfg}", "--weights",
                                              "{ws}/trainable.safetensors", "-q"],
          ["trainable.safetensors: not a valid safetensors checkpoint"],
          prepare=_garbage_weights),
        c("eval --weights missing", "model", ["eval", "{cfg}", "--weights", "{ws}/nothing",
                                              "-q"], ["nothing"]),
    ]


# --- resume on a damaged results.json (a finished run at {ws}/done) ------------------------
RESUME_DAMAGES: dict[str, tuple[Callable[[dict], Any] | None, str]] = {
    "string cell": (lambda r: r["R"][1].__setitem__(0, "x"), "R[1][0]: expected a number"),
    "short row": (lambda r: r["R"][2].pop(), "R[2]: expected a list of 2 scores"),
    "row not a list": (lambda r: r["R"].__setitem__(1, 3), "R[1]: expected a list"),
    "nan-like cell": (lambda r: r["R"][2].__setitem__(1, True), "R[2][1]: expected a number"),
    "cost missing": (lambda r: r.__delitem__("cost"), "cost: expected a list, got NoneType"),
    "cost entry": (lambda r: r["cost"].__setitem__(0, "x"), "cost[0]: expected the cost"),
    "stages a string": (lambda r: r.update(stages="x"), "stages: expected a list"),
    "config a list": (lambda r: r.update(config=[1]), "config: expected dict"),
    "not an object": (lambda r: [1], "expected a JSON object, got list"),
    "truncated": (None, "not valid JSON"),
}


def damage_results(run: Path, damage: Callable[[dict], Any] | None) -> None:
    path = run / "results.json"
    text = path.read_text()
    if damage is None:
        path.write_text(text[:len(text) // 2])
        return
    data = json.loads(text)
    replaced = damage(data)
    path.write_text(json.dumps(replaced if isinstance(replaced, list) else data))


def resume_cases() -> list[Case]:
    cases = []
    for name, (damage, named) in RESUME_DAMAGES.items():
        cases.append(Case(
            id=f"resume: results.json {name}", category="resume", code=0, warn=True,
            argv=["run", "--resume", "{ws}/done", "-q"], named=["results.json: " + named],
            prepare=lambda ws, d=damage: damage_results(ws / "done", d), writes_run=True,
            needs_run=True))
    cases.append(Case(
        id="resume: edited lr", category="resume", argv=["run", "--resume", "{ws}/done", "-q"],
        named=["done/config.yaml: train.lr: changed since the run started"], needs_run=True,
        prepare=lambda ws: edit_run_config(ws / "done", "lr: 0.003", "lr: 0.03")))
    cases.append(Case(
        id="resume: with a config", category="resume",
        argv=["run", "{cfg}", "--resume", "{ws}/done", "-q"],
        named=["--resume takes the config from the run directory"], needs_run=True))
    return cases


def edit_run_config(run: Path, old: str, new: str) -> None:
    path = run / "config.yaml"
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new))


def all_cases() -> list[Case]:
    return field_cases() + strategy_cases() + data_cases() + hand_cases() + resume_cases()


# --- what a case may change ----------------------------------------------------------------
def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """{relative path: sha256 (or the link target)} of every file and link under ``root``,
    ``skip`` and what is under it left out."""
    out = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_symlink():
            out[str(p.relative_to(root))] = "-> " + str(p.readlink())
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def filled(value: Any, ws: Path) -> Any:
    """``value`` with ``{ws}`` replaced by the workspace, in every string it holds."""
    if isinstance(value, str):
        return value.replace("{ws}", str(ws))
    if isinstance(value, list):
        return [filled(v, ws) for v in value]
    if isinstance(value, dict):
        return {k: filled(v, ws) for k, v in value.items()}
    return value


def config_for(case: Case, base: dict, ws: Path) -> dict:
    cfg = copy.deepcopy(base)
    if case.edit is not None:
        case.edit(cfg)
    return filled(cfg, ws)



@contextlib.contextmanager
def console_logging():
    """Inside the block the CLI's log handlers are made afresh (so they write to the stderr of
    the command being run, not of an earlier one); the ones before are put back after."""
    root, ours = logging.getLogger(), logging.getLogger("everlearn")
    saved = root.handlers[:], ours.handlers[:], ours.propagate, ours.level
    root.handlers, ours.handlers = [], []
    try:
        yield
    finally:
        for h in root.handlers + ours.handlers:
            h.close()
        root.handlers, ours.handlers = saved[0], saved[1]
        ours.propagate, ours.level = saved[2], saved[3]

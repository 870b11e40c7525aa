"""Readers: JSON/JSONL/CSV records, SuperNI task JSON, plain text and Hugging Face datasets ->
Records.

Every reader returns ``list[Record]``; every problem raises ``DataError`` naming the file, the
record and the field. Field names follow the common conventions (prompt/response, Alpaca
instruction/input/output, chat messages, ShareGPT conversations, raw text); ``fields`` renames
source fields first. Which reader a record goes through, and which file formats a stage may
use, is its kind's (:mod:`everlearn.stages`): ``text_record``, ``instruction_record``,
``pair_record`` and ``edit_record`` are the readers the kinds name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from everlearn.data.csv_rows import read_csv_rows
from everlearn.data.records import Record
from everlearn.errors import DataError
from everlearn.stages import get_kind, kinds_with

TEXT_SUFFIXES = {".txt", ".md", ".text"}


def detect_format(path: str) -> str:
    """Guess a format from a path: hf:/builtin: prefixes, suffixes, or a saved HF dataset dir."""
    if path.startswith("hf:"):
        return "hf"
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
            return "hf"
        raise DataError(f"{path}: a directory, but not a saved Hugging Face dataset")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "json"  # SuperNI vs list of records is decided from the content
    if suffix == ".csv":
        return "csv"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise DataError(f"{path}: unknown data format; expected .jsonl, .json, .csv, .txt or "
                    "hf:<name>")


def read_source(path: str, fmt: str, kind: str, fields: dict[str, str], split: str | None,
                task: str) -> list[Record]:
    """Read one split of a stage's data into records of the stage's kind."""
    spec = get_kind(kind)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "hf":
        rows = _read_hf(path, split)
        return [to_record(r, spec.read_record, fields, path, i, task) for i, r in enumerate(rows)]
    if fmt == "olora":  # a benchmark layout (everlearn.data.benchmarks)
        from everlearn.data.benchmarks.layouts import read_olora

        return read_olora(path, task)
    if fmt in ("twiki_probes", "ckl_lama"):  # temporal benchmarks' probe files
        from everlearn.data.benchmarks import probe_files

        return getattr(probe_files, f"read_{fmt}")(path, task)
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    if fmt == "text":
        if not spec.plain_text_files:
            raise DataError(f"{path}: plain text is only for {kinds_with('plain_text_files')} "
                            f"stages (this stage is {kind})")
        return _read_text(p, task)
    if fmt == "csv":
        rows = read_csv_rows(p)
        return [to_record(r, spec.read_record, fields, path, i, task) for i, r in enumerate(rows)]
    if fmt == "jsonl":
        rows = list(_read_jsonl(p))
        return [to_record(r, spec.read_record, fields, path, i, task) for i, r in enumerate(rows)]
    data = _read_json(p)
    if fmt == "superni" or (fmt == "json" and isinstance(data, dict) and "Instances" in data):
        if not spec.superni_files:
            raise DataError(f"{path}: a SuperNI task is instruction data, only for "
                            f"{kinds_with('superni_files')} stages (this stage is {kind})")
        return _read_superni(data, path, task)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records (or a SuperNI task with 'Instances')")
    return [to_record(r, spec.read_record, fields, path, i, task) for i, r in enumerate(data)]


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{p}: nested too deeply to be a record file") from None
    except UnicodeDecodeError:
        raise DataError(f"{p}: not UTF-8 text") from None


def _read_jsonl(p: Path):
    """One JSON value per line. Lines end at ``\n`` only (JSON Lines): ``str.splitlines`` would
    also split at U+2028 and other Unicode line breaks, which JSON strings may hold raw."""
    try:
        lines = p.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise DataError(f"{p}: not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: line {n}: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{p}: line {n}: nested too deeply to be a record") from None


def _read_text(p: Path, task: str) -> list[Record]:
    """Documents are separated by blank lines; cpt packing joins them with EOS later."""
    try:
        content = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{p}: not UTF-8 text") from None
    docs = [d.strip() for d in re.split(r"\n[ \t]*\n", content) if d.strip()]
    if not docs:
        raise DataError(f"{p}: no text found")
    return [Record(text=d, task=task) for d in docs]


def _read_superni(data: dict, path: str, task: str) -> list[Record]:
    """SuperNI task JSON: the definition is the instruction, each instance one record."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a SuperNI task object with 'Definition' and "
                        "'Instances'")
    definition = data.get("Definition", "")
    if isinstance(definition, list):
        definition = definition[0] if definition else ""
    if not isinstance(definition, str):
        raise DataError(f"{path}: Definition: expected a string or a list of strings")
    instances = data.get("Instances")
    if not isinstance(instances, list):
        raise DataError(f"{path}: Instances: expected a list of {{input, output}}")
    records = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict) or "input" not in inst or "output" not in inst:
            raise DataError(f"{path}: Instances.{i}: expected an object with 'input' and 'output'")
        if not isinstance(inst["input"], str):
            raise DataError(f"{path}: Instances.{i}.input: expected a string")
        outputs = inst["output"]
        outputs = [outputs] if isinstance(outputs, str) else outputs
        if not outputs or not all(isinstance(o, str) for o in outputs):
            raise DataError(f"{path}: Instances.{i}.output: expected a string or list of strings")
        prompt = f"{definition.strip()}\n\nInput: {inst['input'].strip()}\nOutput:"
        answers = [o.strip() for o in outputs]
        records.append(Record(prompt=prompt, answers=answers, task=task,
                              meta={"id": inst.get("id", str(i))}))
    return records


def to_record(row: Any, read_record, fields: dict[str, str], path: str, i: int,
              task: str) -> Record:
    """One JSON object -> Record: ``fields`` renamed, then read by the kind's ``read_record``."""
    where = f"{path}: record {i}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    row = dict(row)
    for target, source in fields.items():
        if source not in row:
            raise DataError(f"{where}: field '{source}' (mapped to {target}) is missing")
        row[target] = row[source]
    return read_record(row, where, task, i, path)


def text_record(row: dict, where: str, task: str, i: int, path: str) -> Record:
    """A raw-text record (cpt): a non-empty ``text``."""
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: text: expected a non-empty string for a cpt stage")
    return Record(text=text, task=task)


def instruction_record(row: dict, where: str, task: str, i: int, path: str) -> Record:
    """An instruction (sft): prompt/response, Alpaca instruction/input/output, chat
    ``messages`` (OpenAI's ``{role, content}``) or ShareGPT ``conversations`` (``{from,
    value}``); optional ``answers``, ``options``, ``system`` and ``image``. A conversation's last
    assistant turn is the response (the training target), earlier turns the context; ``system``
    applies when the conversation has no system turn."""
    options = _str_list(row.get("options", []), f"{where}: options")
    system = row.get("system")
    image = _image_path(row.get("image"), path, where)
    if "messages" in row or "conversations" in row:
        key = "messages" if "messages" in row else "conversations"
        messages = row[key] if key == "messages" else _sharegpt_messages(row[key], where)
        record = _chat_record(messages, where, task, options, image, key)
        if record.system is None and isinstance(system, str):
            record.system = system
        return record
    if "instruction" in row and "prompt" not in row:  # Alpaca
        instruction, extra = row.get("instruction", ""), row.get("input", "")
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        answer = row.get("output")
    else:
        prompt = row.get("prompt")
        answer = row.get("response", row.get("output", row.get("answer")))
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: prompt: expected a non-empty string "
                        "(or instruction/input/output, or messages)")
    answers = _str_list(row.get("answers", []), f"{where}: answers")
    if answer is not None:
        if isinstance(answer, list):
            answers = _str_list(answer, f"{where}: response") + answers
        elif isinstance(answer, str):
            answers = [answer] + [a for a in answers if a != answer]
        else:
            raise DataError(f"{where}: response: expected a string, got {type(answer).__name__}")
    if not answers:
        raise DataError(f"{where}: response: missing (expected response, output or answers)")
    if not any(a.strip() for a in answers):
        raise DataError(f"{where}: response: empty; an instruction record needs an answer to "
                        "train and score on")
    return Record(prompt=prompt, answers=answers, system=system if isinstance(system, str)
                  else None, options=options, image=image, task=task,
                  meta={"id": row.get("id", str(i))})


def _image_path(value: Any, path: str, where: str) -> str | None:
    """A record's ``image``: a PNG/JPEG path relative to the data file (made absolute here, so
    the record can travel: replay buffers, checkpoints), or a generated ``scene:`` string."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: image: expected a path to a PNG or JPEG file, got "
                        f"{type(value).__name__}")
    if value.startswith("scene:"):
        return value
    p = Path(value).expanduser()
    if not p.is_absolute() and not path.startswith("hf:"):
        p = Path(path).parent / p
    if not p.is_file():
        raise DataError(f"{where}: image: file '{p}' not found")
    return str(p.resolve())


# ShareGPT's speaker names (``from``) -> chat roles; LLaMA-Factory's sharegpt tags plus the
# OpenAI role names some exports use. Tool turns (function_call, observation) are not read.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


def _sharegpt_messages(conversations: Any, where: str) -> list[dict[str, Any]]:
    """ShareGPT ``conversations`` (``[{"from": "human"|"gpt"|"system", "value": ...}]``, as
    LLaMA-Factory's sharegpt format) -> chat messages ``[{"role", "content"}]``."""
    if not isinstance(conversations, list) or not conversations:
        raise DataError(f"{where}: conversations: expected a non-empty list of {{from, value}}")
    messages = []
    for j, turn in enumerate(conversations):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in SHAREGPT_ROLES or not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: conversations.{j}: expected {{from: human|gpt|system, "
                            f"value: string}}, got {_shown(turn)}")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn["value"]})
    return messages


def _shown(value: Any, most: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= most else text[:most] + "..."


def _chat_record(messages: Any, where: str, task: str, options: list[str],
                 image: Any, key: str = "messages") -> Record:
    """Chat `messages`: the last assistant turn is the response, earlier turns the context.
    ``key``: the field the turns came from, for errors (``conversations``: ShareGPT's, already
    turned into messages by :func:`_sharegpt_messages`, so its turns are checked there)."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: {key}: expected a non-empty list of {{role, content}}")
    for j, m in enumerate(messages):
        roles = ("system", "user", "assistant")
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or (
            m.get("role") not in roles
        ):
            raise DataError(f"{where}: {key}.{j}: expected {{role: system|user|assistant, "
                            "content: string}")
    if messages[-1]["role"] != "assistant" or len(messages) < 2 or messages[-2]["role"] != "user":
        raise DataError(f"{where}: {key}: expected to end with a user turn then an "
                        "assistant turn")
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    body = messages[1:] if system is not None else messages
    context = [dict(role=m["role"], content=m["content"]) for m in body[:-2]]
    return Record(prompt=body[-2]["content"], answers=[body[-1]["content"]], system=system,
                  context=context, options=options, image=image, task=task)


def pair_record(row: dict, where: str, task: str, i: int, path: str = "") -> Record:
    """A preference pair: ``prompt``, ``chosen``, ``rejected``. The answers may be strings or
    chat message lists ending with the assistant's turn (UltraFeedback-style exports); the
    prompt may then be left out and is taken from the chosen conversation."""
    answers, convo = {}, None
    for key in ("chosen", "rejected"):
        value = row.get(key)
        if isinstance(value, list) and value:
            parsed = _chat_record(value, f"{where}: {key}", task, [], None)
            value = parsed.answers[0]
            convo = convo or parsed
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: {key}: expected a non-empty string (or a list of chat "
                            "messages ending with the assistant's answer)")
        answers[key] = value
    if answers["chosen"] == answers["rejected"]:
        raise DataError(f"{where}: rejected: identical to chosen, so the pair states no "
                        "preference")
    prompt, system, context = row.get("prompt"), row.get("system"), []
    if isinstance(prompt, list) and prompt:  # the prompt as chat messages, ending with the user
        convo = _chat_record(prompt + [{"role": "assistant", "content": answers["chosen"]}],
                             f"{where}: prompt", task, [], None)
        prompt = None
    if prompt is None and convo is not None:
        prompt, system, context = convo.prompt, convo.system, convo.context
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: prompt: expected a non-empty string (align records have "
                        "prompt, chosen and rejected)")
    return Record(prompt=prompt, chosen=answers["chosen"], rejected=answers["rejected"],
                  system=system if isinstance(system, str) else None, context=context,
                  task=task, meta={"id": row.get("id", str(i))})


def edit_record(row: dict, where: str, task: str, i: int, path: str = "") -> Record:
    """A fact edit, with the field names of EasyEdit's CounterFact/ZsRE files: ``prompt``,
    ``target_new`` (a string, or CounterFact's ``{"str": ...}``), optional ``rephrase_prompt``
    and ``locality_prompt`` (a string or a list of strings) and ``locality_ground_truth`` (one
    per locality prompt); ``ground_truth`` and ``subject`` are kept in ``meta``."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: prompt: expected a non-empty string (edit records have "
                        "prompt and target_new)")
    target = row.get("target_new")
    if isinstance(target, dict):
        target = target.get("str")
    if not isinstance(target, str) or not target.strip():
        raise DataError(f"{where}: target_new: expected a non-empty string (the new answer)")
    lists = {}
    for key in ("rephrase_prompt", "locality_prompt", "locality_ground_truth"):
        value = row.get(key)
        value = [] if value is None else _str_list(value, f"{where}: {key}")
        if any(not v.strip() for v in value) and key != "locality_ground_truth":
            raise DataError(f"{where}: {key}: expected non-empty strings")
        lists[key] = value
    truth = lists["locality_ground_truth"]
    if truth and len(truth) != len(lists["locality_prompt"]):
        raise DataError(f"{where}: locality_ground_truth: expected one answer per locality "
                        f"prompt ({len(lists['locality_prompt'])}), got {len(truth)}")
    meta = {"id": row.get("id", row.get("case_id", str(i)))}
    for key in ("ground_truth", "subject"):
        if isinstance(row.get(key), (str, list)):
            meta[key] = row[key]
    return Record(prompt=prompt, response=target.strip(), task=task, meta=meta,
                  system=row["system"] if isinstance(row.get("system"), str) else None,
                  rephrase_prompt=lists["rephrase_prompt"],
                  locality_prompt=lists["locality_prompt"],
                  locality_ground_truth=truth or [""] * len(lists["locality_prompt"]))


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: expected a list of strings")
    return list(value)


def _read_hf(path: str, split: str | None) -> list[dict]:
    """A Hugging Face dataset by Hub name (``hf:name``, uses the local cache) or a saved dir."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise DataError(f"{path}: the `datasets` package is needed for Hugging Face data") from None
    name = path[3:] if path.startswith("hf:") else path
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types; the user needs one line
        raise DataError(f"{path}: cannot load dataset ({type(exc).__name__}: {exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise DataError(f"{path}: split: expected one of {', '.join(ds)}, got {split!r}")
        ds = ds[split]
    return [dict(row) for row in ds]

"""Runs side by side. Runs whose configs differ only in ``seed`` or in the order of the stream
are replicates of one experiment, so they are pooled into a mean with a Student-t interval (95%
unless ``confidence`` says otherwise; every output names the level it used), since one noisy
run says little about a strategy. Pure JSON/YAML/numpy: no torch.

The environment a run recorded (results.json ``environment``: library versions, device, CPU,
precision actually used; see everlearn.runs.environment) does not split the pooling, which stays by
config: a changed library or device is something to see, not a different experiment (and
threads or a resume would otherwise split replicates). It is not silent either: when runs
differ in any environment field, the outputs gain an Environment section listing those fields
for every run, pooled or not (the CSV: ``env_<field>`` columns). Runs without a recorded
environment show ``unknown``.

Runs of different streams (sets of stage names) are never in one table: their AP and BWT
average over different stages, so ranking them together would mislead. Each stream gets its
own table (and, in HTML, its own figure), and the output says so. A directory that cannot be
read (no results.json, a damaged or incomplete one: ``compare runs/*`` after a failed run) is
listed apart as skipped; the others are still compared."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import yaml

from everlearn.evaluation.metrics import mean_ci
from everlearn.report.data import (
    ReportError,
    environment_cell,
    environment_fields,
    environment_value,
    environments,
    final_general_delta,
    is_partial,
    load_results,
    main_metrics,
    report_problem,
)

FORMATS = ("markdown", "csv", "html")
# (key, header, digits): CL metrics from results.json, then cost summed over the run.
COLUMNS = [("final_ap", "AP", 2), ("bwt", "BWT", 2), ("fwt", "FWT", 2),
           ("forgetting", "forgetting", 2), ("general_delta", "general delta", 2),
           ("wall_time_s", "wall s", 1), ("tokens", "tokens", 0),
           ("peak_memory_mb", "peak MB", 0)]


@dataclass
class RunSummary:
    path: Path
    results: dict[str, Any]
    config: dict[str, Any] | None
    values: dict[str, float | None]


@dataclass
class Group:
    """Replicate runs of one experiment and their pooled values: key -> (mean, half, n)."""

    key: dict[str, Any]
    runs: list[RunSummary]
    label: str = ""
    stats: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)
    confidence: float = 0.95  # the level of the intervals in ``stats``

    @property
    def stream(self) -> tuple[str, ...]:
        """The stream the group's runs train: their stage names (orders are pooled)."""
        return stream_of(self.runs[0])

    @property
    def strategy(self) -> str:
        return "+".join(self.runs[0].results.get("strategies") or [])

    @property
    def pooled(self) -> str:
        """What varies inside the group: the seeds and the number of stream orders."""
        seeds = sorted({r.config.get("seed") for r in self.runs if r.config} - {None})
        orders = {tuple(s["name"] for s in r.results["stages"]) for r in self.runs}
        parts = [f"seeds {','.join(str(s) for s in seeds)}"] if seeds else []
        if len(orders) > 1:
            parts.append(f"{len(orders)} stream orders")
        return "; ".join(parts)


class Comparison(list):
    """The groups (a list of :class:`Group`, by stream, then in the order their first run was
    given) and ``skipped``: (run directory, why) for each directory that could not be read."""

    def __init__(self, groups: list[Group] = (), skipped: list[tuple[Path, str]] = ()):
        super().__init__(groups)
        self.skipped = list(skipped)

    @property
    def streams(self) -> list[tuple[str, ...]]:
        return list(dict.fromkeys(g.stream for g in self))


def stream_of(run: RunSummary) -> tuple[str, ...]:
    """A run's stream for grouping: its stage names, sorted (a permuted order is a replicate)."""
    return tuple(sorted(s["name"] for s in run.results["stages"]))


def summarize_run(run_dir: str | Path) -> RunSummary:
    """One run's comparable numbers (``None`` where the run does not define them)."""
    path = Path(run_dir)
    results = load_results(path)
    config = None
    if (path / "config.yaml").is_file():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            msg = " ".join(str(exc).split())
            raise ReportError(f"{path / 'config.yaml'}: not valid YAML ({msg})") from None
    m = main_metrics(results)
    cost = results.get("cost") or []
    values = {k: (float(m[k]) if isinstance(m.get(k), (int, float)) else None)
              for k in ("final_ap", "bwt", "fwt", "forgetting")}
    values["general_delta"] = final_general_delta(results)
    values["wall_time_s"] = (results.get("base_eval_time_s") or 0.0) + sum(
        c.get("wall_time_s") or 0.0 for c in cost)
    values["tokens"] = float(sum(c.get("tokens_trained") or 0 for c in cost))
    peaks = [c["peak_memory_mb"] for c in cost if c.get("peak_memory_mb") is not None]
    values["peak_memory_mb"] = max(peaks) if peaks else None
    return RunSummary(path, results, config if isinstance(config, dict) else None, values)


def experiment_key(run: RunSummary) -> dict[str, Any]:
    """The config without what replicates may vary: seed, output directory, stage order."""
    res = run.results
    if run.config is None:
        key = {"name": res.get("name"), "strategies": res.get("strategies"),
               "model": res.get("model"), "finetune": res.get("finetune"),
               "stages": sorted(s["name"] for s in res["stages"])}
    else:
        key = {k: v for k, v in run.config.items() if k not in ("seed", "output_dir")}
        key["stages"] = sorted((key.get("stages") or []),
                               key=lambda s: json.dumps(s, sort_keys=True, default=str))
    key["complete"] = not is_partial(res)
    return key


def _compact(value: list[Any]) -> str | None:
    """A ``strategies`` list as names with their options, for a short label."""
    if not all(isinstance(v, dict) and "name" in v for v in value):
        return None
    return "+".join(str(v["name"]) + (json.dumps(v["options"], sort_keys=True, default=str)
                                      if v.get("options") else "") for v in value)


def _flat(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, list) and prefix == "strategies." and value:
        compact = _compact(value)
        if compact is not None:
            return {"strategies": compact}
    if isinstance(value, list) and prefix == "stages.":
        value = {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(value, sort_keys=True, default=str)}


def _label(group: Group, differing: list[str]) -> str:
    """Short name: the config fields that tell this group apart from the others."""
    flat = _flat(group.key)
    parts = []
    for k in differing[:3]:
        v = flat.get(k, "-")
        v = v if len(v) <= 40 else v[:37] + "..."
        parts.append(f"{k}={v.strip(chr(34))}")
    parts = parts or [str(group.runs[0].results.get("name", group.runs[0].path.name))]
    return ", ".join(parts + ([] if group.key.get("complete", True) else ["partial"]))


def compare_runs(run_dirs: list[str | Path], confidence: float = 0.95) -> Comparison:
    """Groups of replicate runs with pooled stats, by stream; unreadable directories skipped.

    A ReportError only when no directory can be read at all."""
    groups: dict[str, Group] = {}
    skipped: list[tuple[Path, str]] = []
    for d in run_dirs:
        try:
            run = summarize_run(d)
        except ReportError as exc:
            problem = report_problem(d)  # "readable": results.json is, config.yaml is not
            skipped.append((Path(d), problem if problem != "readable" else
                            f"damaged ({str(exc).removeprefix(str(Path(d)) + '/')})"))
            continue
        key = experiment_key(run)
        canon = json.dumps(key, sort_keys=True, default=str)
        groups.setdefault(canon, Group(key, [])).runs.append(run)
    if not groups:
        raise ReportError("compare: no run to compare: "
                          + "; ".join(f"{p} ({why})" for p, why in skipped))
    streams = list(dict.fromkeys(g.stream for g in groups.values()))
    out = [g for st in streams for g in groups.values() if g.stream == st]
    for st in streams:
        _name_groups([g for g in out if g.stream == st])
    for g in out:
        g.confidence = confidence
        for key, _, _ in COLUMNS:
            vals = [r.values[key] for r in g.runs if r.values[key] is not None]
            if vals:
                mean, half = mean_ci(vals, confidence)
                g.stats[key] = (mean, half, len(vals))
            else:
                g.stats[key] = (None, None, 0)
    return Comparison(out, skipped)


def _name_groups(groups: list[Group]) -> None:
    """Label each group of one stream by the config fields that set it apart from the others."""
    flats = [_flat(g.key) for g in groups]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    differing = [k for k in keys if k != "complete" and len({f.get(k) for f in flats}) > 1]
    # strategies and names first: they are what a reader compares
    differing.sort(key=lambda k: (not k.startswith("strategies"), k != "name"))
    for g in groups:
        g.label = _label(g, differing) if len(groups) > 1 else _label(g, [])


def environment_differences(groups: list[Group]) -> list[str]:
    """The environment fields whose value is not the same for every run (or changed inside a
    resumed run); empty when all runs recorded one environment, or none recorded any."""
    runs = [r for g in groups for r in g.runs]
    fields = environment_fields([e for r in runs for e in environments(r.results)])
    return [f for f in fields
            if len({environment_value(r.results, f) for r in runs}) > 1
            or any(len({environment_cell(e, f) for e in environments(r.results)}) > 1
                   for r in runs)]


def _environment_rows(groups: list[Group], fields: list[str]) -> list[list[str]]:
    """One row per run: its group's label, its directory and its value of each field."""
    return [[g.label, str(r.path), *[environment_value(r.results, f) for f in fields]]
            for g in groups for r in g.runs]


def _environment_markdown(groups: list[Group]) -> list[str]:
    fields = environment_differences(groups)
    if not fields:
        return []
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    header = ["run", "run dir", *fields]
    return ["", "Environment: the fields that differ between the runs (unknown: not recorded; "
                "a → b: changed when the run was resumed):", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(esc(c) for c in row) + " |"
        for row in _environment_rows(groups, fields)]


def _environment_html(groups: list[Group]) -> str:
    fields = environment_differences(groups)
    if not fields:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for h in ["run", "run dir", *fields])
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in _environment_rows(groups, fields))
    return ('<h2 id="environment">Environment</h2><p class="note">The fields that differ '
            "between the runs (unknown: not recorded; a → b: changed when the run was "
            f'resumed).</p><div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{body}'
            "</tbody></table></div>")


def _environment_csv(group: Group, field: str) -> str:
    """A group's value of ``field``: one value, or each run's joined by ``;`` when they differ."""
    values = [environment_value(r.results, field) for r in group.runs]
    return values[0] if len(set(values)) == 1 else ";".join(values)


def _level(groups: list[Group]) -> str:
    """The groups' confidence level as a percentage: '95' for 0.95, '97.5' for 0.975."""
    return f"{round(100 * (groups[0].confidence if groups else 0.95), 6):g}"


def _columns(groups: list[Group]) -> list[tuple[str, str, int]]:
    """Every column, less general delta when no run reports it."""
    return [c for c in COLUMNS if c[0] != "general_delta"
            or any(g.stats["general_delta"][2] for g in groups)]


def _cell(group: Group, key: str, digits: int) -> str:
    mean, half, n = group.stats[key]
    if mean is None:
        return "n/a"
    text = f"{mean:,.{digits}f}" if digits == 0 else f"{mean:.{digits}f}"
    if half is not None:
        text += f" ± {half:,.{digits}f}" if digits == 0 else f" ± {half:.{digits}f}"
    return text + (f" (n={n})" if n != len(group.runs) else "")


def _rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    cols = _columns(groups)
    header = ["run", "strategy", "n", "pooled"] + [h for _, h, _ in cols]
    rows = [[g.label, g.strategy, str(len(g.runs)), g.pooled or "-"]
            + [_cell(g, k, d) for k, _, d in cols] for g in groups]
    return header, rows


def _by_stream(groups: list[Group]) -> list[tuple[tuple[str, ...], list[Group]]]:
    streams = list(dict.fromkeys(g.stream for g in groups))
    return [(st, [g for g in groups if g.stream == st]) for st in streams]


def _stream_note(groups: list[Group]) -> str:
    """What the tables compare: the one stream, or that each stream has its own table."""
    streams = _by_stream(groups)
    if len(streams) == 1:
        first = [s["name"] for s in groups[0].runs[0].results["stages"]]
        return (f"Every run trains the stages {', '.join(first)}"
                + (" (in some order)." if any(g.pooled and "orders" in g.pooled
                                              for g in groups) else "."))
    return (f"The runs train {len(streams)} different streams (sets of stages), each compared "
            "in its own table: AP, BWT and the other metrics average over different stages, "
            "so they are not pooled or ranked across streams.")


def _skipped(groups: list[Group]) -> list[tuple[Path, str]]:
    return list(getattr(groups, "skipped", []))


def _note(groups: list[Group]) -> str:
    return (f"Mean ± half-width of the {_level(groups)}% Student-t confidence interval over the "
            "n runs pooled (runs differing only in seed or stream order); wall s, tokens and "
            "peak MB are totals per run.")


def format_markdown(groups: list[Group]) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    streams = _by_stream(groups)
    lines: list[str] = []
    for stream, members in streams:
        header, rows = _rows(members)
        if len(streams) > 1:
            lines += [f"Stream: {', '.join(stream)} ({sum(len(g.runs) for g in members)} "
                      "runs)", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        lines.append("")
    lines = lines[:-1] + ["", _note(groups), "", _stream_note(groups), "", "runs:"]
    lines += [f"- {g.label}: " + ", ".join(str(r.path) for r in g.runs) for g in groups]
    skipped = _skipped(groups)
    if skipped:
        lines += ["", "not compared:"] + [f"- skipped: {p} ({why})" for p, why in skipped]
    lines += _environment_markdown(groups)
    return "\n".join(lines) + "\n"


def format_csv(groups: list[Group]) -> str:
    """One row per group; each metric as _mean, _ci<level> (half-width, empty for n=1) and _n;
    ``stream``: the group's stages, ``;``-joined (groups of different streams are not
    comparable). Skipped directories are not in the CSV (``everlearn compare`` names them on
    stderr).

    The level is in the column name (``ci95`` by default, ``ci90`` for confidence 0.9,
    ``ci97_5`` for 0.975), so a CSV read without its command line still says what it holds
    and the default's columns keep their names."""
    cols = _columns(groups)
    ci = "ci" + _level(groups).replace(".", "_")
    env_fields = environment_differences(groups)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "strategy", "n", "pooled", "run_dirs"]
               + [f"{k}_{s}" for k, _, _ in cols for s in ("mean", ci, "n")]
               + [f"env_{f}" for f in env_fields] + ["stream"])
    for g in groups:
        row: list[Any] = [g.label, g.strategy, len(g.runs), g.pooled,
                          ";".join(str(r.path) for r in g.runs)]
        for k, _, _ in cols:
            mean, half, n = g.stats[k]
            row += ["" if mean is None else repr(mean), "" if half is None else repr(half), n]
        w.writerow(row + [_environment_csv(g, f) for f in env_fields] + [";".join(g.stream)])
    return buf.getvalue()


def _html_table(groups: list[Group]) -> str:
    header, rows = _rows(groups)
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{escape(c)}</td>' if i >= 4 else
                                    f"<td>{escape(c)}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)  # the values: right-aligned, "a ± b" unbroken
    return (f'<div class="tw wide"><table><thead><tr>{head}</tr></thead><tbody>{body}'
            "</tbody></table></div>")


def _html_figure(groups: list[Group]) -> str:
    """AP and BWT per group with their confidence intervals, as an embedded PNG."""
    from everlearn.report.figures import metric_bars_png
    from everlearn.report.page import figure

    png = metric_bars_png([g.label for g in groups],
                          {h: [g.stats[k][:2] for g in groups]
                           for k, h in (("final_ap", "AP"), ("bwt", "BWT"))},
                          f"{_level(groups)}% CI")
    return figure(png, "AP and BWT per run group with confidence intervals",
                  f"final AP and BWT per row of the table; error bars: the {_level(groups)}% "
                  "Student-t interval (none for a single run)")


def format_html(groups: list[Group]) -> str:
    from everlearn.report.page import CSS

    streams = _by_stream(groups)
    parts = []
    for stream, members in streams:
        if len(streams) > 1:
            parts.append(f"<h2>Stream: {escape(', '.join(stream))}</h2>")
        parts += [_html_table(members), _html_figure(members)]
    runs = "".join(f"<li>{escape(g.label)}: {escape(', '.join(str(r.path) for r in g.runs))}"
                   "</li>" for g in groups)
    skipped = "".join(f"<li>skipped: {escape(str(p))} ({escape(why)})</li>"
                      for p, why in _skipped(groups))
    if skipped:
        skipped = f'<h2 id="skipped">Not compared</h2><ul class="skipped">{skipped}</ul>'
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>everlearn compare</title><style>{CSS}</style></head><body>"
            f"<h1>everlearn compare</h1><p class=\"note\">{escape(_stream_note(groups))}</p>"
            + "".join(parts) + f"<p class=\"note\">{escape(_note(groups))}</p><ul>{runs}</ul>"
            f"{skipped}</body></html>\n")
    return page.replace("</body>", _environment_html(groups) + "</body>", 1)


def format_comparison(groups: list[Group], fmt: str = "markdown") -> str:
    if fmt not in FORMATS:
        raise ReportError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return {"markdown": format_markdown, "csv": format_csv, "html": format_html}[fmt](groups)

"""The ``worldline`` suite: a fictional world whose facts change over N periods.

A continual-knowledge-learning benchmark in the spirit of CKL (Jang et al., ICLR 2022), made
of invented names so that no model knows any fact before training. People live in cities,
work for companies in a role; companies have a headquarters. Each period some facts change
(``change_rate``) and new people appear (``new_people``). Period *t* becomes one ``cpt``
stage:

* **training text**: the period's *new* and *updated* facts (all facts in period 1), each
  stated ``mentions`` times in varied sentence templates, shuffled into short documents of
  one sentence per line (so that a name is tokenised as at the start of a probe, not after a
  space); ``restate`` adds a fraction of the unchanged facts, as news would;
* **cloze probes**: every fact true in period *t*, as a prompt (``"Ivo Ashmont lives in"``)
  whose candidate values (every city, company or role) are ranked by log-likelihood, split by
  how the fact relates to period *t - 1*: ``invariant`` (same value), ``updated`` (another
  value; ``meta["previous"]`` holds it) or ``new`` (the fact did not exist; all facts of
  period 1 are new).

The world depends only on the seed and the options, never on the number of periods asked for
beyond it: periods 1..k of a 10-period world equal those of a 3-period world with the same
seed and options.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

from everlearn.data.records import Record
from everlearn.schema import field

SPLITS = ("invariant", "updated", "new")

_FIRST_A = ["Ba", "Ce", "Da", "Ela", "Fen", "Ga", "Hal", "Iri", "Jo", "Ka", "Li", "Mo", "Ne",
            "Ori", "Pa", "Qui", "Ra", "Sa", "Te", "Ul", "Va", "Wy", "Xe", "Yo", "Za"]
_FIRST_B = ["ren", "lia", "dor", "mira", "son", "vik", "tha", "nel", "ric", "sa", "mon", "dra"]
_LAST_A = ["Ash", "Bri", "Cor", "Dun", "Esk", "Fal", "Gor", "Hes", "Ivo", "Jar", "Kel", "Lom",
           "Mar", "Nor", "Osk", "Pel", "Rov", "Sel", "Tor", "Ulm", "Vey", "Wen"]
_LAST_B = ["bury", "mont", "wick", "holt", "ford", "vale", "stein", "ley", "gard", "wyn"]
_CITY_A = ["Vel", "Quen", "Dros", "Aral", "Thes", "Brim", "Cald", "Ost", "Yar", "Lun", "Pell",
           "Sarn", "Kov", "Ilm", "Fenn", "Gald", "Rhun", "Tarv", "Ebb", "Morr"]
_CITY_B = ["haven", "mere", "gate", "port", "ridge", "dale", "moor", "crest", "fall", "shore"]
_FIRM_A = ["Zentrik", "Orvane", "Kalmo", "Brightel", "Quorra", "Tessaly", "Vantor", "Ombrix",
           "Halvern", "Pryce", "Lumora", "Drennic", "Solvay", "Korrin", "Yestra", "Nuvell"]
_FIRM_B = ["Works", "Labs", "Systems", "Foods", "Textiles", "Logistics", "Holdings", "Motors"]
# Consonant-initial, so that "works as a {role}" is grammatical for every role.
ROLES = ["baker", "carpenter", "chemist", "dentist", "farmer", "gardener", "journalist",
         "lawyer", "librarian", "mechanic", "nurse", "pilot", "plumber", "potter", "tailor",
         "teacher", "translator", "welder", "brewer", "cartographer"]


class Relation(NamedTuple):
    pool: str  # which value list the candidates come from
    templates: tuple[str, ...]  # the first one is the probe's sentence (cloze = up to {v})


RELATIONS: dict[str, Relation] = {
    "city": Relation("cities", (
        "{s} lives in {v}.", "{s} has made a home in {v}.", "These days {s} resides in {v}.",
        "Neighbours of {s} all live in {v}.")),
    "employer": Relation("companies", (
        "{s} works for {v}.", "{s} is employed by {v}.", "{s} has a job at {v}.",
        "Payday for {s} comes from {v}.")),
    "role": Relation("roles", (
        "{s} works as a {v}.", "{s} earns a living as a {v}.", "By trade, {s} is a {v}.",
        "Ask anyone: {s} is a {v}.")),
    "headquarters": Relation("cities", (
        "{s} is headquartered in {v}.", "The head office of {s} is in {v}.",
        "{s} runs its business from {v}.", "{s} keeps its headquarters in {v}.")),
}
PERSON_RELATIONS = ("city", "employer", "role")


@dataclass
class WorldlineOptions:
    """Options of the worldline suite (stage field ``builtin_options``)."""

    people: int = field(24, "People in the first period (each has a city, an employer, a role).")
    new_people: int = field(
        4, "People who first appear in each later period (their facts are new).")
    companies: int = field(6, "Companies (each has a headquarters city).")
    cities: int = field(8, "Cities: the candidate values of city and headquarters probes.")
    roles: int = field(10, f"Roles, drawn from {len(ROLES)}: the candidates of role probes.")
    change_rate: float = field(0.25, "Chance that an existing fact changes value in a period.")
    mentions: int = field(3, "Sentences stating each fact in its period's text.")
    restate: float = field(0.0, "Share of unchanged facts stated again in a later period's text.")
    sentences_per_doc: int = field(6, "Sentences per training document.")
    probe_in_text: bool = field(True, "State each fact once in its probe's own sentence (false: "
                                   "only paraphrases, so probes test generalisation).")

    def check(self) -> tuple[str, str] | None:
        """(field, problem) for the first bad value, else None."""
        for name in ("people", "companies", "mentions", "sentences_per_doc"):
            if getattr(self, name) < 1:
                return name, f"expected an integer >= 1, got {getattr(self, name)}"
        if self.new_people < 0:
            return "new_people", f"expected an integer >= 0, got {self.new_people}"
        if not 2 <= self.cities <= len(_CITY_A) * len(_CITY_B):
            return "cities", f"expected 2..{len(_CITY_A) * len(_CITY_B)}, got {self.cities}"
        if not 2 <= self.roles <= len(ROLES):
            return "roles", f"expected 2..{len(ROLES)}, got {self.roles}"
        if self.companies > len(_FIRM_A) * len(_FIRM_B):
            return "companies", f"expected at most {len(_FIRM_A) * len(_FIRM_B)}"
        for name in ("change_rate", "restate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                return name, f"expected 0 <= x <= 1, got {getattr(self, name)}"
        return None


Fact = tuple[str, str]  # (subject, relation)


@dataclass
class World:
    """The entities and the fact table of every period (``timeline[t - 1]`` is period t)."""

    pools: dict[str, list[str]]
    timeline: list[dict[Fact, str]]


def _unique(rng: random.Random, n: int, first: list[str], second: list[str], sep: str,
            taken: set[str]) -> list[str]:
    space = [a + sep + b for a in first for b in second]
    space = [x for x in space if x not in taken]
    if n > len(space):
        raise ValueError(f"worldline: cannot invent {n} distinct names (only {len(space)})")
    out = rng.sample(space, n)
    taken.update(out)
    return out


def _people(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    firsts = [a + b for a in _FIRST_A for b in _FIRST_B]
    lasts = [a + b for a in _LAST_A for b in _LAST_B]
    if n > len(firsts) * len(lasts) - len(taken):
        raise ValueError(f"worldline: cannot invent {n} more distinct people (at most "
                         f"{len(firsts) * len(lasts)} in a world); use fewer people, "
                         "new_people or periods")
    out: list[str] = []
    while len(out) < n:  # names are drawn at random: the space is far larger than n here
        name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def simulate(periods: int, seed: int, opt: WorldlineOptions) -> World:
    """The world's fact table for periods 1..``periods`` (deterministic in seed and options)."""
    if periods < 1:
        raise ValueError(f"periods must be >= 1, got {periods}")
    rng = random.Random(f"worldline:{seed}")
    taken: set[str] = set()
    pools = {
        "cities": _unique(rng, opt.cities, _CITY_A, _CITY_B, "", taken),
        "companies": _unique(rng, opt.companies, _FIRM_A, _FIRM_B, " ", taken),
        "roles": sorted(rng.sample(ROLES, opt.roles)),
    }
    # Periods are drawn in order, so a longer world only appends periods to a shorter one.
    people_rng = random.Random(f"worldline:{seed}:people")
    state: dict[Fact, str] = {}
    for company in pools["companies"]:
        state[(company, "headquarters")] = rng.choice(pools["cities"])

    def arrive(n: int) -> None:
        for person in _people(people_rng, n, taken):
            for rel in PERSON_RELATIONS:
                state[(person, rel)] = rng.choice(pools[RELATIONS[rel].pool])

    arrive(opt.people)
    timeline = [dict(state)]
    for _ in range(2, periods + 1):
        for fact in list(state):
            if rng.random() < opt.change_rate:
                pool = pools[RELATIONS[fact[1]].pool]
                state[fact] = rng.choice([v for v in pool if v != state[fact]])
        arrive(opt.new_people)
        timeline.append(dict(state))
    return World(pools=pools, timeline=timeline)


def split_of(fact: Fact, value: str, previous: dict[Fact, str]) -> str:
    """``new`` if the fact did not exist before, ``invariant`` if its value stayed, else
    ``updated``."""
    if fact not in previous:
        return "new"
    return "invariant" if previous[fact] == value else "updated"


def probe_prompt(subject: str, relation: str) -> str:
    """The cloze prompt: the relation's first template up to the value."""
    return RELATIONS[relation].templates[0].split("{v}")[0].format(s=subject).rstrip()


def _sentences(rng: random.Random, subject: str, relation: str, value: str,
               opt: WorldlineOptions) -> list[str]:
    templates = RELATIONS[relation].templates
    others = list(range(1, len(templates)))
    rng.shuffle(others)
    picks = ([0] if opt.probe_in_text else []) + others
    if not opt.probe_in_text and not picks:  # pragma: no cover - every relation has paraphrases
        picks = [0]
    chosen = [picks[k % len(picks)] for k in range(opt.mentions)]
    return [templates[i].format(s=subject, v=value) for i in chosen]


def period_data(world: World, period: int, seed: int,
                opt: WorldlineOptions) -> tuple[list[Record], list[Record]]:
    """(training documents, cloze probes) of one period (1-based)."""
    current = world.timeline[period - 1]
    previous = world.timeline[period - 2] if period > 1 else {}
    rng = random.Random(f"worldline:{seed}:text:{period}")
    stated, probes = [], []
    for fact, value in current.items():
        split = split_of(fact, value, previous)
        if split != "invariant" or rng.random() < opt.restate:
            stated.append((fact, value))
        subject, relation = fact
        probes.append(Record(
            prompt=probe_prompt(subject, relation), answers=[value],
            options=list(world.pools[RELATIONS[relation].pool]),
            meta={"split": split, "subject": subject, "relation": relation, "period": period,
                  "previous": previous.get(fact)}))
    if not stated:  # nothing changed and nobody arrived: the period restates the world
        stated = list(current.items())
    sentences = [s for (subject, relation), value in stated
                 for s in _sentences(rng, subject, relation, value, opt)]
    rng.shuffle(sentences)
    k = opt.sentences_per_doc
    docs = [Record(text="\n".join(sentences[i:i + k]), meta={"period": period})
            for i in range(0, len(sentences), k)]
    return docs, probes


def build_periods(periods: int, seed: int,
                  opt: WorldlineOptions) -> list[tuple[list[Record], list[Record]]]:
    """(training documents, probes) for every period 1..``periods``."""
    world = simulate(periods, seed, opt)
    return [period_data(world, t, seed, opt) for t in range(1, periods + 1)]


def sample_probes(records: list[Record], n: int | None, seed: int, key: str) -> list[Record]:
    """At most ``n`` probes, drawn evenly across the splits (by seed), in their original order."""
    if n is None or n >= len(records):
        return records
    rng = random.Random(f"{seed}:{key}:probes")
    groups = {s: [i for i, r in enumerate(records) if r.meta.get("split") == s] for s in SPLITS}
    for idx in groups.values():
        rng.shuffle(idx)
    picked: list[int] = []
    while len(picked) < n:
        for s in SPLITS:
            if groups[s] and len(picked) < n:
                picked.append(groups[s].pop())
    return [records[i] for i in sorted(picked)]

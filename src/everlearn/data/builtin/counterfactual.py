"""The ``edits_counterfactual`` suite: batches of counterfactual edits to facts a model knows.

Every fact below is one that the embedded SmolLM2-135M-Instruct completes correctly as a raw
cloze prompt ("The capital of France is" -> " Paris", every token its top-1 prediction). The
list was found once, by ``benchmarks/edit_facts.py`` (hand-written candidates, the model asked
once), and is shipped as data: nothing queries a model at run time. Other models may not know
all of them; the locality metric does not care (it compares with the base model's own
predictions), reliability and generalisation do not either (they score the new targets).

A stream of N periods becomes N ``edit`` stages of ``edits_per_batch`` edits each. An edit
rewrites a fact to another value of the same relation (CounterFact style: France's capital
becomes, say, Lima), with ``rephrases`` paraphrased prompts and ``locality`` prompts about facts
that no batch edits, alternately the same relation for another subject (the neighbourhood, the
hardest to keep) and another relation, each with its true answer as ground truth. Train and
test of a stage are the same edits (an edit stage is scored on its own edits).

The edits depend only on the seed and the options: a fact is held back for locality prompts
or edited by a seeded draw, and batch k holds edits (k - 1) * B .. k * B - 1 of one seeded order,
so the first k batches of a longer stream equal a k-batch stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from everlearn.data.records import Record
from everlearn.data.sampling import sample_records
from everlearn.schema import field

# relation -> templates ({s}: subject, {S}: subject capitalised); the first is the edit prompt,
# the others are its paraphrases (the model need not know the fact in those forms)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": ("The capital of {s} is", "The capital city of {s} is",
                "{S}'s capital is the city of"),
    "language": ("The official language of {s} is", "The main language spoken in {s} is",
                 "Most people in {s} speak"),
    "continent": ("{S} is located in the continent of", "{S} lies on the continent of",
                  "{S} is a country in"),
    "landmark": ("{S} is located in the city of", "{S} can be found in the city of",
                 "The city that is home to {s} is"),
    "profession": ("{S} is best known as a", "{S} was a famous", "By profession, {s} was a"),
    "colour": ("The usual colour of {s} is", "The color of {s} is", "{S} is the color"),
    "young": ("The young of a {s} is called a", "A baby {s} is called a",
              "A young {s} is known as a"),
}
# counterfactual values of each relation (a fact's own value is never its new target)
POOLS: dict[str, tuple[str, ...]] = {
    "capital": ("Paris", "Berlin", "Rome", "Madrid", "Tokyo", "Beijing", "Moscow", "Cairo",
                "Athens", "Lisbon", "Vienna", "Warsaw", "Dublin", "Oslo", "Stockholm",
                "Helsinki", "Copenhagen", "Budapest", "Ottawa", "Canberra", "Lima", "Santiago",
                "Nairobi", "Bangkok", "Seoul", "Brussels", "Amsterdam", "Havana", "Hanoi",
                "Jakarta", "Manila", "Prague", "London", "Edinburgh"),
    "language": ("French", "German", "Italian", "Spanish", "Japanese", "Russian", "Portuguese",
                 "Greek", "Polish", "Dutch", "Swedish", "Turkish", "Arabic", "Korean",
                 "Vietnamese", "Thai", "Hungarian", "Hebrew", "English", "Finnish"),
    "continent": ("Europe", "Asia", "Africa", "South America", "North America", "Antarctica"),
    "landmark": ("Paris", "Rome", "London", "New York", "Berlin", "Barcelona", "Moscow",
                 "San Francisco", "Sydney", "Athens", "Dubai", "Los Angeles", "Tokyo",
                 "Chicago", "Vienna", "Madrid"),
    "profession": ("physicist", "painter", "composer", "playwright", "novelist", "chemist",
                   "poet", "sculptor", "architect", "writer", "singer", "dancer"),
    "colour": ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink",
               "brown"),
    "young": ("kitten", "puppy", "calf", "lamb", "foal", "cub", "piglet", "duckling", "chick",
              "fawn"),
}

# (relation, subject, true value): the candidates of benchmarks/edit_facts.py that the embedded
# model completes correctly with the relation's first template
FACTS: tuple[tuple[str, str, str], ...] = (
    ('capital', 'France', 'Paris'),
    ('capital', 'Germany', 'Berlin'),
    ('capital', 'Italy', 'Rome'),
    ('capital', 'Spain', 'Madrid'),
    ('capital', 'Japan', 'Tokyo'),
    ('capital', 'China', 'Beijing'),
    ('capital', 'Russia', 'Moscow'),
    ('capital', 'Greece', 'Athens'),
    ('capital', 'Portugal', 'Lisbon'),
    ('capital', 'Austria', 'Vienna'),
    ('capital', 'Ireland', 'Dublin'),
    ('capital', 'Norway', 'Oslo'),
    ('capital', 'Sweden', 'Stockholm'),
    ('capital', 'Denmark', 'Copenhagen'),
    ('capital', 'Hungary', 'Budapest'),
    ('capital', 'Canada', 'Ottawa'),
    ('capital', 'Chile', 'Santiago'),
    ('capital', 'Kenya', 'Nairobi'),
    ('capital', 'Thailand', 'Bangkok'),
    ('capital', 'South Korea', 'Seoul'),
    ('capital', 'the Netherlands', 'Amsterdam'),
    ('capital', 'Cuba', 'Havana'),
    ('capital', 'Vietnam', 'Hanoi'),
    ('capital', 'Indonesia', 'Jakarta'),
    ('capital', 'the Philippines', 'Manila'),
    ('capital', 'the Czech Republic', 'Prague'),
    ('capital', 'Mexico', 'Mexico City'),
    ('capital', 'England', 'London'),
    ('capital', 'Scotland', 'Edinburgh'),
    ('language', 'France', 'French'),
    ('language', 'Germany', 'German'),
    ('language', 'Italy', 'Italian'),
    ('language', 'Spain', 'Spanish'),
    ('language', 'Russia', 'Russian'),
    ('language', 'Poland', 'Polish'),
    ('language', 'the Netherlands', 'Dutch'),
    ('language', 'Turkey', 'Turkish'),
    ('language', 'Mexico', 'Spanish'),
    ('language', 'Argentina', 'Spanish'),
    ('language', 'Egypt', 'Arabic'),
    ('language', 'Vietnam', 'Vietnamese'),
    ('language', 'Thailand', 'Thai'),
    ('language', 'Israel', 'Hebrew'),
    ('language', 'England', 'English'),
    ('language', 'Australia', 'English'),
    ('continent', 'France', 'Europe'),
    ('continent', 'Kenya', 'Africa'),
    ('continent', 'Germany', 'Europe'),
    ('continent', 'Nigeria', 'Africa'),
    ('continent', 'Argentina', 'South America'),
    ('continent', 'Italy', 'Europe'),
    ('continent', 'Ghana', 'Africa'),
    ('continent', 'Poland', 'Europe'),
    ('landmark', 'the Eiffel Tower', 'Paris'),
    ('landmark', 'the Colosseum', 'Rome'),
    ('landmark', 'the Statue of Liberty', 'New York'),
    ('landmark', 'the Brandenburg Gate', 'Berlin'),
    ('landmark', 'the Sagrada Familia', 'Barcelona'),
    ('landmark', 'the Kremlin', 'Moscow'),
    ('landmark', 'the Golden Gate Bridge', 'San Francisco'),
    ('landmark', 'the Sydney Opera House', 'Sydney'),
    ('landmark', 'the Taj Mahal', 'Agra'),
    ('landmark', 'the Leaning Tower of Pisa', 'Pisa'),
    ('landmark', 'the Acropolis', 'Athens'),
    ('landmark', 'the Burj Khalifa', 'Dubai'),
    ('landmark', 'the Hollywood sign', 'Los Angeles'),
    ('landmark', 'the Louvre', 'Paris'),
    ('landmark', 'the Vatican', 'Rome'),
    ('landmark', 'the Empire State Building', 'New York'),
    ('profession', 'Albert Einstein', 'physicist'),
    ('profession', 'William Shakespeare', 'playwright'),
    ('profession', 'Wolfgang Amadeus Mozart', 'composer'),
    ('profession', 'Ludwig van Beethoven', 'composer'),
    ('profession', 'Isaac Newton', 'physicist'),
    ('profession', 'Frederic Chopin', 'composer'),
    ('profession', 'Mark Twain', 'writer'),
    ('colour', 'snow', 'white'),
    ('colour', 'coal', 'black'),
    ('colour', 'blood', 'red'),
    ('colour', 'the ocean', 'blue'),
    ('colour', 'a strawberry', 'red'),
    ('colour', 'a tomato', 'red'),
    ('young', 'cat', 'kitten'),
    ('young', 'cow', 'calf'),
    ('young', 'sheep', 'lamb'),
    ('young', 'horse', 'foal'),
    ('young', 'pig', 'piglet'),
)


@dataclass
class CounterfactualOptions:
    """Options of the edits_counterfactual suite (stage field ``builtin_options``)."""

    edits_per_batch: int = field(8, "Edits per stage (one batch of edits each).")
    rephrases: int = field(2, "Paraphrased prompts per edit (generalisation), at most 2.")
    locality: int = field(2, "Locality prompts per edit: alternately a held-back fact of the same "
                          "relation and one of another relation.")
    held_back: float = field(0.25, "Share of each relation's facts never edited, the source of "
                                "locality prompts.")

    def check(self) -> tuple[str, str] | None:
        if self.edits_per_batch < 1:
            return "edits_per_batch", f"expected an integer >= 1, got {self.edits_per_batch}"
        if not 0 <= self.rephrases <= 2:
            return "rephrases", f"expected 0, 1 or 2, got {self.rephrases}"
        if self.locality < 0:
            return "locality", f"expected an integer >= 0, got {self.locality}"
        if not 0 < self.held_back < 1:
            return "held_back", f"expected 0 < x < 1, got {self.held_back}"
        return None


def prompt_of(relation: str, subject: str, template: int = 0) -> str:
    text = TEMPLATES[relation][template]
    return text.format(s=subject, S=subject[:1].upper() + subject[1:])


def split_facts(seed: int, held_back: float) -> tuple[list, list]:
    """(edit order, held-back facts): per relation a seeded share is held back (at least one),
    the rest is edited in one seeded order."""
    rng = random.Random(f"edits_counterfactual:{seed}:split")
    edits, kept = [], []
    for relation in TEMPLATES:
        facts = [f for f in FACTS if f[0] == relation]
        rng.shuffle(facts)
        n = max(1, round(held_back * len(facts))) if facts else 0
        kept += facts[:n]
        edits += facts[n:]
    rng.shuffle(edits)
    return edits, kept


def _edit_record(fact, seed: int, opt: CounterfactualOptions, kept: list, period: int) -> Record:
    relation, subject, value = fact
    rng = random.Random(f"edits_counterfactual:{seed}:{relation}:{subject}")
    target = rng.choice([v for v in POOLS[relation] if v != value])
    same = [f for f in kept if f[0] == relation and f[1] != subject]
    other = [f for f in kept if f[0] != relation]
    rng.shuffle(same)
    rng.shuffle(other)
    local = []
    for k in range(opt.locality):
        first, second = (same, other) if k % 2 == 0 else (other, same)
        pool = first or second
        if pool:
            local.append(pool.pop())
    return Record(
        prompt=prompt_of(relation, subject), response=target,
        rephrase_prompt=[prompt_of(relation, subject, t) for t in range(1, 1 + opt.rephrases)],
        locality_prompt=[prompt_of(r, s) for r, s, _ in local],
        locality_ground_truth=[v for _, _, v in local],
        meta={"relation": relation, "subject": subject, "ground_truth": value,
              "period": period})


def build_batches(periods: int, seed: int, opt: CounterfactualOptions
                  ) -> list[tuple[list[Record], list[Record]]]:
    """(train, test) edits of every batch 1..``periods`` (test: copies of the same edits)."""
    edits, kept = split_facts(seed, opt.held_back)
    need = periods * opt.edits_per_batch
    if need > len(edits):
        raise ValueError(f"periods x edits_per_batch = {need} edits, but only {len(edits)} "
                         f"facts can be edited ({len(FACTS)} known facts, {len(kept)} held back "
                         "for locality prompts)")
    out = []
    for k in range(periods):
        batch = [_edit_record(f, seed, opt, kept, k + 1) for f in
                 edits[k * opt.edits_per_batch:(k + 1) * opt.edits_per_batch]]
        out.append((batch, [Record.from_dict(r.to_dict()) for r in batch]))
    return out


def sample_edits(records: list[Record], n: int | None, seed: int, key: str) -> list[Record]:
    """``max_test`` keeps the same edits as ``max_train`` (the stage's train sample)."""
    return sample_records(records, n, seed, f"{key}:train")

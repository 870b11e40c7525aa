"""Visual instruction tasks over generated scenes of coloured shapes (64x64, drawn by Pillow).

Five tasks ask about one property of a scene - ``visual_colour``, ``visual_shape``,
``visual_count``, ``visual_position`` (quadrant) and ``visual_compare`` (more circles than
squares?) - and ``visual_captions`` describes whole scenes (the captions an alignment stage
trains the vision encoder and projector on). Every task has one fixed prompt, so the answer
depends on the image alone: a model that ignores the image cannot beat chance (1 / labels, the
answers are drawn uniformly). Each task draws its scenes on its own background colour, as
continual visual-question-answering benchmarks draw each task from another image source; the
images, not only the questions, then tell the tasks apart (what routing by vision prototypes,
``stage_projector``, relies on). Captions cover the scenes of every task.

The image of a record is a ``scene:`` string (see :mod:`everlearn.vision.scenes`) rendered on
use; the split follows that string's stable hash, so train and test scenes never coincide.
The ``visual_shapes`` suite (see :mod:`everlearn.data.builtin.suites`) expands into the five
tasks as a stream.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from everlearn.data.builtin.base import BuiltinTask, Item
from everlearn.data.records import Record
from everlearn.schema import field
from everlearn.vision.scenes import COLOURS, KINDS, Scene, Shape

SIZE = 64
COLOUR_NAMES = list(COLOURS)
NUMBERS = ["one", "two", "three", "four"]
QUADRANTS = ["top left", "top right", "bottom left", "bottom right"]
BACKGROUNDS = {"colour": (255, 255, 255), "shape": (0, 0, 0), "count": (200, 200, 200),
               "position": (70, 70, 70), "compare": (120, 160, 170)}
PROMPTS = {"colour": "What colour is the shape?", "shape": "What shape is this?",
           "count": "How many shapes are there?", "position": "Where is the shape?",
           "compare": "Are there more circles than squares?", "captions": "Describe the image."}
LABELS = {"colour": COLOUR_NAMES, "shape": list(KINDS), "count": NUMBERS,
          "position": QUADRANTS, "compare": ["yes", "no"]}
TASK_ORDER = ["colour", "shape", "count", "position", "compare"]


def _plural(kind: str, n: int) -> str:
    return kind if n == 1 else kind + ("es" if kind.endswith("s") else "s")


def _scatter(rng: random.Random, radii: list[int], box: tuple[int, int, int, int]
             ) -> list[tuple[int, int]]:
    """Centres for shapes of half-sizes ``radii`` inside ``box`` (x0, y0, x1, y1), apart."""
    for _ in range(1000):
        centres: list[tuple[int, int]] = []
        for r in radii:
            for _ in range(100):
                x, y = rng.randint(box[0] + r, box[2] - r), rng.randint(box[1] + r, box[3] - r)
                if all((x - a) ** 2 + (y - b) ** 2 > (r + rb + 2) ** 2
                       for (a, b), rb in zip(centres, radii)):
                    centres.append((x, y))
                    break
            else:
                break
        if len(centres) == len(radii):
            return centres
    raise RuntimeError("no room for the shapes")  # a bug in the sizes below


def _one_big(rng: random.Random, task: str, kind: str, colour: str) -> Scene:
    r = rng.randint(9, 14)
    x, y = rng.randint(24, 40), rng.randint(24, 40)
    return Scene(BACKGROUNDS[task], (Shape(kind, colour, x, y, r),), SIZE)


def colour_scene(rng: random.Random, colour: str) -> tuple[Scene, str]:
    """(scene, caption) of the colour task for the answer ``colour``."""
    kind = rng.choice(KINDS)
    return _one_big(rng, "colour", kind, colour), f"a {colour} {kind}"


def shape_scene(rng: random.Random, kind: str) -> tuple[Scene, str]:
    colour = rng.choice(COLOUR_NAMES)
    return _one_big(rng, "shape", kind, colour), f"a {colour} {kind}"


def count_scene(rng: random.Random, word: str) -> tuple[Scene, str]:
    n = NUMBERS.index(word) + 1
    kind, colour = rng.choice(KINDS), rng.choice(COLOUR_NAMES)
    radii = [rng.randint(5, 7) for _ in range(n)]
    shapes = tuple(Shape(kind, colour, x, y, r)
                   for (x, y), r in zip(_scatter(rng, radii, (2, 2, SIZE - 2, SIZE - 2)), radii))
    return Scene(BACKGROUNDS["count"], shapes, SIZE), f"{word} {colour} {_plural(kind, n)}"


def position_scene(rng: random.Random, quadrant: str) -> tuple[Scene, str]:
    q = QUADRANTS.index(quadrant)
    kind, colour = rng.choice(KINDS), rng.choice(COLOUR_NAMES)
    r = rng.randint(6, 9)
    half = SIZE // 2
    x0, y0 = (q % 2) * half, (q // 2) * half
    x = rng.randint(x0 + r + 2, x0 + half - r - 2)
    y = rng.randint(y0 + r + 2, y0 + half - r - 2)
    return (Scene(BACKGROUNDS["position"], (Shape(kind, colour, x, y, r),), SIZE),
            f"a {colour} {kind} at the {quadrant}")


def compare_scene(rng: random.Random, answer: str) -> tuple[Scene, str]:
    more, fewer = rng.choice([(2, 1), (3, 1), (3, 2)])
    circles, squares = (more, fewer) if answer == "yes" else (fewer, more)
    kinds = ["circle"] * circles + ["square"] * squares
    radii = [rng.randint(5, 7) for _ in kinds]
    centres = _scatter(rng, radii, (2, 2, SIZE - 2, SIZE - 2))
    shapes = tuple(Shape(k, rng.choice(COLOUR_NAMES), x, y, r)
                   for k, (x, y), r in zip(kinds, centres, radii))
    caption = (f"{NUMBERS[circles - 1]} {_plural('circle', circles)} and "
               f"{NUMBERS[squares - 1]} {_plural('square', squares)}")
    return Scene(BACKGROUNDS["compare"], shapes, SIZE), caption


SCENES: dict[str, Callable[[random.Random, str], tuple[Scene, str]]] = {
    "colour": colour_scene, "shape": shape_scene, "count": count_scene,
    "position": position_scene, "compare": compare_scene}


def _question(task: str, rng: random.Random, answer: str) -> Item:
    scene, _ = SCENES[task](rng, answer)
    spec = scene.spec()
    return Item(PROMPTS[task], answer, group=spec, image=spec)


def _caption(rng: random.Random, source: str) -> Item:
    """A caption of a scene of task ``source`` (captions cycle through the tasks' scenes)."""
    scene, caption = SCENES[source](rng, rng.choice(LABELS[source]))
    spec = scene.spec()
    return Item(PROMPTS["captions"], caption, group=spec, image=spec)


@dataclass(frozen=True)
class VisualTask(BuiltinTask):
    """A visual task whose answers are exactly balanced: record k of a call is drawn for answer
    ``cycle[k % len(cycle)]`` (captions: for scenes of task ``cycle[k % 5]``), then the records
    are shuffled; the split and the uniqueness of (prompt, image) are as for every task."""

    cycle: tuple[str, ...] = ()
    make: Callable[[random.Random, str], Item] | None = dataclasses.field(default=None, repr=False)

    def generate(self, n: int, seed: int = 0, split: str = "train") -> list[Record]:
        rng = self._generator(n, seed, split)
        records: list[Record] = []
        seen: set[str] = set()
        for k in range(n):
            target = self.cycle[k % len(self.cycle)]
            for _ in range(10_000):
                item = self.make(rng, target)
                if self._split(item.group) == split and item.image not in seen:
                    break
            else:
                raise RuntimeError(f"{self.name}: the {split} split looks exhausted")
            seen.add(item.image)
            records.append(Record(prompt=item.prompt, response=item.answer,
                                  options=list(self.labels), task=self.name, image=item.image))
        rng.shuffle(records)
        return records


def _random_answer(make, cycle):
    return lambda rng: make(rng, rng.choice(cycle))


DESCRIPTIONS = {
    "colour": "visual: the colour of one shape (red/green/blue/yellow)",
    "shape": "visual: the kind of one shape (circle/square/triangle/cross)",
    "count": "visual: how many shapes (one..four)",
    "position": "visual: the quadrant of one shape (top left ... bottom right)",
    "compare": "visual: more circles than squares? (yes/no)",
}
def _visual_task(t: str) -> VisualTask:
    make = partial(_question, t)
    return VisualTask(name=f"visual_{t}", description=DESCRIPTIONS[t], metric="accuracy",
                      draw=_random_answer(make, LABELS[t]), labels=LABELS[t],
                      cycle=tuple(LABELS[t]), make=make)


TASKS: list[BuiltinTask] = [_visual_task(t) for t in TASK_ORDER] + [VisualTask(
    name="visual_captions", description="visual: captions of the scenes of every visual task, "
    "for an alignment stage (freeze_lm: true); scored by ROUGE-L", metric="rouge_l",
    draw=_random_answer(_caption, TASK_ORDER), cycle=tuple(TASK_ORDER), make=_caption)]
BY_SHORT_NAME = {t: TASKS[i] for i, t in enumerate(TASK_ORDER)}


@dataclass
class VisualOptions:
    """Options of the visual_shapes suite (stage field ``builtin_options``)."""

    tasks: list[str] = field(list(TASK_ORDER), "The tasks, in stream order (stages NAME-<task>): "
                          "colour, shape, count, position, compare.")
    train_size: int = field(200, "Training examples per task (before the stage's max_train).")
    test_size: int = field(50, "Test examples per task (before the stage's max_test).")

    def check(self) -> tuple[str, str] | None:
        """(field, problem) for the first bad value, else None."""
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            return "tasks", f"expected a non-empty list without repeats, got {self.tasks}"
        bad = [t for t in self.tasks if t not in BY_SHORT_NAME]
        if bad:
            return "tasks", f"expected names from {', '.join(TASK_ORDER)}, got {bad[0]!r}"
        for name in ("train_size", "test_size"):
            if getattr(self, name) < 1:
                return name, f"expected an integer >= 1, got {getattr(self, name)}"
        return None


def default_stages(opt: VisualOptions) -> int:
    return len(opt.tasks)


def stage_suffixes(opt: VisualOptions, stages: int) -> list[str]:
    return list(opt.tasks[:stages])


def build_stages(stages: int, seed: int,
                 opt: VisualOptions) -> list[tuple[list[Record], list[Record]]]:
    """(train, test) of the first ``stages`` tasks of ``opt.tasks``."""
    if not 1 <= stages <= len(opt.tasks):
        raise ValueError(f"periods: expected 1..{len(opt.tasks)} (the number of "
                         f"builtin_options.tasks), got {stages}")
    return [(BY_SHORT_NAME[t].generate(opt.train_size, seed, "train"),
             BY_SHORT_NAME[t].generate(opt.test_size, seed, "test")) for t in opt.tasks[:stages]]


def sample_test(records: list[Record], n: int | None, seed: int, key: str) -> list[Record]:
    """At most ``n`` test records, drawn by seed, in their original order."""
    if n is None or n >= len(records):
        return records
    rng = random.Random(f"{seed}:{key}:test")
    return [records[i] for i in sorted(rng.sample(range(len(records)), n))]

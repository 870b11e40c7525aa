"""Generated scenes: coloured shapes on a plain background, described by a short string.

A record of the built-in visual tasks names its image as ``scene:<spec>`` instead of a file: the
spec lists the background and every shape (kind, colour, centre, half-size), and rendering it is
deterministic, so a record (in a replay buffer, a checkpoint) always shows the same picture and
no image file is ever written. Example: ``scene:64;bg=255,255,255;circle,red,30,34,11``.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw

PREFIX = "scene:"
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220),
           "yellow": (235, 200, 20)}
KINDS = ("circle", "square", "triangle", "cross")


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    x: int  # centre, in pixels
    y: int
    r: int  # half of the shape's width


@dataclass(frozen=True)
class Scene:
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]
    size: int = 64

    def spec(self) -> str:
        """The ``scene:`` string that :func:`parse` reads back."""
        parts = [str(self.size), "bg=" + ",".join(map(str, self.background))]
        parts += [f"{s.kind},{s.colour},{s.x},{s.y},{s.r}" for s in self.shapes]
        return PREFIX + ";".join(parts)


def parse(spec: str) -> Scene:
    """A ``scene:`` string -> Scene; ``ValueError`` says what is wrong."""
    if not spec.startswith(PREFIX):
        raise ValueError(f"expected a string starting with {PREFIX!r}")
    head, bg, *shapes = spec[len(PREFIX):].split(";")
    size = int(head)
    if not 8 <= size <= 1024:
        raise ValueError(f"size {size}: expected 8..1024")
    if not bg.startswith("bg="):
        raise ValueError("expected 'bg=R,G,B' after the size")
    background = tuple(int(v) for v in bg[3:].split(","))
    if len(background) != 3:
        raise ValueError("bg: expected three numbers")
    out = []
    for text in shapes:
        kind, colour, x, y, r = text.split(",")
        if kind not in KINDS or colour not in COLOURS:
            raise ValueError(f"shape {text!r}: expected a kind in {KINDS} and a colour in "
                             f"{tuple(COLOURS)}")
        out.append(Shape(kind, colour, int(x), int(y), int(r)))
    return Scene(background, tuple(out), size)  # type: ignore[arg-type]


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image (Pillow); the same scene always gives the same pixels."""
    img = Image.new("RGB", (scene.size, scene.size), scene.background)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        fill = COLOURS[s.colour]
        box = (s.x - s.r, s.y - s.r, s.x + s.r, s.y + s.r)
        if s.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif s.kind == "square":
            draw.rectangle(box, fill=fill)
        elif s.kind == "triangle":
            draw.polygon([(s.x, s.y - s.r), (s.x - s.r, s.y + s.r), (s.x + s.r, s.y + s.r)],
                         fill=fill)
        else:  # cross: a plus sign, arms a third of the width thick
            t = max(1, round(s.r / 3))
            draw.rectangle((s.x - s.r, s.y - t, s.x + s.r, s.y + t), fill=fill)
            draw.rectangle((s.x - t, s.y - s.r, s.x + t, s.y + s.r), fill=fill)
    return img

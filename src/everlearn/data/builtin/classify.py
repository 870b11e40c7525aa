"""Sort words into categories that carry invented label names.

The model knows what an animal or a fruit is but not that animals are called "vorn"; test
words never occur in training, so passing needs the category rule, not memorised words.
Scored by option log-likelihood, so chance is 1 / number of labels.
"""

from __future__ import annotations

import random

from everlearn.data.builtin.base import BuiltinTask, Item

CATEGORIES = {
    "vorn": """dog cat horse cow pig sheep goat lion tiger bear wolf fox deer rabbit mouse
        elephant giraffe zebra monkey camel kangaroo panda koala squirrel otter beaver moose
        donkey hamster leopard cheetah hippo rhino gorilla hedgehog badger raccoon llama bison
        eagle owl parrot penguin duck frog snake turtle shark whale dolphin""",
    "glim": """apple banana cherry grape mango pear peach plum lemon lime melon watermelon
        strawberry blueberry raspberry blackberry pineapple papaya apricot coconut fig guava
        lychee orange grapefruit pomegranate tangerine nectarine cranberry gooseberry
        persimmon quince mandarin clementine avocado cantaloupe currant mulberry kumquat""",
    "tesk": """car bus truck train bicycle motorcycle airplane helicopter boat ship tram taxi
        van scooter tractor submarine yacht canoe kayak ferry ambulance limousine jeep minivan
        sailboat glider rocket skateboard sled wagon bulldozer forklift trolley subway jet
        hovercraft motorboat caravan unicycle tricycle moped zeppelin snowmobile raft""",
    "drub": """red blue green yellow purple pink brown black white grey violet indigo crimson
        scarlet maroon navy teal turquoise beige ivory magenta cyan amber lavender lilac khaki
        tan ochre sepia vermilion azure cerulean chartreuse fuchsia mauve taupe burgundy
        charcoal emerald cobalt aquamarine periwinkle""",
}
LABELS = list(CATEGORIES)
WORDS = sorted((w, label) for label, words in CATEGORIES.items() for w in words.split())


def _draw(rng: random.Random) -> Item:
    word, label = rng.choice(WORDS)
    return Item(f"Sort the word '{word}' into {', '.join(LABELS)}.", label, group=word)


TASK = BuiltinTask(
    name="classify",
    description="sort a word (animal/fruit/vehicle/colour) into invented labels (accuracy)",
    metric="accuracy",
    draw=_draw,
    labels=LABELS,
    test_fraction=0.25,
)

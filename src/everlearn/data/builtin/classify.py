"""Sort words into categories that carry invented label names.

The model knows what an animal or a fruit is but not that animals are called "vorn"; test
words never occur in training, so passing needs the category rule, not memorised words.
Scored by option log-likelihood, so chance is 1 / number of labels.
"""

from __future__ import annotations

import random

from everlearn.data.builtin.base import BuiltinTask, Item, stable_unit

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
WORDS = {label: sorted(words.split()) for label, words in CATEGORIES.items()}
TEST_PER_LABEL = 10  # held-out words per category: a balanced 40-word test set
TEST_WORDS = frozenset(
    w
    for ws in WORDS.values()
    for w in sorted(ws, key=lambda x: stable_unit(f"classify\0{x}"))[:TEST_PER_LABEL]
)


def _draw(rng: random.Random) -> Item:
    label = rng.choice(LABELS)  # balanced labels: always answering one label scores 1/4
    word = rng.choice(WORDS[label])
    return Item(f"Sort the word '{word}' into {', '.join(LABELS)}.", label, group=word)


TASK = BuiltinTask(
    name="classify",
    description="label animals/fruits/vehicles/colours with invented names vorn/glim/tesk/drub",
    metric="accuracy",
    draw=_draw,
    labels=LABELS,
    split_fn=lambda word: "test" if word in TEST_WORDS else "train",
)

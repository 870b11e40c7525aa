"""Rewrite a spelled-out date in the invented "Kesh" notation (day|month-number|year).

Needs the month-name-to-number mapping the model already knows plus a reordering it cannot
guess from the prompt, so it is failed before training and learned from a few examples.
"""

from __future__ import annotations

import calendar
import random

from everlearn.data.builtin.base import BuiltinTask, Item


def _draw(rng: random.Random) -> Item:
    year, month = rng.randint(1950, 2049), rng.randint(1, 12)
    day = rng.randint(1, calendar.monthrange(year, month)[1])
    return Item(
        f"Write {calendar.month_name[month]} {day}, {year} in Kesh notation.",
        f"{day:02d}|{month:02d}|{year}",
    )


TASK = BuiltinTask(
    name="dates",
    description="rewrite a date like 'March 14, 2021' in invented Kesh notation '14|03|2021'",
    metric="exact_match",
    draw=_draw,
)

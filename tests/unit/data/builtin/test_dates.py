"""The built-in dates task: every answer is correct."""

from __future__ import annotations

import calendar
import re

from everlearn.data.builtin import get_builtin_task


def test_dates_answers_correct():
    months = {m: i for i, m in enumerate(calendar.month_name) if m}
    for r in get_builtin_task("dates").generate(200, seed=0, split="train"):
        month, day, year = re.fullmatch(
            r"Write (\w+) (\d+), (\d{4}) in Kesh notation\.", r.prompt
        ).groups()
        day, year = int(day), int(year)
        assert 1 <= day <= calendar.monthrange(year, months[month])[1]
        assert r.response == f"{day:02d}|{months[month]:02d}|{year}"

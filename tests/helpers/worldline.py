"""Helpers shared by several files of the worldline tests.

The worldline suite: a deterministic changing world, its probe splits, its config form, and a
three-period stream end to end on the tiny model with per-split accuracy and FUAR."""

from __future__ import annotations

SMALL = {"people": 8, "new_people": 2, "companies": 3, "cities": 4, "roles": 4}

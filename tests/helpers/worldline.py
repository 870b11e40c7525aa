"""Helpers shared by several files of the worldline tests."""

from __future__ import annotations

SMALL = {"people": 8, "new_people": 2, "companies": 3, "cities": 4, "roles": 4}

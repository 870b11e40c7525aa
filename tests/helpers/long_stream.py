"""Helpers shared by several files of the long stream tests."""

from __future__ import annotations

SIX = [[0], [1], [2], [3], [4], [5]]  # one stage per phase

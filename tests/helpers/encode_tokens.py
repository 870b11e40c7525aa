"""Helpers shared by several files of the encode tokens tests.

Token ids that get trained and scored: whitespace at the prompt/continuation boundary, BOS,
truncation of long prompts (and its share per stage in results.json)."""

from __future__ import annotations

# --- truncation of long prompts -----------------------------------------------------------
DEFINITION = "Definition: answer yes when the input repeats one word."

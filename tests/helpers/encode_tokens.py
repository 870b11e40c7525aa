"""Helpers shared by several files of the encode tokens tests."""

from __future__ import annotations

# --- truncation of long prompts -----------------------------------------------------------
DEFINITION = "Definition: answer yes when the input repeats one word."

"""-q's switch of the libraries' progress bars: off for the command, back as it was after."""

from __future__ import annotations

import os
import sys

from transformers.utils import logging as hf_logging

from everlearn.progress_bars import DATASETS_SWITCH, library_bars_off


def test_transformers_bars_are_off_then_restored():
    assert hf_logging.is_progress_bar_enabled()
    restore = library_bars_off()
    try:
        assert not hf_logging.is_progress_bar_enabled()
        bar = hf_logging.tqdm(range(3), desc="Loading weights")
        assert type(bar).__name__ == "EmptyTqdm"  # what transformers makes when bars are off
    finally:
        restore()
    assert hf_logging.is_progress_bar_enabled()


def test_bars_a_user_switched_off_stay_off():
    hf_logging.disable_progress_bar()
    try:
        library_bars_off()()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


def test_datasets_bars(monkeypatch):
    monkeypatch.delenv(DATASETS_SWITCH, raising=False)
    if "datasets" not in sys.modules:  # not imported yet: its environment switch, then none
        restore = library_bars_off()
        assert os.environ[DATASETS_SWITCH] == "1"
        restore()
        assert DATASETS_SWITCH not in os.environ
    import datasets as datasets_lib

    assert not datasets_lib.are_progress_bars_disabled()
    restore = library_bars_off()
    try:
        assert datasets_lib.are_progress_bars_disabled()
        assert DATASETS_SWITCH not in os.environ  # imported: its own function, no variable
    finally:
        restore()
    assert not datasets_lib.are_progress_bars_disabled()


def test_a_users_datasets_variable_is_left_alone(monkeypatch):
    monkeypatch.setenv(DATASETS_SWITCH, "0")
    if "datasets" not in sys.modules:
        library_bars_off()()
        assert os.environ[DATASETS_SWITCH] == "0"

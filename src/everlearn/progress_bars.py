"""The libraries' own progress bars (transformers' "Loading weights", datasets' map and load
bars), switched off for the length of a quiet command (``-q``) and back on after it.

everlearn's bars follow ``quiet`` where they are made; the libraries keep a process-wide
switch each, so ``-q`` flips those for the command and restores them afterwards (a notebook or
a test that calls ``cli.main`` several times gets each call's own setting). datasets is not
imported for this (it costs a second at start-up): when it is not loaded yet, its own
environment switch ``HF_DATASETS_DISABLE_PROGRESS_BARS`` is set for the command and removed
after it, unless the user set it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

DATASETS_SWITCH = "HF_DATASETS_DISABLE_PROGRESS_BARS"


def library_bars_off() -> Callable[[], None]:
    """Switch transformers' and datasets' progress bars off; returns what switches them back
    to how they were."""
    from transformers.utils import logging as hf_logging

    transformers_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    datasets_lib, datasets_was_on, set_env = None, False, False
    if "datasets" in sys.modules:
        import datasets as datasets_lib  # loaded already

        datasets_was_on = not datasets_lib.are_progress_bars_disabled()
        datasets_lib.disable_progress_bars()
    elif DATASETS_SWITCH not in os.environ:
        os.environ[DATASETS_SWITCH] = "1"  # read by datasets when the run imports it
        set_env = True

    def restore() -> None:
        if transformers_was_on:
            hf_logging.enable_progress_bar()
        if datasets_was_on:
            datasets_lib.enable_progress_bars()
        if set_env:
            os.environ.pop(DATASETS_SWITCH, None)

    return restore

"""Run drivers (stream, text stream, recycle, eval-only, sweep) and the run directory they own."""

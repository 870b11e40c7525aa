"""Stage kinds (sft, cpt, align, edit) and the stream of stages a run trains on."""

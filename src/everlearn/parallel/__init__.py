"""Parallel modes: data parallel by hand, FSDP and DeepSpeed ZeRO, behind one interface the loop
calls."""

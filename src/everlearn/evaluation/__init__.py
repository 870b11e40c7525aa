"""Evaluation: the accuracy matrix, scorers, general-ability probes and the pure-numpy metrics."""

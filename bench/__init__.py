"""Benchmarks of what hybridchat adds on top of the model: ``make bench``."""

"""CREIC lab farm: one scheduler for the Film Lab's renders and the Work 4.0 Lab's training runs."""

__version__ = "0.1.0"

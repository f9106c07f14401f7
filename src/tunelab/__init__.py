"""tunelab: run, measure and compare fine-tuning methods."""

__version__ = "0.1.0"

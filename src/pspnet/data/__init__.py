"""Datasets: the table of sources (sources.py: synthetic and the on-disk formats in formats/),
augmentation, loaders with a resumable training stream, and `data check`."""

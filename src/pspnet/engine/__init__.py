"""Running models over data: the training loop and its run directory, evaluation over a split,
prediction to files, progress bars and device choice."""

"""Running models over data: the training loop, its run directory and logs, evaluation over a split, the
run report, prediction to files and videos, progress bars, device choice and the environment of a run."""

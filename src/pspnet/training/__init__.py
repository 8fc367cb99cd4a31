"""Training: the loop (trainer.py), its run directory (run_dir.py) and logs (run_log.py), BatchNorm synchronised
across processes (sync_bn.py), and the HTML report of a run (run_report.py)."""

"""`pspnet playground`: a local web application to add datasets, train, follow, compare, evaluate, try and export
PSPNet models without writing YAML. Every run it makes is an ordinary run directory; every job is its own
`pspnet` process (jobs.py); the state lives in the run directories and a small SQLite index (store.py)."""

"""`pspnet serve`: an HTTP API and a web page for segmentation (FastAPI + uvicorn, the `serve` extra),
with one model behind a bounded queue and a single inference worker (worker.py)."""

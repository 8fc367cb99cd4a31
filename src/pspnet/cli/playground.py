"""`pspnet playground`: the Model Playground in the browser (the `serve` extra: FastAPI, uvicorn)."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from .common import positive_int
from .serve import is_loopback


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "playground",
        help="train, compare, try and export models from a web page",
        description="A local web application over WORKSPACE: add datasets, start runs from a form (or from a preset "
        "or an earlier run), follow them live, compare them, evaluate, try and export them. Every run is an ordinary "
        "run directory under WORKSPACE/runs, every job its own `pspnet` process. The HTTP API the page uses is under "
        "/api/ (see the docs).",
    )
    parser.add_argument("workspace", nargs="?", default="playground", help="folder of the runs and the job index")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument(
        "--token",
        help="required of every request (login page, or Authorization: Bearer TOKEN); needed for any --host other "
        "than a loopback address. `--token generate` makes one and prints it. Default: the PSPNET_PLAYGROUND_TOKEN "
        "environment variable, if set",
    )
    parser.add_argument(
        "--data-root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder whose datasets and weight files may be used (repeatable; default: the current directory)",
    )
    parser.add_argument("--max-jobs", type=positive_int, default=1, metavar="N", help="jobs run at once (default 1)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    token = args.token or os.environ.get("PSPNET_PLAYGROUND_TOKEN")
    if token == "generate":
        token = secrets.token_urlsafe(24)
        print(f"token: {token}", flush=True)
    if not is_loopback(args.host) and not token:
        raise ConfigError(f"--host {args.host} lets other machines in: set --token (or --token generate)")
    try:  # heavy and optional (fastapi, uvicorn): only when the command runs
        import uvicorn

        from ..playground.app import PlaygroundOptions, create_playground
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{exc.name} is not installed; pspnet playground needs the serve extra: pip install 'pspnet[serve]'"
        ) from None
    roots = tuple(Path(root).resolve() for root in args.data_root) or (Path.cwd().resolve(),)
    for root in roots:
        if not root.is_dir():
            raise ConfigError(f"--data-root {root}: not a folder")
    workspace = Path(args.workspace).resolve()
    options = PlaygroundOptions(workspace, roots, token, args.max_jobs)
    app = create_playground(options)
    print(f"playground on http://{args.host}:{args.port}/ (workspace {workspace})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0

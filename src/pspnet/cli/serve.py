"""`pspnet serve`: an HTTP API and a web page for one model (the `serve` extra: FastAPI, uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from .common import add_inference_options, load_for_inference, positive_int
from .evaluate import CHECKPOINT_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a model over HTTP: JSON API and web page",
        description="Serve CHECKPOINT on HTTP: the page at /, POST /v1/segment, GET /v1/model, /healthz, /readyz and "
        "/metrics. One model and one inference worker; requests wait in a bounded queue. Uploads larger "
        "than --max-pixels are refused from their header: default 40 M pixels, or the protocol's own "
        "lower cap (whole image: 8 M).",
        epilog="SIGTERM or Ctrl-C stops accepting connections, answers the requests already admitted (up to "
        "--drain-timeout seconds), then exits.",
    )
    serve.add_argument("checkpoint", help=CHECKPOINT_HELP)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        metavar="MB",
        help="largest request body in MiB; longer uploads are refused (413) without reading them (default 20)",
    )
    serve.add_argument(
        "--queue-size",
        type=int,
        default=64,
        metavar="N",
        help="requests that may wait while one is segmented; more are answered 503 with Retry-After (default 64)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=positive_int,
        default=30,
        metavar="S",
        help="seconds that admitted requests get to finish after SIGTERM (default 30)",
    )
    serve.add_argument(
        "--token",
        help="required of every request but /healthz and /readyz (the page's login, or Authorization: Bearer TOKEN); "
        "needed for any --host other than a loopback address. Default: the PSPNET_SERVE_TOKEN environment variable",
    )
    serve.add_argument(
        "--no-token",
        action="store_true",
        help="serve a non-loopback --host without a token: anyone who can reach it may use it (a warning is printed)",
    )
    serve.add_argument(
        "--label-studio",
        action="store_true",
        help="also answer Label Studio's ML backend protocol (/health, /setup, /predict, /webhook): connect this server to a "
        "project (Settings > Model) and its tasks get the model's masks as predictions",
    )
    serve.add_argument(
        "--label-studio-url",
        metavar="URL",
        help="with --label-studio: Label Studio's address, to fetch task images from (default: the one it sends to "
        "/setup); its API token: the LABEL_STUDIO_API_KEY environment variable (default: the one it sends)",
    )
    serve.add_argument(
        "--local-files-root",
        metavar="DIR",
        help="with --label-studio: read local-files images (/data/local-files/?d=PATH) from DIR, Label Studio's "
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, instead of fetching them",
    )
    serve.add_argument(
        "--retrain-config",
        metavar="CONFIG",
        help="with --label-studio: on Label Studio's Start Training, export the project and fine-tune this checkpoint "
        "on it with CONFIG (data.format label-studio, data.root the export, train.init_from the checkpoint)",
    )
    serve.add_argument(
        "--retrain-dir",
        default="runs/label-studio",
        metavar="DIR",
        help="with --retrain-config: where the exports and the runs go (default runs/label-studio)",
    )
    add_inference_options(serve)
    serve.set_defaults(run=run_serve)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..system.device import resolve_device  # heavy (torch): only when the command runs

    try:  # heavy and optional (fastapi, uvicorn): only when the command runs
        from ..serve.app import ServeOptions, create_app, default_pixel_cap, run
        from ..serve.label_studio import LabelStudioOptions
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{exc.name} is not installed; pspnet serve needs the serve extra: pip install 'pspnet[serve]'"
        ) from None
    token = args.token or os.environ.get("PSPNET_SERVE_TOKEN")
    if token and args.no_token:
        raise ConfigError("--token and --no-token contradict each other")
    if not is_loopback(args.host) and not token:
        if not args.no_token:
            raise ConfigError(
                f"--host {args.host} lets other machines in: set --token (or PSPNET_SERVE_TOKEN), or pass --no-token "
                "to serve without one"
            )
        print(f"warning: serving {args.host} without a token: anyone who can reach it may use it", file=sys.stderr)
    loaded = load_for_inference(args, resolve_device(args.device))
    config = loaded.config
    options = ServeOptions(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=default_pixel_cap(config.eval),
        queue_size=args.queue_size,
        token=token,
    )
    label_studio = None
    if args.retrain_config:
        from ..config import load_config

        load_config(args.retrain_config)  # a bad config fails now, not when Label Studio asks for training
    if args.label_studio:
        label_studio = LabelStudioOptions(
            args.label_studio_url,
            os.environ.get("LABEL_STUDIO_API_KEY"),
            args.local_files_root,
            args.retrain_config,
            args.retrain_dir,
        )
    elif args.label_studio_url or args.local_files_root or args.retrain_config:
        raise ConfigError("--label-studio-url, --local-files-root and --retrain-config go with --label-studio")
    app = create_app(loaded, options, label_studio)
    print(
        f"serving {loaded.path} on http://{args.host}:{args.port}/ (API: POST /v1/segment; protocol: "
        f"{config.eval.describe()}; uploads up to {args.max_upload_mb:g} MB and {options.max_pixels / 1e6:g} M pixels)"
        + ("; Label Studio ML backend: /health, /setup, /predict, /webhook" if label_studio else ""),
        flush=True,
    )
    try:
        run(app, args.host, args.port, args.drain_timeout, args.quiet)
    except KeyboardInterrupt:  # Ctrl-C after the admitted requests were answered
        return 130
    return 0

"""``cad serve``: the engine kept warm behind an HTTP API for the Segment Editor's CAD AI effect (local or remote).

Every flag is checked before the socket is opened (exit 2, one line); a non-loopback ``--host`` prints a warning,
since the token then crosses the network in clear text unless a TLS tunnel carries it. See docs/server.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cadcore import __version__
from cadcore.device import configure_cpu_threads, pick_device
from cadcore.errors import CadError
from cadcore.server.runner import ServeOptions


def options_of(args: argparse.Namespace) -> ServeOptions:
    """The flags as :class:`ServeOptions`, each range refused in one line."""
    for flag, value in (("--max-sessions", args.max_sessions), ("--models-memory", args.models_memory),
                        ("--session-ttl", args.session_ttl), ("--max-upload-mb", args.max_upload_mb),
                        ("--job-timeout", args.job_timeout)):
        if not value > 0:
            raise CadError(f"{flag} must be greater than 0, got {value:g}")
    if not 0 <= args.port <= 65535:
        raise CadError(f"--port must be in [0, 65535], got {args.port}")
    ready = Path(args.ready_file) if args.ready_file else None
    if ready is not None and not ready.parent.is_dir():
        raise CadError("the ready file's folder does not exist", ready)
    return ServeOptions(args.host, args.port, args.max_sessions, args.models_memory, args.session_ttl,
                        args.max_upload_mb, args.job_timeout, ready)


def run(args: argparse.Namespace) -> int:
    from cadcore.server.security import default_token_file, is_loopback, read_token, write_new_token

    options = options_of(args)
    if args.token_file:
        token = read_token(args.token_file)
    else:
        path = default_token_file()
        token = write_new_token(path)
        print(f"cad serve: token written to {path} (mode 0600)", flush=True)
    if not is_loopback(options.host):
        sys.stderr.write(f"cad serve: warning: listening on {options.host}, not loopback: the token and the images "
                         f"travel in clear text; reach it through an SSH tunnel or a TLS proxy\n")
        sys.stderr.flush()
    device = pick_device(args.device)
    configure_cpu_threads()

    from cadcore.server.app import create_app
    from cadcore.server.handlers import ServerContext, warm_imports
    from cadcore.server.runner import serve
    from cadcore.server.sessions import sweep_period

    warm_imports()
    context = ServerContext.create(options, device, __version__)
    try:
        serve(create_app(context, token, sweep_period=sweep_period(options.session_ttl)), options, __version__)
    finally:
        context.store.close()  # also when uvicorn never started (a lifespan that did not run leaves the folder)
    return 0

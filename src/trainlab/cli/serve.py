"""`trainlab serve RUN|MODEL`: the model behind a local page and a JSON endpoint (trainlab.serve).

trainlab.serve is imported inside the handler: it imports torch, and `--help` answers without it."""

from __future__ import annotations

import argparse
import sys

from trainlab.cli.args import add_allow_import


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free one), got {port}")
    return port


def cmd_serve(args) -> int:
    from trainlab.analysis.tables import printable
    from trainlab.metrics import percent
    from trainlab.serve import ServedModel, make_server, serve

    model = ServedModel(args.path, device=args.device, allow_import=tuple(args.allow_import or ()))
    server = make_server(model, args.host, args.port)
    card, test = model.card, model.card.test or {}
    accuracy = f", test accuracy {percent(test['accuracy'])}" if isinstance(test.get("accuracy"), (int, float)) else ""
    print(printable(f"serving {args.path} ({card.model}, {len(card.classes)} classes{accuracy}) at {server.url}"),
          flush=True)
    print(f"  page: {server.url}   JSON: curl -F file=@image.png {server.url}predict   Ctrl-C stops it",
          flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"  note: --host {printable(args.host)} lets other machines reach it; there is no login",
              file=sys.stderr, flush=True)
    serve(server)
    return 0


def add_command(sub) -> None:
    s = sub.add_parser("serve", help="a local page and JSON endpoint that classify uploaded images")
    s.add_argument("path", metavar="RUN|MODEL", help="run folder, checkpoint or model.pt")
    s.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000; 0: any free one)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    add_allow_import(s)
    s.set_defaults(func=cmd_serve)

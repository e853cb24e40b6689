"""The HTTP server: the standard library's ThreadingHTTPServer, one thread per connection.

GET / is the page; POST / takes the page's form and answers with the page; POST /predict takes
the same uploads (or the image as the raw body) and answers JSON. A refused request is one
sentence (JSON {"error": ...} or on the page) and the server keeps serving: nothing a client
sends reaches more than one request's thread, a bounded body, and folder:'s safe decoder."""

from __future__ import annotations

import errno
import json
import logging
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from trainlab.analysis.tables import printable
from trainlab.errors import ConfigError, TrainlabError
from trainlab.serve.model import ServedModel
from trainlab.serve.page import CSP, page, seen_png
from trainlab.serve.uploads import MAX_BODY, UploadError, check_length, files_of

log = logging.getLogger("trainlab")

BUSY = 8  # requests reading or classifying uploads at once: their bodies are what memory holds
BUSY_WAIT = 30.0  # seconds a request waits for a turn before "busy"
DRAIN = 64 * 1024 * 1024  # a refused body up to this size is read and dropped, so the client sees why
TIMEOUT = 30  # seconds a connection may stall
CONNECTIONS = 64  # open connections (a thread each); one more is answered 503 at once and closed


class Handler(BaseHTTPRequestHandler):
    server_version = "trainlab-serve"
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries its Content-Length
    timeout = TIMEOUT

    # ---------------------------------------------------------------- answers

    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, close: bool = False) -> None:
        self._send(status, (json.dumps(obj) + "\n").encode(), "application/json", close)

    def _html(self, status: int, **kw) -> None:
        self._send(status, page(self.server.model.card, **kw).encode("utf-8"), "text/html; charset=utf-8")

    def _refuse(self, path: str, status: int, message: str, close: bool = False) -> None:
        log.info("serve: refused (%d): %s", status, printable(message))
        if path == "/":
            self._send(status, page(self.server.model.card, error=message).encode("utf-8"),
                       "text/html; charset=utf-8", close)
        else:
            self._json(status, {"error": message}, close)

    def log_message(self, format, *args) -> None:  # noqa: A002 - http.server's name
        log.debug("serve: %s %s", self.address_string(), printable(format % args))

    # ---------------------------------------------------------------- requests

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urlsplit(self.path).path
        if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # a body is not read here: it must not become the next request
        if path == "/":
            self._html(200)
        elif path == "/health":
            card = self.server.model.card
            self._json(200, {"ok": True, "model": card.model, "classes": card.classes})
        else:
            self._json(404, {"error": f"no page {printable(path)[:80]!r}: the page is /, the endpoint POST /predict"})

    do_HEAD = do_GET

    def handle_expect_100(self) -> bool:
        # `curl -F` asks before sending a large body: refuse it unsent
        try:
            check_length(self.headers)
        except UploadError as e:
            self._refuse(urlsplit(self.path).path, e.status, str(e), close=True)
            return False
        return super().handle_expect_100()

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if url.path not in ("/", "/predict"):
            self._drop_body()
            return self._refuse("/predict", 404, "POST to /predict (JSON) or / (the page)", close=True)
        try:
            length = check_length(self.headers)
        except UploadError as e:
            self._refuse(url.path, e.status, str(e), close=True)
            self._drop_body()
            return
        if not self.server.busy.acquire(timeout=BUSY_WAIT):
            self._drop_body()
            return self._refuse(url.path, 503, "the server is busy: try again in a moment", close=True)
        try:
            self._answer(url, length)
        finally:
            self.server.busy.release()

    def _answer(self, url, length: int) -> None:
        try:
            body = self.rfile.read(length)  # first: an unread body would be read as the next request
            if len(body) < length:
                self.close_connection = True
                raise UploadError(400, f"the body ended after {len(body)} of {length} bytes: send it again")
            query = parse_qs(url.query)
            k = _k(query.get("k", ["5"])[-1], len(self.server.model.card.classes))
            name = query.get("name", ["(body)"])[-1]
            files = files_of(self.headers.get("Content-Type", ""), body, name)
            images = self.server.model.decode_all(files)
            results = self.server.model.top_k(images, [n for n, _ in files], k)
        except UploadError as e:
            return self._refuse(url.path, e.status, str(e))
        except ConfigError as e:
            return self._refuse(url.path, 400, str(e))
        except MemoryError:
            return self._refuse(url.path, 503, "out of memory for this upload: send smaller images or fewer at a time")
        except (TimeoutError, OSError):
            self.close_connection = True  # the client stalled or left: nobody to answer
            return
        except Exception as e:  # noqa: BLE001 - trainlab's own fault: still one sentence, and serving
            log.error("serve: internal error: %s: %s", type(e).__name__, printable(e))
            return self._refuse(url.path, 500, f"internal error ({type(e).__name__}): a bug in trainlab serve")
        if url.path == "/predict":
            return self._json(200, {"predictions": results})
        self._html(200, results=results, seen=[seen_png(x.numpy()) for x in images])

    def _drop_body(self) -> None:
        """Read and drop a refused body (up to DRAIN bytes), so the client reads the answer
        instead of a reset; then the connection closes."""
        self.close_connection = True
        try:
            left = min(int(self.headers.get("Content-Length") or 0), DRAIN)
            self.connection.settimeout(2)
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except (ValueError, OSError):
            pass


def _k(text: str, n: int) -> int:
    try:
        k = int(text)
    except ValueError:
        raise UploadError(400, f"k={printable(text)[:20]!r}: give a whole number of classes, 1 to {n}") from None
    if not 1 <= k:
        raise UploadError(400, f"k={k}: give a whole number of classes, 1 to {n}")
    return min(k, n)


_FULL_BODY = json.dumps({"error": f"the server has {CONNECTIONS} connections open: try again in a moment"}).encode()
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: " + str(len(_FULL_BODY)).encode() + b"\r\n\r\n" + _FULL_BODY)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled client never holds up the stop
    request_queue_size = 64  # socketserver's 5 drops connects in a burst (a 1 s SYN retry each)

    def __init__(self, model: ServedModel, host: str, port: int):
        self.model = model
        self.busy = threading.BoundedSemaphore(BUSY)
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.slots = threading.BoundedSemaphore(CONNECTIONS)
        super().__init__((host, port), Handler)

    def process_request(self, request, client_address) -> None:
        # a thread per connection, but not without end: idle or slow clients cannot pile up threads
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(_FULL)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def server_bind(self) -> None:
        # HTTPServer's own would look the host name up (getfqdn): slow, and not needed
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def make_server(model: ServedModel, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """The bound server (not yet serving); a port in use or a bad host is one sentence."""
    try:
        return Server(model, host, port)
    except socket.gaierror:
        raise ConfigError(f"--host {printable(host)}: not a name or address this machine can listen on "
                          "(e.g. 127.0.0.1, or 0.0.0.0 for every interface)") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise TrainlabError(f"port {port} on {printable(host)} is in use: stop what listens there, "
                                "or pick another port with --port") from None
        if e.errno == errno.EACCES:
            raise TrainlabError(f"no permission to listen on port {port}: pick one above 1023 with --port") from None
        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise ConfigError(f"--host {printable(host)}: not an address of this machine "
                              "(e.g. 127.0.0.1, or 0.0.0.0 for every interface)") from None
        raise


def serve(server: Server) -> None:
    """Serve until Ctrl-C / SIGTERM (a KeyboardInterrupt in this thread), then close the socket."""
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


__all__ = ["MAX_BODY", "Server", "make_server", "serve"]

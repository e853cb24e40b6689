"""`trainlab serve`: a trained model behind a local page and a JSON endpoint.

uploads: what a request carries (bounded); model: the model, loaded once, and its card;
page: the HTML; server: the HTTP server (the standard library's, no dependency)."""

from trainlab.serve.model import ServedModel
from trainlab.serve.server import make_server, serve

__all__ = ["ServedModel", "make_server", "serve"]

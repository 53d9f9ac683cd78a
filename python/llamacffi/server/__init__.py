"""An OpenAI-compatible HTTP server over the service (``pip install 'llamacffi[server]'``).

``llamacffi serve`` runs it; :func:`create_app` gives the ASGI app to run or mount elsewhere.
"""

from .app import Server, create_app
from .errors import APIError

__all__ = ["APIError", "Server", "create_app"]

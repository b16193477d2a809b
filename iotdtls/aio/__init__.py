"""asyncio endpoints: :func:`connect` for clients, :func:`serve` for servers."""

from .client import ClientSession, connect
from .server import Server, ServerSession, serve

__all__ = ["ClientSession", "Server", "ServerSession", "connect", "serve"]

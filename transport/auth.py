"""Credentials: per-client tokens and the simulation worker's credential, both HMAC-SHA256 under the server's secret,
sent as gRPC metadata with the client id.

The two are derived in separate domains ("client:ID" and "worker"), so no client id, negative ones included, yields a
token that acts for every client. The server holds only the secret; a deployed client holds its own token; a
simulation worker, which runs tasks of many clients, holds the secret and signs each call. A deployed server refuses
the worker credential. Without a secret the server is open (simulations on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

CLIENT_KEY = "x-fl-client"
TOKEN_KEY = "x-fl-token"
SESSION_KEY = "x-fl-session"

# A simulation worker runs tasks of many clients: it signs as WORKER and may act for any client.
WORKER = -1

Metadata = tuple[tuple[str, str], ...]


def client_token(secret: bytes, client_id: int) -> str:
    """The hex HMAC-SHA256 of "client:ID" under the server's secret; client ids are >= 0."""
    if client_id < 0:
        raise ValueError(f"client ids are >= 0, got {client_id}")
    return _mac(secret, f"client:{client_id}")


def worker_token(secret: bytes) -> str:
    """The simulation worker's credential, which acts for every client (never accepted by a deployed server)."""
    return _mac(secret, "worker")


def auth_metadata(client_id: int, token: str) -> Metadata:
    """The call metadata that proves `client_id` (WORKER with the worker's token)."""
    return (CLIENT_KEY, str(client_id)), (TOKEN_KEY, token)


def authenticated_client(secret: bytes, metadata: Iterable[tuple[str, str | bytes]]) -> int | None:
    """The client id the metadata proves (WORKER for the worker's credential), or None if it is missing, malformed
    or signed wrongly."""
    values = dict(metadata)
    client, token = values.get(CLIENT_KEY), values.get(TOKEN_KEY)
    if not isinstance(client, str) or not isinstance(token, str) or not re.fullmatch(r"-?[0-9]{1,19}", client):
        return None
    client_id = int(client)
    if client_id < WORKER:
        return None
    expected = worker_token(secret) if client_id == WORKER else client_token(secret, client_id)
    return client_id if hmac.compare_digest(expected.encode(), token.encode()) else None


def _mac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()

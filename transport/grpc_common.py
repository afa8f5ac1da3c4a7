"""What the gRPC servers and clients of transport/ share: listening with or without TLS, dialing with or without it."""

from __future__ import annotations

from typing import Any, Sequence

import grpc


def add_port(server: Any, address: str, tls: tuple[str, str] | None) -> int:
    """Listen on `address` (TLS with the (cert, key) PEM files when given); returns the port. `server` is a
    grpc.Server or a grpc.aio.Server."""
    if tls is None:
        return server.add_insecure_port(address)
    with open(tls[0], "rb") as cert, open(tls[1], "rb") as key:
        credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
    return server.add_secure_port(address, credentials)


def open_channel(address: str, root_cert_path: str | None, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
    """A channel to `address`, trusting `root_cert_path` (TLS) when given."""
    if root_cert_path is None:
        return grpc.insecure_channel(address, options=list(options))
    with open(root_cert_path, "rb") as cert:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read())
    return grpc.secure_channel(address, credentials, options=list(options))

"""What the gRPC servers and clients of transport/ share: listening and dialing with or without TLS (mutual TLS when
the server is given the CA its callers' certificates must chain to), the names a certificate gives, and the pieces of
a grpc.aio server driven from synchronous code: its event loop thread, its limits, refusals as statuses, frames read
under an idle deadline, and per-caller call slots."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import grpc
from cryptography import x509
from google.protobuf.message import DecodeError, Message

from transport.board import Refused
from transport.proto import fl_pb2

Code = grpc.StatusCode


@dataclass(frozen=True)
class ServerLimits:
    idle_seconds: float = 30.0  # a stream that moves no frame for this long is cancelled
    calls_per_client: int = 4  # concurrent calls of one client id
    calls_per_worker: int = 256  # concurrent calls of the simulation worker credential
    max_concurrent_calls: int = 10_000  # beyond this, gRPC answers RESOURCE_EXHAUSTED at once


class ListenError(OSError):
    """The server cannot listen on the address asked for (a port in use, a bad host)."""


def add_port(server: Any, address: str, tls: tuple[str, str] | None, client_ca: str | None = None) -> int:
    """Listen on `address` (TLS with the (cert, key) PEM files when given; with `client_ca`, every caller must
    present a certificate that chains to it); returns the port. `server` is a grpc.Server or a grpc.aio.Server."""
    if tls is None:
        return server.add_insecure_port(address)
    with open(tls[0], "rb") as cert, open(tls[1], "rb") as key:
        pair = (key.read(), cert.read())
    if client_ca is None:
        return server.add_secure_port(address, grpc.ssl_server_credentials([pair]))
    with open(client_ca, "rb") as ca:
        credentials = grpc.ssl_server_credentials([pair], root_certificates=ca.read(), require_client_auth=True)
    return server.add_secure_port(address, credentials)


def open_channel(address: str, root_cert_path: str | None, options: Sequence[tuple[str, Any]],
                 identity: tuple[str, str] | None = None) -> grpc.Channel:
    """A channel to `address`, trusting `root_cert_path` (TLS) when given, and presenting the (cert, key) PEM files
    of `identity` to a server that asks for a client certificate."""
    if root_cert_path is None:
        return grpc.insecure_channel(address, options=list(options))
    with open(root_cert_path, "rb") as cert:
        root = cert.read()
    chain = key = None
    if identity is not None:
        with open(identity[0], "rb") as cert, open(identity[1], "rb") as private:
            chain, key = cert.read(), private.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
    return grpc.secure_channel(address, credentials, options=list(options))


def certificate_names(cert_path: str) -> list[str]:
    """The names a PEM certificate gives its subject: its common names and DNS subjectAltNames. ValueError if the
    file is not a certificate; OSError if it cannot be read."""
    with open(cert_path, "rb") as file:
        data = file.read()
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise ValueError(f"{cert_path} is not a PEM certificate ({error})") from None
    names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]
    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    return names + alternatives.get_values_for_type(x509.DNSName)


def peer_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The names the caller's certificate gives (mutual TLS): its common name and subjectAltNames."""
    auth = context.auth_context()
    names = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    return [name.decode(errors="replace") for name in names]


def aio_server(max_message_bytes: int, max_calls: int) -> grpc.aio.Server:
    """A grpc.aio server for messages of at most `max_message_bytes` that holds at most `max_calls` calls."""
    options = [("grpc.max_send_message_length", max_message_bytes),
               ("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.so_reuseport", 0),  # a second server on a busy port fails instead of sharing it
               # gRPC's core cancels calls beyond its queue (1,000 by default) before Python sees them
               ("grpc.server.max_pending_requests", max_calls),
               ("grpc.server.max_pending_requests_hard_limit", max_calls)]
    return grpc.aio.server(options=options, maximum_concurrent_rpcs=max_calls)


def listen(server: grpc.aio.Server, address: str, tls: tuple[str, str] | None, client_ca: str | None = None) -> int:
    """`add_port`, with a failure to bind as a ListenError."""
    try:
        return add_port(server, address, tls, client_ca)
    except RuntimeError as error:
        raise ListenError(f"cannot listen on {address} ({error}): is another server using that port?") from None


class AioServer:
    """A grpc.aio server on an event loop of its own thread, started and stopped from synchronous code. `start()`
    runs on that loop: it builds, binds and starts the server and returns it with its port."""

    def __init__(self, name: str, start: Callable[[], Awaitable[tuple[grpc.aio.Server, int]]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        try:
            self._server, self.port = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        except BaseException:
            self._close_loop()
            raise

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (calls in progress get `grace` seconds) and end the loop's thread."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result()
        self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def refusals(method: Callable) -> Callable:
    """Turn a Refused raised by a servicer coroutine into its gRPC status."""

    @functools.wraps(method)
    async def call(self, request, context):
        try:
            return await method(self, request, context)
        except Refused as refusal:
            await context.abort(refusal.code, str(refusal))
    return call


def parse(message_type: type[Message], data: bytes, what: str = "") -> Any:
    """`message_type` parsed from `data`; INVALID_ARGUMENT when it is undecodable."""
    try:
        return message_type.FromString(data)
    except DecodeError as error:
        raise Refused(Code.INVALID_ARGUMENT, f"undecodable {what or message_type.__name__}: {error}") from None


def invalid_argument(function: Callable, *args, about: str = ""):
    """`function(*args)`, with a ValueError turned into INVALID_ARGUMENT (its message prefixed by `about`)."""
    try:
        return function(*args)
    except ValueError as error:
        raise Refused(Code.INVALID_ARGUMENT, about + str(error)) from error


async def read_frames(request_iterator: AsyncIterator[bytes], sizes: list[int],
                      idle_seconds: float) -> AsyncIterator[fl_pb2.Frame]:
    """Parsed frames, each within `idle_seconds` of the last (else DEADLINE_EXCEEDED); each one's size appended to
    `sizes`."""
    while True:
        try:
            data = await asyncio.wait_for(anext(request_iterator, None), idle_seconds)
        except asyncio.TimeoutError:
            raise Refused(Code.DEADLINE_EXCEEDED, f"no frame for {idle_seconds:g} s") from None
        if data is None:
            return
        sizes.append(len(data))
        yield parse(fl_pb2.Frame, data, "frame")


class CallSlots(Counter):
    """Calls in progress per caller (a Counter: empty when none is), each caller with a limit of its own."""

    @contextmanager
    def slot(self, caller: Hashable, limit: int, name: str) -> Iterator[None]:
        """One of `caller`'s concurrent calls; RESOURCE_EXHAUSTED when it has `limit` (`name`: the caller, in the
        refusal)."""
        if self[caller] >= limit:
            raise Refused(Code.RESOURCE_EXHAUSTED, f"{name} already has {limit} calls in progress")
        self[caller] += 1
        try:
            yield
        finally:
            self[caller] -= 1
            if not self[caller]:
                del self[caller]

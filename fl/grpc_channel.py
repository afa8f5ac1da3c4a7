"""The gRPC channel: the server hosts the Federation service, workers dial it as the clients they run.

Every task, parameter download and result crosses a real gRPC connection as protobuf frames, and the bytes are
counted from those frames, per client and direction.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from typing import Any

import grpc
from torch import Tensor

from transport.channel import Admission, Channel, Endpoint, UpdateRefused
from transport.codecs.cast import IdentityCodec
from transport.downlink import Broadcast
from transport.grpc_client import FederationClient
from transport.board import TaskBoard
from transport.grpc_common import ServerLimits
from transport.grpc_server import serve
from transport.messages import Result, Task


ABORT_WAIT_SECONDS = 3.0  # how long a failed deployed run waits for its clients to ask, and hear why


@dataclass(frozen=True)
class GrpcSettings:
    listen: str = "127.0.0.1:0"  # port 0: the OS picks one
    chunk_bytes: int = 1 << 20
    max_message_bytes: int = 0  # 0: one chunk plus header room
    timeout_seconds: float = 120.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_root_cert: str = ""
    auth_secret: bytes | None = None
    limits: ServerLimits = ServerLimits()


def advertised_address(listen: str, port: int) -> str:
    """Where workers dial: the listen host, or this machine's name when listening on every interface."""
    host = listen.rsplit(":", 1)[0]
    if host in ("0.0.0.0", "[::]", ""):
        host = socket.gethostbyname(socket.gethostname())
    return f"{host}:{port}"


class GrpcEndpoint(Endpoint):
    """Worker side: pulls its tasks by id and pushes their results, a batch per call; downloads each version once."""

    def __init__(self, address: str, settings: GrpcSettings) -> None:
        self.address, self.settings = address, settings
        self._client: FederationClient | None = None
        self._task_ids: list[int] = []
        self._params: tuple[int, Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_params": None}  # each worker dials and fetches for itself

    def open(self, envelope: tuple[int, int]) -> tuple[Task, Tensor]:
        return self.open_many([envelope])[0]

    def send(self, result: Result) -> int:
        return self.send_many([result])[0]

    def open_many(self, envelopes: list[tuple[int, int]]) -> list[tuple[Task, Tensor]]:
        """Pull the tasks in one call; download each version's parameters once (each client is charged for it)."""
        assignments = self._connection().pull_tasks([task_id for task_id, _client_id in envelopes])
        self._task_ids = [a.task_id for a in assignments]
        return [(a.task, self._params_of(a.task)) for a in assignments]

    def send_many(self, results: list[Result]) -> list[int]:
        try:
            return self._connection().push_results(list(zip(self._task_ids, results)))
        except grpc.RpcError as error:
            raise UpdateRefused(f"the server refused an update ({error.code().name}): {error.details()}") from None

    def _params_of(self, task: Task) -> Tensor:
        if self._params is None or self._params[0] != task.version:
            payload = self._connection().fetch_params(task.version, task.client_id)
            self._params = (task.version, IdentityCodec().decode(payload, {})[0])
        return self._params[1]

    def _connection(self) -> FederationClient:
        if self._client is None:
            s = self.settings
            self._client = FederationClient(
                self.address, auth_secret=s.auth_secret, root_cert_path=s.tls_root_cert or None,
                chunk_size=s.chunk_bytes, timeout_seconds=s.timeout_seconds, max_message_bytes=s.max_message_bytes or None,
            )
        return self._client


class GrpcChannel(Channel):
    """Server side: a TaskBoard behind a gRPC server on `settings.listen`.

    `deployed`: clients are separate processes that join (only they get tasks, and each fetches its own parameters);
    `welcome` is the configuration text sent to each joining client.
    """

    def __init__(self, settings: GrpcSettings = GrpcSettings(), deployed: bool = False, welcome: str = "") -> None:
        super().__init__()
        self.settings, self.deployed = settings, deployed
        self.board = TaskBoard(chunk_size=settings.chunk_bytes, charge_params_per_task=not deployed, deployed=deployed,
                               session_seconds=settings.timeout_seconds)
        self.board.welcome = welcome
        self.traffic = self.board.traffic
        tls = (settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        self.server, port = serve(self.board, settings.listen, tls=tls, auth_secret=settings.auth_secret,
                                  max_message_bytes=settings.max_message_bytes or None, limits=settings.limits)
        self.address = advertised_address(settings.listen, port)

    def admit_with(self, admission: Admission) -> None:
        super().admit_with(admission)
        self.board.admission = admission

    def publish(self, version: int, broadcast: Broadcast) -> None:
        payload, _ = IdentityCodec().encode(broadcast.params.detach().cpu(), {})
        self.board.publish(version, payload, broadcast.change, broadcast.state)

    def post(self, task: Task) -> tuple[int, int]:
        return self.board.post(task), task.client_id

    def receive(self, receipt: int) -> Result:
        return self.board.take(receipt, timeout=self.settings.timeout_seconds)

    def cancel(self, envelope: tuple[int, int]) -> None:
        self.board.cancel(envelope[0])

    def keep_versions(self, max_staleness: int | None) -> None:
        self.board.max_staleness = max_staleness

    def endpoint(self) -> Endpoint:
        return GrpcEndpoint(self.address, self.settings)

    def connected(self) -> list[int] | None:
        return self.board.joined() if self.deployed else None

    def close(self, abort_reason: str = "") -> None:
        self.board.close(abort_reason)  # clients waiting for a task hear DONE (or ABORTED, why) at once
        if self.deployed:  # the others hear it when they next ask; a stopped server would answer UNAVAILABLE
            wait = min(self.settings.timeout_seconds, ABORT_WAIT_SECONDS if abort_reason else 30.0)
            unheard = self.board.wait_until_told_done(timeout=wait)
            if unheard:  # killed, or still busy with a task the run no longer needs
                print(f"fl server: clients {', '.join(map(str, unheard))} did not ask again within {wait:g} s of the "
                      f"end (presumed gone)", file=sys.stderr, flush=True)
        self.server.stop(grace=2.0)

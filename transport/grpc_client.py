"""The client side of the gRPC transport: join, pull a task, fetch the global parameters, push the result.

Every call is client-initiated (clients may sit behind NAT), has a deadline, and streams its large messages as
bounded frames. One client object may act for many client ids (a simulation worker): pass `auth_secret` to sign each
call for its own client id, or `client_id` and `token` for a deployed client that holds just its token.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, Sequence

from torch import Tensor

from transport import framing, wire
from transport.auth import SESSION_KEY, WORKER, auth_metadata, client_token, worker_token
from transport.codecs.base import Payload
from transport.codecs.cast import IdentityCodec
from transport.downlink import Replica
from transport.messages import Result, Task
from transport.proto import fl_pb2, fl_pb2_grpc
from transport.grpc_common import open_channel

WAIT: Literal["wait"] = "wait"  # no task yet: ask again
DONE: Literal["done"] = "done"  # the run is over


@dataclass(frozen=True)
class Assignment:
    """A pulled task and the id its result must name."""

    task_id: int
    task: Task


Pulled = Assignment | Literal["wait", "done"]


class FederationClient:
    """A connection to a Federation server; thread-safe, as gRPC channels are."""

    def __init__(
        self,
        address: str,
        *,
        client_id: int | None = None,
        token: str | None = None,
        auth_secret: bytes | None = None,
        root_cert_path: str | None = None,
        chunk_size: int = framing.DEFAULT_CHUNK_SIZE,
        timeout_seconds: float = 60.0,
        max_message_bytes: int | None = None,
    ) -> None:
        if token is not None and client_id is None:
            raise ValueError("a fixed token needs the client_id it was issued for")
        self.client_id, self.token, self.auth_secret = client_id, token, auth_secret
        self.chunk_size = chunk_size
        self.timeout_seconds = timeout_seconds
        self.max_message_bytes = max_message_bytes or chunk_size + framing.HEADER_ROOM
        options = [("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.max_receive_message_length", self.max_message_bytes)]
        self._channel = open_channel(address, root_cert_path, options)
        self._stub = fl_pb2_grpc.FederationStub(self._channel)
        self._params: tuple[int, Payload] | None = None
        self._sessions: dict[int, str] = {}  # client id -> the session a deployed server gave it

    def join(self, client_id: int, wait_for_server: bool = False, replace: bool = False) -> fl_pb2.JoinReply:
        """Introduce a client (with `wait_for_server`, waiting up to the timeout for a server that is not up yet);
        the reply carries the server's chunk size, frame limit, newest version, the run's configuration and, from a
        deployed server, the session later calls carry. `replace` ends a live session of the same client id."""
        reply = self._stub.Join(fl_pb2.JoinRequest(client_id=client_id, replace=replace), timeout=self.timeout_seconds,
                                metadata=self._metadata(client_id), wait_for_ready=wait_for_server)
        if reply.session:
            self._sessions[client_id] = reply.session
        if reply.chunk_size > self.max_message_bytes - framing.HEADER_ROOM:
            raise ValueError(f"the server sends chunks of {reply.chunk_size} bytes; raise max_message_bytes "
                             f"({self.max_message_bytes}) to at least {reply.chunk_size + framing.HEADER_ROOM}")
        self.chunk_size = min(self.chunk_size, reply.chunk_size)
        return reply

    def pull_task(self, client_id: int, task_id: int = 0, wait_seconds: float = 0.0) -> Pulled:
        """Task `task_id`, or the client's next task (0); WAIT if none came within `wait_seconds`, DONE at the end."""
        request = fl_pb2.TaskRequest(client_id=client_id, task_id=task_id, wait_seconds=wait_seconds)
        frames = self._stub.PullTask(request, timeout=self.timeout_seconds + wait_seconds,
                                     metadata=self._metadata(client_id))
        header = framing.read_header(frames, ("task", "signal"))
        if header.WhichOneof("body") == "signal":
            return DONE if header.signal == fl_pb2.DONE else WAIT
        return Assignment(*wire.task_from_frame(header, framing.read_parts(header, frames)))

    def pull_tasks(self, task_ids: Sequence[int]) -> list[Assignment]:
        """A worker's batch: the tasks `task_ids`, of any clients, in one call (signed as the worker)."""
        request = fl_pb2.TaskRequest(client_id=WORKER, task_ids=list(task_ids))
        frames = self._stub.PullTask(request, timeout=self.timeout_seconds, metadata=self._metadata(WORKER))
        assignments = []
        for _ in task_ids:
            header = framing.read_header(frames, ("task",))
            assignments.append(Assignment(*wire.task_from_frame(header, framing.read_parts(header, frames))))
        return assignments

    def fetch_params(self, version: int, client_id: int | None = None, *, use_cache: bool = True) -> Payload:
        """The encoded global parameters of `version`, whole; the last version fetched is reused when `use_cache`
        (a simulation worker acting for many clients fetches once per client, as each real client would)."""
        if use_cache and self._params is not None and self._params[0] == version:
            return self._params[1]
        messages = self._fetch(version, self._caller(client_id), base_version=0)
        if len(messages) != 1 or messages[0].base_version:
            raise ValueError("the server answered a request for the whole parameters with changes")
        self._params = (version, messages[0].payload)
        return self._params[1]

    def update_replica(self, replica: Replica, version: int, client_id: int | None = None) -> Tensor:
        """Bring `replica` to `version`: the server sends the compressed changes since the version it holds, or the
        whole parameters (with the downlink decoder's state); returns the replica's parameters."""
        if replica.version != version:
            for message in self._fetch(version, self._caller(client_id), base_version=replica.version):
                if message.base_version:
                    replica.apply_change(message.version, message.payload)
                else:
                    params, _ = IdentityCodec().decode(message.payload, {})
                    replica.set_whole(message.version, params, dict(message.state))
        if replica.version != version:
            raise ValueError(f"the server's download ended at version {replica.version}, not {version}")
        return replica.params

    def _fetch(self, version: int, client_id: int, base_version: int) -> list[wire.ParamsMessage]:
        """Every params message of one FetchParams stream (a whole download, or a chain of changes)."""
        request = fl_pb2.ParamsRequest(version=version, client_id=client_id, base_version=base_version)
        frames = self._stub.FetchParams(request, timeout=self.timeout_seconds, metadata=self._metadata(client_id))
        messages = []
        while (header := next(frames, None)) is not None:
            if header.WhichOneof("body") != "params":
                raise ValueError(f"expected a params frame, got {header.WhichOneof('body') or 'nothing'}")
            messages.append(wire.params_from_frame(header, framing.read_parts(header, frames)))
        return messages

    def push_result(self, task_id: int, result: Result) -> int:
        """Send the result of task `task_id` (its update an encoded Payload); returns the task id the server stored."""
        frames = framing.to_frames(*wire.result_frame(result, task_id), self.chunk_size)
        reply = self._stub.PushResult(frames, timeout=self.timeout_seconds, metadata=self._metadata(result.client_id))
        return reply.task_id

    def push_results(self, results: Sequence[tuple[int, Result]]) -> list[int]:
        """A worker's batch: (task id, result) pairs of any clients in one stream; returns the stored task ids."""
        frames = itertools.chain.from_iterable(
            framing.to_frames(*wire.result_frame(result, task_id), self.chunk_size) for task_id, result in results
        )
        reply = self._stub.PushResult(frames, timeout=self.timeout_seconds, metadata=self._metadata(WORKER))
        return list(reply.task_ids)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FederationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _caller(self, client_id: int | None) -> int:
        if client_id is None and self.client_id is None:
            raise ValueError("name the client_id of the call (this client was made for no single client)")
        return self.client_id if client_id is None else client_id

    def _metadata(self, client_id: int) -> tuple[tuple[str, str], ...]:
        """The call's credentials (a worker signs each call for its client, or as the worker) and session."""
        if self.auth_secret is not None:
            token = worker_token(self.auth_secret) if client_id == WORKER else client_token(self.auth_secret, client_id)
            credentials = auth_metadata(client_id, token)
        elif self.token is not None:
            credentials = auth_metadata(self.client_id, self.token)
        else:
            credentials = ()
        session = self._sessions.get(client_id)
        return credentials + (((SESSION_KEY, session),) if session else ())

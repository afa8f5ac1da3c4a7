"""The server's task board: published global parameters (as ready-serialized frames), posted tasks and their results.

Thread-safe; the gRPC servicer (grpc_server.py) exposes it to clients, and a refused call leaves it unchanged.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import grpc
from torch import Tensor

from transport import framing, wire
from transport.auth import WORKER
from transport.channel import Traffic
from transport.codecs.base import Payload, State
from transport.downlink import DownloadLedger, catch_up
from transport.messages import EVALUATE, TRAIN, Result, Task
from transport.proto import fl_pb2
from transport.wire import ParamsMessage

MAX_WAIT_SECONDS = 30.0  # the longest a PullTask call is held before it answers WAIT
Code = grpc.StatusCode


class Refused(Exception):
    """A call the board turns down, with the gRPC status that says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Entry:
    task: Task
    result: Result | None = None
    receiving: bool = False  # a result is being read and decoded


class TaskBoard:
    """Tasks posted by the server and answered by clients; global parameters published per version.

    `decode_update(client_id, payload)` turns an uploaded update into a tensor, raising ValueError for anything bad.
    Results are accepted for tasks of the current version, or up to `max_staleness` versions older.
    """

    def __init__(
        self,
        decode_update: Callable[[int, Payload], Tensor],
        expected_kinds: Collection[str] = (TRAIN, EVALUATE),
        *,
        chunk_size: int = framing.DEFAULT_CHUNK_SIZE,
        max_staleness: int = 0,
        charge_params_per_task: bool = False,
    ) -> None:
        """`charge_params_per_task`: charge each posted task's client what a real client would download for its
        version (the changes since the version it last held, or the whole parameters), and count no fetch (a
        simulation worker fetches once per version for the many clients it runs)."""
        self.decode_update = decode_update
        self.charge_params_per_task = charge_params_per_task
        self.welcome = ""  # sent to every client that joins (the run's configuration)
        self._joined: set[int] = set()
        self._told_done: set[int] = set()
        self.expected_kinds = frozenset(expected_kinds)
        self.chunk_size = chunk_size
        self.max_staleness = max_staleness
        self.traffic = Traffic()
        self._lock = threading.Condition()
        self._params: dict[int, list[bytes]] = {}  # version -> serialized frames of the whole parameters
        self._changes: dict[int, list[bytes]] = {}  # version -> serialized frames of the change from version - 1
        self.downloads = DownloadLedger()  # the kept changes' sizes; with charge_params_per_task, who holds what
        self._version: int | None = None
        self._entries: dict[int, _Entry] = {}
        self._queues: dict[int, deque[int]] = {}  # client id -> ids of its tasks not yet pulled
        self._next_id = 1
        self._closed = False

    @property
    def version(self) -> int | None:
        """The newest published version (None before the first publish)."""
        return self._version

    def join(self, client_id: int) -> None:
        with self._lock:
            self._joined.add(client_id)
            self._lock.notify_all()

    def joined(self) -> list[int]:
        """The clients that have joined, in ascending order."""
        with self._lock:
            return sorted(self._joined)

    def wait_for_clients(self, count: int, timeout: float) -> list[int]:
        """Block until `count` clients have joined; TimeoutError naming how many came otherwise."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._joined) >= count, timeout):
                raise TimeoutError(f"{len(self._joined)} of {count} clients joined within {timeout:g} s")
            return sorted(self._joined)

    def wait_until_told_done(self, timeout: float) -> bool:
        """After `close`: block until every joined client has been told DONE (False if some were not in time)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._joined <= self._told_done, timeout)

    def publish(self, version: int, params: Payload, change: Payload | None = None, state: State | None = None) -> None:
        """Make the (encoded) global parameters of `version` current, serialized once for every fetch: whole (with
        the downlink decoder's `state`), and as the compressed `change` from the version before when there is one."""
        whole = self._serialized(ParamsMessage(version, params, 0, state or {}))
        changed = None if change is None else self._serialized(ParamsMessage(version, change, version - 1))
        with self._lock:
            if self._version is not None and version < self._version:
                raise ValueError(f"version {version} is older than the published version {self._version}")
            self._params[version] = whole
            self._version = version
            if changed is not None:
                self._changes[version] = changed
            self.downloads.published(version, None if changed is None else sum(map(len, changed)), _size(whole))
            for old in [v for v in self._params if v < version - self.max_staleness]:
                del self._params[old]
            for old in self._changes.keys() - self.downloads.change_sizes.keys():
                del self._changes[old]

    def _serialized(self, message: ParamsMessage) -> list[bytes]:
        return [frame.SerializeToString() for frame in framing.to_frames(*wire.params_frame(message), self.chunk_size)]

    def post(self, task: Task) -> int:
        """Store a task until its client takes it; returns its task id (1, 2, ...)."""
        if task.kind not in self.expected_kinds:
            raise ValueError(f"task kind {task.kind!r} is not one of {sorted(self.expected_kinds)}")
        with self._lock:
            if task.version not in self._params:
                raise ValueError(f"task for version {task.version}; the published versions are {list(self._params)}")
            task_id, self._next_id = self._next_id, self._next_id + 1
            if self.charge_params_per_task:
                whole = _size(self._params[task.version])
                self.traffic.add_down(task.client_id, self.downloads.charge(task.client_id, task.version, whole))
            self._entries[task_id] = _Entry(task)
            self._queues.setdefault(task.client_id, deque()).append(task_id)
            self._lock.notify_all()
        return task_id

    def take(self, task_id: int, timeout: float | None = None) -> Result:
        """Wait for the result of a task (its update decoded), and forget the task; TimeoutError if none came."""
        with self._lock:
            if task_id not in self._entries:
                raise KeyError(f"no task {task_id} on the board")
            if not self._lock.wait_for(lambda: self._entries[task_id].result is not None, timeout):
                raise TimeoutError(f"no result for task {task_id} within {timeout} s")
            return self._entries.pop(task_id).result

    def close(self) -> None:
        """The run is over: clients asking for tasks get DONE."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    # Servicer side: each raises Refused for a call the board turns down.

    def _next_task(self, client_id: int, task_id: int, wait_seconds: float) -> tuple[int, Task] | int:
        """The task asked for (task_id > 0) or the client's next one, else a WAIT or DONE signal."""
        with self._lock:
            wait = min(max(wait_seconds, 0.0), MAX_WAIT_SECONDS) if math.isfinite(wait_seconds) else 0.0
            self._lock.wait_for(lambda: self._closed or task_id or self._queues.get(client_id), wait)
            if self._closed:
                self._told_done.add(client_id)
                self._lock.notify_all()
                return fl_pb2.DONE
            if not task_id:
                if client_id not in self._queues:
                    return fl_pb2.WAIT
                task_id = self._queues[client_id][0]
            entry = self._open_entry(task_id, client_id)
            self._unqueue(task_id, client_id)
            return task_id, entry.task

    def _params_frames(self, version: int, base_version: int = 0) -> list[bytes]:
        """The changes since `base_version` when they are kept and cost less, else the whole parameters."""
        with self._lock:
            if version not in self._params:
                raise Refused(Code.NOT_FOUND, f"version {version} is not published (have {list(self._params)})")
            whole = self._params[version]
            chain = catch_up(base_version, version, self.downloads.change_sizes, _size(whole))
            return whole if chain is None else [frame for v in chain for frame in self._changes[v]]

    def _reserve(self, task_id: int, client_id: int, version: int, kind: str) -> None:
        """Claim a task for the result now arriving; checks that the result may answer it."""
        with self._lock:
            task = self._open_entry(task_id, client_id).task
            if task.version < self._version - self.max_staleness:
                raise Refused(Code.FAILED_PRECONDITION,
                              f"task {task_id} is for version {task.version}, too old for version {self._version}")
            if version != task.version:
                raise Refused(Code.FAILED_PRECONDITION,
                              f"result for version {version} answers a task of {task.version}")
            if kind != task.kind:
                raise Refused(Code.INVALID_ARGUMENT, f"a {kind!r} result cannot answer a {task.kind!r} task")
            self._entries[task_id].receiving = True
            self._unqueue(task_id, client_id)

    def _release(self, task_id: int) -> None:
        with self._lock:
            self._entries[task_id].receiving = False

    def _answer(self, task_id: int, result: Result, up_bytes: int) -> None:
        with self._lock:
            entry = self._entries[task_id]
            entry.result, entry.receiving = result, False
            self.traffic.add_up(result.client_id, up_bytes)
            self._lock.notify_all()

    def _count_down(self, client_id: int, num_bytes: int) -> None:
        with self._lock:
            self.traffic.add_down(client_id, num_bytes)

    def _open_entry(self, task_id: int, client_id: int) -> _Entry:
        """The unanswered task `task_id` of `client_id` (call with the lock held)."""
        entry = self._entries.get(task_id)
        if entry is None and 0 < task_id < self._next_id:
            raise Refused(Code.FAILED_PRECONDITION, f"task {task_id} was already answered")
        if entry is None:
            raise Refused(Code.NOT_FOUND, f"no task {task_id} on the board")
        if entry.task.client_id != client_id:
            raise Refused(Code.FAILED_PRECONDITION, f"task {task_id} belongs to client {entry.task.client_id}, "
                                                    f"not {client_id}")
        if entry.result is not None or entry.receiving:
            raise Refused(Code.FAILED_PRECONDITION, f"task {task_id} was already answered")
        return entry

    def _claim(self, task_ids: Iterable[int]) -> list[tuple[int, Task]]:
        """Open tasks of any clients, for a worker that runs them all; NOT_FOUND or FAILED_PRECONDITION otherwise."""
        with self._lock:
            claimed = []
            for task_id in task_ids:
                entry = self._entries.get(task_id)
                entry = self._open_entry(task_id, entry.task.client_id if entry else WORKER)
                self._unqueue(task_id, entry.task.client_id)
                claimed.append((task_id, entry.task))
            return claimed

    def _unqueue(self, task_id: int, client_id: int) -> None:
        queue = self._queues.get(client_id)
        if queue is not None and task_id in queue:
            queue.remove(task_id)
            if not queue:
                del self._queues[client_id]


def _size(frames: list[bytes]) -> int:
    return sum(map(len, frames))

"""The server's task board: published global parameters (as ready-serialized frames), posted tasks and their results.

Thread-safe; the gRPC servicer (grpc_server.py) exposes it to clients, and a refused call leaves it unchanged. What
clients send is checked by the server's `Admission` (client ids, results); a deployed board also keeps one session per
client id, so two processes never share a client's tasks.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import grpc

from transport import framing, wire
from transport.auth import WORKER
from transport.channel import Admission, Traffic
from transport.codecs.base import Payload, State
from transport.downlink import DownloadLedger, catch_up
from transport.messages import DIVERGED, EVALUATE, TRAIN, Result, Task
from transport.proto import fl_pb2
from transport.wire import ParamsMessage

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
    session: str = ""  # the session that pulled the task (deployed boards)
    answered: int = 0  # the order in which results were stored (1, 2, ...)


@dataclass
class _Session:
    key: str
    last_seen: float  # time.monotonic() of the session's last call


class TaskBoard:
    """Tasks posted by the server and answered by clients; global parameters published per version.

    `admission` checks client ids and results (ValueError for anything bad); until it is set, clients are told to
    come back later. Results are accepted for tasks of the current version, or up to `max_staleness` versions older
    (None: any age); the parameters of a version are kept while it is current or an open task needs them.
    `deployed`: clients are separate processes; each must join and call with its session, and the simulation
    worker's batch calls are refused.
    """

    def __init__(
        self,
        admission: Admission | None = None,
        expected_kinds: Collection[str] = (TRAIN, EVALUATE),
        *,
        chunk_size: int = framing.DEFAULT_CHUNK_SIZE,
        max_staleness: int | None = 0,
        charge_params_per_task: bool = False,
        deployed: bool = False,
        session_seconds: float = 60.0,
    ) -> None:
        """`charge_params_per_task`: charge each posted task's client what a real client would download for its
        version (the changes since the version it last held, or the whole parameters), and count no fetch (a
        simulation worker fetches once per version for the many clients it runs). `session_seconds`: a session
        that made no call for this long no longer blocks another Join of its client id."""
        self.admission = admission
        self.charge_params_per_task = charge_params_per_task
        self.deployed, self.session_seconds = deployed, session_seconds
        self.welcome = ""  # sent to every client that joins (the run's configuration)
        self._joined: set[int] = set()
        self._sessions: dict[int, _Session] = {}
        self._told_done: set[int] = set()
        self.expected_kinds = frozenset(expected_kinds)
        self.chunk_size = chunk_size
        self.max_staleness = max_staleness
        self.traffic = Traffic()
        self._lock = threading.Condition()
        self._listeners: list[Callable[[int | None], None]] = []
        self._params: dict[int, list[bytes]] = {}  # version -> serialized frames of the whole parameters
        self._changes: dict[int, list[bytes]] = {}  # version -> serialized frames of the change from version - 1
        self.downloads = DownloadLedger()  # the kept changes' sizes; with charge_params_per_task, who holds what
        self._version: int | None = None
        self._entries: dict[int, _Entry] = {}
        self._open: Counter[int] = Counter()  # version -> tasks on the board that need it
        self._queues: dict[int, deque[int]] = {}  # client id -> ids of its tasks not yet pulled
        self._next_id = 1
        self._answers = 0
        self._closed = False
        self._abort_reason = ""  # why the run stopped, when it failed: clients asking for tasks are told
        self._withdrawn: set[int] = set()  # tasks the server withdrew: a late result for one is told so

    @property
    def version(self) -> int | None:
        """The newest published version (None before the first publish)."""
        return self._version

    def join(self, client_id: int, replace: bool = False) -> str:
        """Admit a client; on a deployed board, start its session and return the key its calls must carry.
        A second Join of a client whose session is live is refused unless `replace`: the old session ends, its
        pulled but unanswered tasks are posted again, and the server forgets the client's receiver state."""
        self._check_client(client_id)
        with self._lock:
            key = ""
            if self.deployed:
                old = self._sessions.get(client_id)
                if old is not None and not replace and time.monotonic() - old.last_seen < self.session_seconds:
                    raise Refused(Code.ALREADY_EXISTS,
                                  f"client {client_id} already has a live session (is another process running with "
                                  f"this id?); join with replace to end it")
                if old is not None:
                    self._end_session(client_id, old.key)
                key = secrets.token_hex(16)
                self._sessions[client_id] = _Session(key, time.monotonic())
            self._joined.add(client_id)
            self._lock.notify_all()
            return key

    def _end_session(self, client_id: int, key: str) -> None:
        """Post again the open tasks the ended session pulled; forget the client's receiver state."""
        self._requeue(client_id, key)
        self.admission.forget(client_id)

    def _requeue(self, client_id: int, key: str) -> None:
        """Put the open tasks that session `key` pulled back at the front of the client's queue."""
        pulled = sorted(task_id for task_id, entry in self._entries.items() if entry.session == key
                        and entry.result is None and not entry.receiving)
        for task_id in pulled:
            self._entries[task_id].session = ""
        queue = self._queues.setdefault(client_id, deque())
        queue.extendleft(reversed([task_id for task_id in pulled if task_id not in queue]))
        if not queue:
            del self._queues[client_id]
        self._changed(client_id)

    def forget(self, client_id: int) -> None:
        """A deployed client presumed gone (its task was dropped, or its session went quiet): no longer joined and
        its session ended, so its next call must join again."""
        with self._lock:
            self._joined.discard(client_id)
            self._sessions.pop(client_id, None)
            if self.admission is not None:
                self.admission.forget(client_id)
            self._changed(client_id)

    def quiet_clients(self, seconds: float) -> list[int]:
        """The joined clients of a deployed board whose session has made no call for `seconds`."""
        with self._lock:
            now = time.monotonic()
            return sorted(c for c in self._joined if c in self._sessions and now - self._sessions[c].last_seen > seconds)

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

    def wait_until_told_done(self, timeout: float) -> list[int]:
        """After `close`: block until every joined client has been told the run is over; the clients that were not
        within `timeout` seconds."""
        with self._lock:
            self._lock.wait_for(lambda: self._joined <= self._told_done, timeout)
            return sorted(self._joined - self._told_done)

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
            self._prune()
            for old in self._changes.keys() - self.downloads.change_sizes.keys():
                del self._changes[old]

    def _prune(self) -> None:
        """Forget the parameters of versions that are neither current nor needed by a task on the board."""
        for old in [v for v in self._params if v != self._version and not self._open[v]]:
            del self._params[old]
            self._open.pop(old, None)

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
            self._open[task.version] += 1
            self._queues.setdefault(task.client_id, deque()).append(task_id)
            self._changed(task.client_id)
        return task_id

    def take(self, task_id: int, timeout: float | None = None) -> Result:
        """Wait for the result of a task (its update decoded), and forget the task; TimeoutError if none came."""
        with self._lock:
            if task_id not in self._entries:
                raise KeyError(f"no task {task_id} on the board")
            if not self._lock.wait_for(lambda: self._entries[task_id].result is not None, timeout):
                raise TimeoutError(f"no result for task {task_id} within {timeout} s")
            return self._remove(task_id).result

    def take_first(self, task_ids: Collection[int], timeout: float) -> tuple[int, Result] | None:
        """The first result stored for any of `task_ids`, its task forgotten; None if none came within `timeout`."""
        def first() -> int | None:
            answered = [t for t in task_ids if t in self._entries and self._entries[t].result is not None]
            return min(answered, key=lambda t: self._entries[t].answered) if answered else None

        with self._lock:
            if not self._lock.wait_for(lambda: first() is not None, max(timeout, 0.0)):
                return None
            task_id = first()
            return task_id, self._remove(task_id).result

    def cancel(self, task_id: int) -> None:
        """Withdraw a task that was never answered: its client no longer gets it, and a result for it is refused."""
        with self._lock:
            entry = self._entries.get(task_id)
            if entry is None or entry.result is not None or entry.receiving:
                return
            self._unqueue(task_id, entry.task.client_id)
            self._remove(task_id)
            self._withdrawn.add(task_id)

    def _remove(self, task_id: int) -> _Entry:
        """Forget a task, and the parameters no task needs any more (call with the lock held)."""
        entry = self._entries.pop(task_id)
        self._open[entry.task.version] -= 1
        self._prune()
        return entry

    def close(self, abort_reason: str = "") -> None:
        """The run is over: clients asking for tasks get DONE, or ABORTED with `abort_reason` when it failed."""
        with self._lock:
            self._closed, self._abort_reason = True, abort_reason
            self._changed()

    def on_change(self, listener: Callable[[int | None], None]) -> None:
        """Call `listener(client_id)` (from any thread, with the board locked) when a task is queued for that client,
        and `listener(None)` when the board closes."""
        with self._lock:
            self._listeners.append(listener)

    def snapshot(self) -> dict:
        """Everything a client's call could change, comparable with ==: for tests and diagnostics."""
        with self._lock:
            entries = {i: (e.task.client_id, e.task.version, e.result is not None, e.receiving, e.session)
                       for i, e in self._entries.items()}
            return {"version": self._version, "entries": entries, "next_id": self._next_id,
                    "queues": {c: list(q) for c, q in self._queues.items()}, "joined": sorted(self._joined),
                    "sessions": {c: s.key for c, s in self._sessions.items()}, "closed": self._closed,
                    "told_done": sorted(self._told_done), "traffic": (dict(self.traffic.down), dict(self.traffic.up)),
                    "downloads": (dict(self.downloads.held), dict(self.downloads.change_sizes))}

    def _changed(self, client_id: int | None = None) -> None:
        """Wake what waits on the board: threads, and the listeners of `client_id` (None: of every client)."""
        self._lock.notify_all()
        for listener in self._listeners:
            listener(client_id)

    # Servicer side: each raises Refused for a call the board turns down.

    def upload_limit(self) -> int:
        """The most bytes one result may announce."""
        return self._admission().upload_limit()

    def _admission(self) -> Admission:
        if self.admission is None:
            raise Refused(Code.UNAVAILABLE, "the server is starting: try again")
        return self.admission

    def _check_client(self, client_id: int) -> None:
        try:
            self._admission().check_client(client_id)
        except ValueError as error:
            raise Refused(Code.INVALID_ARGUMENT, str(error)) from None

    def _check_session(self, client_id: int, key: str) -> None:
        """A deployed board serves a client only within its current session (and marks the session seen)."""
        self._check_client(client_id)
        if not self.deployed:
            return
        with self._lock:
            session = self._sessions.get(client_id)
            if session is None or not key:
                raise Refused(Code.FAILED_PRECONDITION, f"client {client_id} has no session: join first")
            if key != session.key:
                raise Refused(Code.FAILED_PRECONDITION, f"this session of client {client_id} was replaced by a later "
                                                        f"Join (another process with the same id?)")
            session.last_seen = time.monotonic()

    def _next_task(self, client_id: int, task_id: int, session: str = "") -> tuple[int, Task] | int | None:
        """The task asked for (task_id > 0) or the client's next one, DONE at the end, else None (nothing yet).
        A deployed client's session is checked again here: a poll may outlive it."""
        self._check_session(client_id, session)
        with self._lock:
            if self._closed:
                self._told_done.add(client_id)
                self._lock.notify_all()
                if self._abort_reason:
                    raise Refused(Code.ABORTED, f"the server stopped the run: {self._abort_reason}")
                return fl_pb2.DONE
            if not task_id:
                if client_id not in self._queues:
                    return None
                task_id = self._queues[client_id][0]
            entry = self._open_entry(task_id, client_id)
            entry.session = session
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

    def _reserve(self, task_id: int, client_id: int, version: int, kind: str, session: str = "") -> None:
        """Claim a task for the result now arriving; checks that the result may answer it."""
        self._check_session(client_id, session)
        with self._lock:
            task = self._open_entry(task_id, client_id).task
            if self.max_staleness is not None and task.version < self._version - self.max_staleness:
                raise Refused(Code.FAILED_PRECONDITION,
                              f"task {task_id} is for version {task.version}, too old for version {self._version}")
            if version != task.version:
                raise Refused(Code.FAILED_PRECONDITION,
                              f"result for version {version} answers a task of {task.version}")
            if kind != task.kind and not (kind == DIVERGED and task.kind == TRAIN):
                raise Refused(Code.INVALID_ARGUMENT, f"a {kind!r} result cannot answer a {task.kind!r} task")
            self._entries[task_id].receiving = True

    def _release(self, task_id: int) -> None:
        """A result was refused: the task is open again (and queued again if its session has ended meanwhile)."""
        with self._lock:
            entry = self._entries[task_id]
            entry.receiving = False
            session = self._sessions.get(entry.task.client_id)
            if entry.session and session is not None and session.key != entry.session:
                self._requeue(entry.task.client_id, entry.session)

    def _answer(self, task_id: int, result: Result, up_bytes: int, session: str = "") -> None:
        """Store an admitted result (its session still current) and count its bytes."""
        self._check_session(result.client_id, session)
        with self._lock:
            entry = self._entries[task_id]
            entry.result, entry.receiving = result, False
            self._answers += 1
            entry.answered = self._answers
            self._unqueue(task_id, result.client_id)  # a result may answer a task its client never pulled
            self.traffic.add_up(result.client_id, up_bytes)
            self._lock.notify_all()

    def _count_down(self, client_id: int, num_bytes: int) -> None:
        with self._lock:
            self.traffic.add_down(client_id, num_bytes)

    def _open_entry(self, task_id: int, client_id: int) -> _Entry:
        """The unanswered task `task_id` of `client_id` (call with the lock held)."""
        entry = self._entries.get(task_id)
        if entry is None and task_id in self._withdrawn:
            raise Refused(Code.FAILED_PRECONDITION, f"task {task_id} was withdrawn by the server (too stale for the "
                                                    f"strategy, or unanswered for longer than its timeout)")
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
        """Open tasks of any clients, for a worker that runs them all; NOT_FOUND or FAILED_PRECONDITION otherwise
        (every id is checked before any is claimed)."""
        self._refuse_worker_if_deployed()
        task_ids = list(task_ids)
        if len(set(task_ids)) != len(task_ids):
            raise Refused(Code.INVALID_ARGUMENT, "a batch names a task more than once")
        with self._lock:
            claimed = []
            for task_id in task_ids:
                entry = self._entries.get(task_id)
                claimed.append((task_id, self._open_entry(task_id, entry.task.client_id if entry else WORKER).task))
            for task_id, task in claimed:
                self._unqueue(task_id, task.client_id)
            return claimed

    def _unpull(self, task_ids: Iterable[int]) -> None:
        """Tasks whose sending failed midway: back at the front of their clients' queues, unless answered since."""
        with self._lock:
            for task_id in reversed(list(task_ids)):
                entry = self._entries.get(task_id)
                if entry is None or entry.result is not None or entry.receiving:
                    continue
                entry.session = ""
                queue = self._queues.setdefault(entry.task.client_id, deque())
                if task_id not in queue:
                    queue.appendleft(task_id)
                self._changed(entry.task.client_id)

    def _refuse_worker_if_deployed(self) -> None:
        if self.deployed:
            raise Refused(Code.PERMISSION_DENIED, "a deployed server serves each client on its own: no worker calls")

    def _unqueue(self, task_id: int, client_id: int) -> None:
        queue = self._queues.get(client_id)
        if queue is not None and task_id in queue:
            queue.remove(task_id)
            if not queue:
                del self._queues[client_id]


def _size(frames: list[bytes]) -> int:
    return sum(map(len, frames))

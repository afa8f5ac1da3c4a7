"""Property tests of the deployed gRPC server's boundary: whatever a caller sends, the server answers with a proper
status and changes nothing.

Two deployed servers (tests/federation_harness.py), one open and one that requires client tokens, are held in the
middle of round 2: the first client's result is in, the other two clients have pulled their tasks and computed their
results but not sent them. Hypothesis then sends raw bytes through gRPC's generic stubs (no serializers, so requests
may be undecodable): Join, PullTask and FetchParams requests with fuzzed fields, PushResult streams built from a real
result with fuzzed header fields and tensor parts, and mangled, reordered, replayed or oversized frame streams, each
with or without a valid token and session. Every call must

* be answered in time, with OK or a refusal status (never INTERNAL, UNKNOWN, DEADLINE_EXCEEDED, UNAVAILABLE);
* succeed only where an honest client may (a pull or fetch with that client's own token and session);
* free its call slot, and leave the server's snapshot as it was, less the download a successful pull or fetch is
  charged.

Cases are built so that no legitimate change can happen: a Join that would start or replace a session is not sent,
a pull that the server would hold for long is not sent, a stream whose first result the framing would accept for an
open task is not sent with that task's credentials, and a fuzzed result that could reach an open task carries a
state part, which a deployed server always refuses after decoding everything else. Finally the honest clients finish
the rounds and must reach the global parameters of a run that was never attacked.

Three bugs this fuzzing found (a NaN wait held a pull, "--1" as a client id, an empty part with huge dimensions)
keep a regression test each.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import re
import struct
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from torch import Tensor

from tests.federation_harness import (
    NUM_CLIENTS, ManualClient, assert_same, close_deployment, deploy_config, deployed_server, honest_final_params,
    play_round, running_round, snapshot,
)
from fl.server import Server
from transport import framing, wire
from transport.board import TaskBoard
from transport.auth import CLIENT_KEY, SESSION_KEY, TOKEN_KEY, WORKER, auth_metadata, client_token, worker_token
from transport.grpc_client import Assignment
from transport.grpc_server import FederationServicer
from transport.messages import Result
from transport.proto import fl_pb2

Code = grpc.StatusCode
Metadata = tuple[tuple[str, str], ...]

SECRET = b"the fuzzed server's secret"
# Sessions must not expire while the fuzzing runs (a Join would then legitimately replace one); a compressing
# downlink gives FetchParams a chain of changes to serve.
OVERRIDES = ("transport.timeout_seconds=3600", 'transport.downlink="ef(topk:ratio=0.1)"')
ROUNDS = 3  # round 1 honest, round 2 under attack, round 3 honest
CALL_SECONDS = 10.0  # a call not answered by then hangs
TINY_WAIT = 0.02  # the longest PullTask wait the fuzzing lets the server hold a call for
STREAM_CHUNK = 1024  # data frame size of the honest streams the fuzzing mangles (about a dozen frames each)
REFUSALS = {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.ALREADY_EXISTS, Code.PERMISSION_DENIED, Code.UNAUTHENTICATED,
            Code.FAILED_PRECONDITION, Code.RESOURCE_EXHAUSTED}

FUZZ = settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


# The attacked servers.


@dataclass
class Target:
    """A deployed server held in the middle of round 2, its honest clients, and a raw gRPC channel to attack it.

    `accepted`: the client whose result is in (its task answered and taken); `pending`: the clients whose tasks are
    pulled and whose results are computed but not sent (task id -> client id in `open_tasks`)."""

    name: str
    server: Server
    clients: list[ManualClient]
    secret: bytes | None
    channel: grpc.Channel
    servicer: FederationServicer
    sessions: dict[int, str]
    accepted: int
    accepted_task: int
    accepted_frames: list[bytes]  # the stream the accepted client sent
    pending: dict[int, tuple[Assignment, Result]]
    round_two: ExitStack = field(default_factory=ExitStack)

    @property
    def open_tasks(self) -> dict[int, int]:
        """Task id -> client id of the tasks pulled and not yet answered."""
        return {assignment.task_id: client_id for client_id, (assignment, _) in self.pending.items()}

    def pending_frames(self, client_id: int) -> list[bytes]:
        """The stream a pending client's honest result travels as, in small data frames."""
        assignment, result = self.pending[client_id]
        return result_frames(result, assignment.task_id, STREAM_CHUNK)

    def finish_round(self) -> None:
        """The pending clients send their results and round 2 ends (once; its errors are raised here)."""
        pending, self.pending = self.pending, {}
        for client_id, (_, result) in sorted(pending.items()):
            self.clients[client_id].send(result)
        self.round_two.close()


def launch(name: str, folder: Path, secret: bytes | None) -> Target:
    """A deployed server with three honest clients: round 1 played, round 2 started and held (see Target)."""
    overrides = list(OVERRIDES)
    if secret is not None:
        (folder / "secret").write_bytes(secret)
        overrides.append(f'transport.auth_secret_file="{folder / "secret"}"')
    server = deployed_server(deploy_config(folder, *overrides))
    address = server.channel.address
    clients = [ManualClient(address, i, client_token(secret, i) if secret else None) for i in range(NUM_CLIENTS)]
    play_round(server, 1, clients)
    round_two = ExitStack()
    round_two.enter_context(running_round(server, 2))
    computed = {}
    for client in clients:
        assignment = client.pull()
        computed[client.client_id] = (assignment, client.compute(assignment))
    accepted = min(computed, key=lambda i: computed[i][0].task_id)  # the round reads results in task order
    assignment, result = computed.pop(accepted)
    clients[accepted].send(result)
    board = server.channel.board
    wait_until(lambda: assignment.task_id not in board.snapshot()["entries"], 20.0)
    sent = result_frames(result, assignment.task_id, clients[accepted].connection.chunk_size)
    return Target(name, server, clients, secret, grpc.insecure_channel(address), servicer_of(board),
                  board.snapshot()["sessions"], accepted, assignment.task_id, sent, computed, round_two)


def servicer_of(board: TaskBoard) -> FederationServicer:
    """The servicer serving `board` (the server keeps it only inside gRPC's handlers), whose `_calls` counts the
    calls in progress per client id."""
    return next(o for o in gc.get_objects() if type(o) is FederationServicer and o.board is board)


def result_frames(result: Result, task_id: int, chunk_size: int) -> list[bytes]:
    """A result serialized as a deployed client sends it (its state kept at home)."""
    header, parts = wire.result_frame(dataclasses.replace(result, state={}), task_id)
    return [frame.SerializeToString() for frame in framing.to_frames(header, parts, chunk_size)]


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll `condition` until it holds (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> Iterator[list[Target]]:
    """The open and the token-checking server, built once for the module."""
    launched: list[Target] = []
    try:
        for name, secret in (("open", None), ("tokens", SECRET)):
            launched.append(launch(name, tmp_path_factory.mktemp(name), secret))
        yield launched
    finally:
        for target in launched:
            try:
                target.finish_round()
            finally:
                target.channel.close()
                close_deployment(target.server, target.clients)


@pytest.fixture(scope="module")
def reference_params(tmp_path_factory) -> Tensor:
    """The global parameters after ROUNDS honest rounds on a server never attacked."""
    return honest_final_params(deploy_config(tmp_path_factory.mktemp("reference"), *OVERRIDES), ROUNDS)


# Calls and their checks.


@dataclass
class Case:
    """One raw call: the RPC, its request bytes (or a stream's frames), its metadata, and what may come of it.

    `may_succeed`: the credentials are an honest client's own token and session for the request's client id (only
    then may a pull or fetch succeed); `charged`: the client a successful pull or fetch is charged to."""

    method: str  # Join, PullTask, FetchParams or PushResult
    request: bytes | list[bytes]
    metadata: Metadata
    may_succeed: bool = False
    charged: int | None = None
    expected: grpc.StatusCode | None = None
    timeout: float = CALL_SECONDS


@dataclass
class Outcome:
    """How a call ended: its status (OK or the refusal's), the refusal's message, the reply message(s) on success."""

    code: grpc.StatusCode
    details: str
    replies: list[bytes]


def send(target: Target, case: Case) -> Outcome:
    """Make the call through a generic stub: bytes go out and come back as they are."""
    path = f"/fl.Federation/{case.method}"
    options = dict(timeout=case.timeout, metadata=case.metadata)
    try:
        if case.method == "Join":
            replies = [target.channel.unary_unary(path)(case.request, **options)]
        elif case.method == "PushResult":
            replies = [target.channel.stream_unary(path)(iter(case.request), **options)]
        else:
            replies = list(target.channel.unary_stream(path)(case.request, **options))
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "", [])
    return Outcome(Code.OK, "", replies)


def attack(target: Target, case: Case) -> Outcome:
    """Send `case` and check that it was answered properly and changed nothing but what a success is charged."""
    before = snapshot(target.server)
    outcome = send(target, case)
    about = f"{target.name} server, {case.method}: {outcome.code.name} {outcome.details!r}"
    assert outcome.code == Code.OK or outcome.code in REFUSALS, about
    if case.expected is not None:
        assert outcome.code == case.expected, about
    expected = before
    if outcome.code == Code.OK:
        expected = charged_snapshot(target, case, outcome, before)
    assert wait_until(lambda: not target.servicer._calls, 5.0), f"{about}: calls still in progress " \
                                                                 f"{dict(target.servicer._calls)}"
    assert_same(expected, snapshot(target.server))
    return outcome


def charged_snapshot(target: Target, case: Case, outcome: Outcome, before: dict[str, Any]) -> dict[str, Any]:
    """The snapshot after a successful call: a pull that got a task or a fetch is charged its bytes; anything else
    (a Join, a stored result) may not succeed here."""
    assert case.method in ("PullTask", "FetchParams"), f"{case.method} succeeded: {outcome.replies[:1]}"
    assert case.may_succeed, f"{case.method} was served without the client's own token and session"
    first = fl_pb2.Frame.FromString(outcome.replies[0]) if outcome.replies else None
    if case.method == "PullTask":
        assert first is not None, "PullTask answered nothing"
        if first.WhichOneof("body") == "signal":
            assert first.signal == fl_pb2.WAIT and len(outcome.replies) == 1, first
            return before
        assert target.open_tasks.get(first.task.task_id) == case.charged == first.task.client_id, first.task
    else:  # nothing at all when the client already holds the version
        assert first is None or first.WhichOneof("body") == "params", first
    down, up = before["board"]["traffic"]
    down = {**down, case.charged: down.get(case.charged, 0) + sum(map(len, outcome.replies))}
    return {**before, "board": {**before["board"], "traffic": (down, up)}}


# Credentials.


@dataclass(frozen=True)
class Credentials:
    """Call metadata, and what it proves: the client id its token proves (None: nothing) and the honest client
    whose current session it carries (None: none)."""

    metadata: Metadata
    token_of: int | None
    session_of: int | None


def passes_auth(target: Target, credentials: Credentials, client_id: int) -> bool:
    """Whether the server's token check lets the call act for `client_id`."""
    return target.secret is None or credentials.token_of == client_id != WORKER


def passes(target: Target, credentials: Credentials, client_id: int) -> bool:
    """Whether the call carries `client_id`'s token (where required) and current session: an honest client's."""
    return passes_auth(target, credentials, client_id) and credentials.session_of == client_id


def own_credentials(target: Target, client_id: int) -> Metadata:
    """An honest client's token (where the server requires one) and current session."""
    token = auth_metadata(client_id, client_token(target.secret, client_id)) if target.secret else ()
    return token + ((SESSION_KEY, target.sessions[client_id]),)


def proven_by(secret: bytes, metadata: Metadata) -> int | None:
    """The client id the token metadata proves (an independent model of transport.auth)."""
    values = dict(metadata)
    client, token = values.get(CLIENT_KEY), values.get(TOKEN_KEY)
    if client is None or token is None or not re.fullmatch(r"-?[0-9]+", client) or int(client) < WORKER:
        return None
    client_id = int(client)
    return client_id if token == (worker_token(secret) if client_id == WORKER else client_token(secret, client_id)) \
        else None


HEX = "0123456789abcdef"
# gRPC sends printable ASCII only; a few values that number parsers disagree on, then anything.
METADATA_TEXT = st.one_of(st.sampled_from(["", "-", "--1", "-0", "01", "+1", "1-", "1.0", "1e3", "0x1", "1_0"]),
                          st.text(alphabet=HEX + "-+_.~xyzXYZ", max_size=70))
INT64 = st.integers(-(2**63), 2**63 - 1)
CLIENT_IDS = st.one_of(st.sampled_from(range(NUM_CLIENTS)),
                       st.one_of(st.sampled_from([NUM_CLIENTS, WORKER, -2, 2**31, 2**63 - 1, -(2**63)]), INT64))


def draw_credentials(data: st.DataObject, target: Target, claimed: int) -> Credentials:
    """Most often the claimed client's own token and session; otherwise any mix of missing, other clients', the
    worker's, wrong and malformed tokens and sessions."""
    honest = st.sampled_from(sorted(target.sessions))
    # Hypothesis draws the first of sampled values most often (it is the simplest): the claimed client's own.
    own = data.draw(st.sampled_from([True, False]), label="own credentials")
    token_kind = data.draw(st.sampled_from(["claimed", "none", "honest", "worker", "wrong", "malformed"]),
                           label="token")
    session_kind = data.draw(st.sampled_from(["claimed", "none", "honest", "random"]), label="session")
    if own:
        token_kind, session_kind = "claimed", "claimed"
    metadata: Metadata = ()
    if target.secret is not None:
        secret = target.secret
        if token_kind == "claimed" and claimed == WORKER:
            metadata = auth_metadata(WORKER, worker_token(secret))
        elif token_kind == "claimed" and claimed >= 0:
            metadata = auth_metadata(claimed, client_token(secret, claimed))
        elif token_kind == "claimed":
            metadata = auth_metadata(claimed, "0" * 64)
        elif token_kind == "honest":
            other = data.draw(honest, label="token of")
            metadata = auth_metadata(other, client_token(secret, other))
        elif token_kind == "worker":
            metadata = auth_metadata(WORKER, worker_token(secret))
        elif token_kind == "wrong":
            metadata = auth_metadata(data.draw(CLIENT_IDS), data.draw(st.text(alphabet=HEX, max_size=64)))
        elif token_kind == "malformed":
            value = data.draw(METADATA_TEXT, label="client value")
            metadata = ((CLIENT_KEY, value), (TOKEN_KEY, data.draw(METADATA_TEXT, label="token value")))
    session = None
    if session_kind == "claimed":
        session = target.sessions.get(claimed, "f" * 32)
    elif session_kind == "honest":
        session = target.sessions[data.draw(honest, label="session of")]
    elif session_kind == "random":
        session = data.draw(st.one_of(st.text(alphabet=HEX, min_size=32, max_size=32), METADATA_TEXT))
    if session is not None:
        metadata += ((SESSION_KEY, session),)
    owners = {key: client_id for client_id, key in target.sessions.items()}
    token_of = None if target.secret is None else proven_by(target.secret, metadata)
    return Credentials(metadata, token_of, owners.get(session))


# Requests: fields, then their bytes as sent (intact, mangled, or random).


@st.composite
def encodings(draw: st.DrawFn, request: bytes) -> bytes:
    """The request's bytes, mostly intact; else truncated, with a byte changed, with bytes appended, or random."""
    how = draw(st.sampled_from(["intact"] * 6 + ["truncated", "changed", "appended", "random"]))
    if how == "truncated" and request:
        return request[: draw(st.integers(0, len(request) - 1))]
    if how == "changed" and request:
        where = draw(st.integers(0, len(request) - 1))
        return request[:where] + bytes([draw(st.integers(0, 255))]) + request[where + 1 :]
    if how == "appended":
        return request + draw(st.binary(min_size=1, max_size=24))
    if how == "random":
        return draw(st.binary(max_size=48))
    return request


def parsed(message_type: type, data: bytes) -> Any:
    """The request as the server parses it, or None if it cannot."""
    try:
        return message_type.FromString(data)
    except DecodeError:
        return None


def changed_fields(data: st.DataObject, honest: dict[str, Any], others: dict[str, st.SearchStrategy]) -> dict[str, Any]:
    """An honest request's fields with some of them (often none, at times all) replaced by `others`' draws."""
    names = data.draw(st.lists(st.sampled_from(sorted(others)), unique=True, max_size=len(others)), label="changed")
    return {**honest, **{name: data.draw(others[name], label=name) for name in names}}


def request_case(data: st.DataObject, target: Target, method: str, request: Any) -> tuple[Case, Any, Credentials]:
    """The request sent with credentials drawn for its client id, as some encoding of its bytes; also the request
    as the server parses those bytes (None if it cannot), and the credentials."""
    credentials = draw_credentials(data, target, request.client_id)
    sent = data.draw(encodings(request.SerializeToString()), label="request bytes")
    return Case(method, sent, credentials.metadata), parsed(type(request), sent), credentials


HONEST_IDS = st.sampled_from(range(NUM_CLIENTS))
WAITS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -0.0, 0.0, 5e-324, 1e308]),
                  st.floats(0.0, TINY_WAIT), st.floats(allow_nan=True, allow_infinity=True))


def task_ids(target: Target) -> st.SearchStrategy[int]:
    """Task ids: the answered and the open tasks, the next id, edge values, or any int64."""
    known = [target.accepted_task, *target.open_tasks, 0, -1, max(target.open_tasks) + 1, 2**63 - 1]
    return st.one_of(st.sampled_from(known), INT64)


def draw_join(data: st.DataObject, target: Target) -> Case:
    """Join with any client id, replace or not; never one that would legitimately start or replace a session
    (a client's Join without replace is refused while its session lives)."""
    fields = changed_fields(data, dict(client_id=data.draw(HONEST_IDS), replace=False),
                            dict(client_id=CLIENT_IDS, replace=st.booleans()))
    case, join, credentials = request_case(data, target, "Join", fl_pb2.JoinRequest(**fields))
    assume(join is None or not (0 <= join.client_id < NUM_CLIENTS and join.replace
                                and passes_auth(target, credentials, join.client_id)))
    return case


def draw_pull(data: st.DataObject, target: Target) -> Case:
    """PullTask with any client id, task id, wait and batch of task ids; never one the server would hold for
    long (a wait over TINY_WAIT for a client's next task)."""
    client_id = data.draw(HONEST_IDS)
    own_task = [task_id for task_id, owner in target.open_tasks.items() if owner == client_id]
    honest = dict(client_id=client_id, task_id=data.draw(st.sampled_from([0, *own_task])),
                  wait_seconds=data.draw(st.floats(0.0, TINY_WAIT)), task_ids=[])
    others = dict(client_id=CLIENT_IDS, task_id=task_ids(target), wait_seconds=WAITS,
                  task_ids=st.lists(task_ids(target), min_size=1, max_size=4))
    case, pull, credentials = request_case(data, target, "PullTask",
                                           fl_pb2.TaskRequest(**changed_fields(data, honest, others)))
    if pull is not None and passes(target, credentials, pull.client_id):
        case.may_succeed, case.charged = True, pull.client_id
        if not pull.task_ids and pull.task_id == 0:  # the server waits for the client's next task
            assume(pull.wait_seconds <= TINY_WAIT or math.isnan(pull.wait_seconds))  # NaN: no wait
    return case


def draw_fetch(data: st.DataObject, target: Target) -> Case:
    """FetchParams of any version, for any client, from any base version."""
    version = target.server.version
    versions = st.one_of(st.sampled_from([version, version - 1, version + 1, 0, -1, 2**63 - 1]), INT64)
    honest = dict(client_id=data.draw(HONEST_IDS), version=version,
                  base_version=data.draw(st.sampled_from([0, version - 1, version])))
    others = dict(client_id=CLIENT_IDS, version=versions, base_version=versions)
    case, fetch, credentials = request_case(data, target, "FetchParams",
                                            fl_pb2.ParamsRequest(**changed_fields(data, honest, others)))
    if fetch is not None and passes(target, credentials, fetch.client_id):
        case.may_succeed, case.charged = True, fetch.client_id
    return case


# PushResult: a real result's header, fields and tensor parts fuzzed.


@dataclass
class Part:
    """A tensor part as sent: its header (inline bytes, a byte count, or neither) and the bytes the data frames
    carry for it (which need not match the count)."""

    header: fl_pb2.TensorPart
    streamed: bytes = b""

    def copy(self) -> Part:
        """A copy whose header may be changed without changing this one."""
        header = fl_pb2.TensorPart()
        header.CopyFrom(self.header)
        return Part(header, self.streamed)


# Inline, so that it counts against no byte limit and the server reads everything else before refusing it.
POISON = Part(fl_pb2.TensorPart(name="poison", dtype="float32", shape=[1], data=bytes(4)))


@dataclass
class Draft:
    """A result being fuzzed: the header's fields (its parts kept apart) and the parts of each section."""

    message: fl_pb2.Result
    update: list[Part]
    tensors: list[Part]
    state: list[Part]
    has_update: bool = True
    chunk_size: int = STREAM_CHUNK

    @staticmethod
    def of(result: Result, task_id: int) -> Draft:
        """A real result, as a deployed client would send it."""
        header, views = wire.result_frame(dataclasses.replace(result, state={}), task_id)
        parts = [Part(part, bytes(view)) for part, view in zip(framing.tensor_parts(header), views, strict=True)]
        message = fl_pb2.Result()
        message.CopyFrom(header.result)
        num_update, num_tensors = len(message.update.parts), len(message.tensors)
        for repeated in (message.update.parts, message.tensors, message.state):
            del repeated[:]
        return Draft(message, parts[:num_update], parts[num_update : num_update + num_tensors],
                     parts[num_update + num_tensors :], header.result.HasField("update"))

    def frames(self) -> list[bytes]:
        """The stream: the header frame, then data frames of `chunk_size` bytes carrying the streamed bytes."""
        message = fl_pb2.Result()
        message.CopyFrom(self.message)
        if self.has_update:
            message.update.parts.extend(part.header for part in self.update)
        else:
            message.ClearField("update")
        message.tensors.extend(part.header for part in self.tensors)
        message.state.extend(part.header for part in self.state)
        streamed = b"".join(part.streamed for part in (*self.update, *self.tensors, *self.state)
                            if part.header.WhichOneof("body") != "data")
        chunks = [streamed[i : i + self.chunk_size] for i in range(0, len(streamed), self.chunk_size)]
        return [fl_pb2.Frame(result=message).SerializeToString(),
                *(fl_pb2.Frame(data=chunk).SerializeToString() for chunk in chunks)]


DTYPE_NAMES = st.sampled_from([*wire.DTYPES, "", "float8", "complex64", "Float32", "object"])
SIZES = st.one_of(st.integers(0, 4), st.sampled_from([-1, -(2**63), 2282, 2**31, 2**40, 2**62, 2**63 - 1]))
SHAPES = st.one_of(st.lists(SIZES, max_size=4),
                   st.lists(st.sampled_from([0, 2**31, 2**40, 2**62, 2**63 - 1]), min_size=2, max_size=4),  # 0 or huge
                   st.tuples(st.integers(60, 70), st.integers(0, 1)).map(lambda n: [n[1]] * n[0]),  # many dimensions
                   )
NAMES = st.one_of(st.sampled_from(["delta_c", "values", "indices", "c", "uplink/ef21.g", "poison", ""]),
                  st.text(max_size=12))
FLOATS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e308]),
                   st.floats(allow_nan=True, allow_infinity=True))
HUGE_COUNTS = st.sampled_from([2**40, 10**12, 2**63, 2**64 - 1])


@st.composite
def random_parts(draw: st.DrawFn) -> Part:
    """A tensor part from nothing: either plausible (a known dtype, a small shape, exactly its bytes) or anything."""
    if draw(st.booleans()):
        dtype, shape = draw(st.sampled_from(list(wire.DTYPES))), draw(st.lists(st.integers(0, 3), max_size=3))
        size = math.prod(shape) * wire.DTYPES[dtype].itemsize
        data = random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(size)
        header = fl_pb2.TensorPart(name=draw(NAMES), dtype=dtype, shape=shape)
    else:
        header = fl_pb2.TensorPart(name=draw(NAMES), dtype=draw(DTYPE_NAMES), shape=draw(SHAPES))
        needed = math.prod(header.shape) * wire.DTYPES.get(header.dtype, torch.uint8).itemsize
        data = bytes(needed) if 0 <= needed <= 4096 and draw(st.booleans()) else draw(st.binary(max_size=64))
    body = draw(st.sampled_from(["streamed", "streamed", "inline", "none", "huge"]))
    if body == "inline":
        header.data = data
        return Part(header)
    if body == "none":
        return Part(header)
    header.num_bytes = draw(HUGE_COUNTS) if body == "huge" else len(data)
    return Part(header, data)


def mutate_part(data: st.DataObject, part: Part) -> Part:
    """One change to a part: its dtype, shape or name, where its bytes travel, its byte count, or its bytes."""
    part = part.copy()
    header = part.header
    how = data.draw(st.sampled_from(["dtype", "shape", "fit", "name", "inline", "no body", "count", "poke",
                                     "resize"]))
    if how == "dtype":
        header.dtype = data.draw(DTYPE_NAMES)
    elif how == "shape":
        header.shape[:] = data.draw(SHAPES)
    elif how == "fit":  # another shape, with exactly the bytes it needs (when that is not too many)
        header.shape[:] = shape = data.draw(SHAPES)
        needed = math.prod(shape) * wire.DTYPES.get(header.dtype, torch.uint8).itemsize
        if 0 <= needed <= 1 << 16:
            part.streamed = (part.streamed * (needed // max(len(part.streamed), 1) + 1))[:needed].ljust(needed, b"\0")
            header.num_bytes = needed
    elif how == "inline":
        header.data, part.streamed = part.streamed, b""
    elif how == "no body":
        header.ClearField(header.WhichOneof("body") or "data")
    elif how == "count":
        header.num_bytes = data.draw(st.one_of(st.integers(0, len(part.streamed) + 8), HUGE_COUNTS))
    elif how == "poke" and len(part.streamed) >= 4:  # a float32's bytes (NaN, Inf, anything) somewhere
        where = data.draw(st.integers(0, len(part.streamed) - 4))
        value = struct.pack("<f", data.draw(st.floats(width=32, allow_nan=True, allow_infinity=True)))
        part.streamed = part.streamed[:where] + value + part.streamed[where + 4 :]
    elif how == "resize":  # other bytes, announced consistently
        part.streamed = part.streamed[: data.draw(st.integers(0, len(part.streamed)))] + data.draw(
            st.binary(max_size=16))
        header.num_bytes = len(part.streamed)
    return part


def mutate_parts(data: st.DataObject, parts: list[Part]) -> list[Part]:
    """One change to a list of parts: one part changed, dropped or repeated, a part added, the order reversed."""
    parts = list(parts)
    how = data.draw(st.sampled_from(["change", "change", "drop", "repeat", "add", "reverse", "clear"]))
    if how in ("change", "drop", "repeat") and parts:
        i = data.draw(st.integers(0, len(parts) - 1))
        if how == "change":
            parts[i] = mutate_part(data, parts[i])
        elif how == "drop":
            del parts[i]
        else:
            parts.insert(data.draw(st.integers(0, len(parts))), parts[i].copy())
    elif how == "add":
        parts.insert(data.draw(st.integers(0, len(parts))), data.draw(random_parts()))
    elif how == "reverse":
        parts.reverse()
    elif how == "clear":
        parts = []
    return parts


def mutate_metrics(data: st.DataObject, message: fl_pb2.Result) -> None:
    """A metric dropped, added, or set to anything (NaN, Inf, negative)."""
    how = data.draw(st.sampled_from(["drop", "add", "set"]))
    if how == "drop" and message.metrics:
        del message.metrics[data.draw(st.sampled_from(sorted(message.metrics)))]
    elif how == "add":
        message.metrics[data.draw(NAMES)] = data.draw(FLOATS)
    elif how == "set" and message.metrics:
        message.metrics[data.draw(st.sampled_from(sorted(message.metrics)))] = data.draw(FLOATS)


def mutate_update(data: st.DataObject, draft: Draft) -> None:
    """The update dropped, or its codec, dtype, shape, params or parts changed."""
    update = draft.message.update
    how = data.draw(st.sampled_from(["drop", "codec", "dtype", "shape", "params", "parts"]))
    if how == "drop":
        draft.has_update = False
    elif how == "codec":
        update.codec = data.draw(st.one_of(st.sampled_from(["topk", "ef21(randk)", "identity", "raw", ""]),
                                           st.text(max_size=12)))
    elif how == "dtype":
        update.dtype = data.draw(DTYPE_NAMES)
    elif how == "shape":
        update.shape[:] = data.draw(SHAPES)
    elif how == "params":
        update.params.update(data.draw(st.dictionaries(NAMES, FLOATS, min_size=1, max_size=3)))
    else:
        draft.update = mutate_parts(data, draft.update)


def mutate_field(data: st.DataObject, target: Target, draft: Draft, name: str) -> None:
    """Change one field of the draft to something else (often a value a careless or hostile client might send)."""
    message = draft.message
    if name == "kind":
        message.kind = data.draw(st.one_of(st.sampled_from(["evaluate", "", "Train", "train\x00"]),
                                           st.text(max_size=8)))
    elif name == "version":
        message.version = data.draw(
            st.one_of(st.sampled_from([message.version - 1, message.version + 1, 0, -1]), INT64))
    elif name == "task_id":
        message.task_id = data.draw(task_ids(target))
    elif name == "client_id":
        message.client_id = data.draw(CLIENT_IDS)
    elif name == "num_samples":
        message.num_samples = data.draw(
            st.one_of(st.sampled_from([message.num_samples - 1, message.num_samples + 1, 0, -1]), INT64))
    elif name == "metrics":
        mutate_metrics(data, message)
    elif name == "update":
        mutate_update(data, draft)
    elif name == "tensors":
        draft.tensors = mutate_parts(data, draft.tensors)
    elif name == "state":
        draft.state = data.draw(st.lists(random_parts(), min_size=1, max_size=3))


FIELDS = ("kind", "version", "task_id", "client_id", "num_samples", "metrics", "update", "tensors", "state")


def random_draft(data: st.DataObject) -> Draft:
    """A result header from nothing: every field and part random."""
    message = fl_pb2.Result(kind=data.draw(st.sampled_from(["train", "evaluate", ""])), version=data.draw(INT64),
                            task_id=data.draw(INT64), client_id=data.draw(CLIENT_IDS), num_samples=data.draw(INT64),
                            metrics=data.draw(st.dictionaries(NAMES, FLOATS, max_size=4)))
    message.update.codec, message.update.dtype = data.draw(st.text(max_size=10)), data.draw(DTYPE_NAMES)
    message.update.shape[:] = data.draw(SHAPES)
    parts = st.lists(random_parts(), max_size=3)
    return Draft(message, data.draw(parts), data.draw(parts), data.draw(parts), data.draw(st.booleans()))


def draw_push(data: st.DataObject, target: Target) -> Case:
    """PushResult of a pending client's real result with up to three fields changed (or of a random result), in
    data frames of some size. Whatever could reach an open task with that task's credentials carries a state part,
    which a deployed server refuses (after decoding everything else)."""
    client_id = data.draw(st.sampled_from(sorted(target.pending)), label="base client")
    assignment, result = target.pending[client_id]
    if data.draw(st.integers(0, 7), label="random result") == 0:
        draft = random_draft(data)
    else:
        draft = Draft.of(result, assignment.task_id)
        for name in data.draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True), label="fields"):
            mutate_field(data, target, draft, name)
    draft.chunk_size = data.draw(st.sampled_from([STREAM_CHUNK, 4096, 1 << 20]), label="chunk")
    credentials = draw_credentials(data, target, draft.message.client_id)
    reaches_open_task = target.open_tasks.get(draft.message.task_id) == draft.message.client_id
    if reaches_open_task and passes(target, credentials, draft.message.client_id):
        draft.state.append(POISON)
    return Case("PushResult", draft.frames(), credentials.metadata)


# PushResult: frame streams mangled.


def may_store(target: Target, frames: list[bytes], credentials: Credentials) -> bool:
    """Whether the stream's first result could be stored: a result header for an open task that the credentials
    may answer, data frames that fill its parts exactly, then the end or another result header (as the server reads
    it, frame by frame). Such a stream may be legitimate, so the fuzzing does not send it."""
    try:
        header = fl_pb2.Frame.FromString(frames[0]) if frames else None
        if header is None or header.WhichOneof("body") != "result":
            return False
        client_id, task_id = header.result.client_id, header.result.task_id
        if target.open_tasks.get(task_id) != client_id or not passes(target, credentials, client_id):
            return False
        reader, rest = framing.PartsReader(header, target.server.channel.board.upload_limit()), iter(frames[1:])
        while not reader.done and (frame := next(rest, None)) is not None:
            reader.feed(fl_pb2.Frame.FromString(frame))
        reader.result()
        after = next(rest, None)
        return after is None or fl_pb2.Frame.FromString(after).WhichOneof("body") == "result"
    except (DecodeError, ValueError):
        return False


OTHER_FRAMES = st.sampled_from([fl_pb2.Frame(), fl_pb2.Frame(signal=fl_pb2.DONE), fl_pb2.Frame(data=b""),
                                fl_pb2.Frame(task=fl_pb2.Task(kind="train")), fl_pb2.Frame(params=fl_pb2.Params())])


def oversized(data: st.DataObject, frame: bytes) -> bytes:
    """The header frame with one streamed part announcing terabytes (or more than any limit)."""
    header = fl_pb2.Frame.FromString(frame)
    counted = [part for part in framing.tensor_parts(header) if part.WhichOneof("body") == "num_bytes"]
    if counted:
        data.draw(st.sampled_from(counted), label="oversized part").num_bytes = data.draw(HUGE_COUNTS)
    return header.SerializeToString()


def mangle(data: st.DataObject, target: Target, frames: list[bytes]) -> list[bytes]:
    """Up to four changes to a frame stream: frames dropped, repeated, swapped, truncated, altered, inserted
    (random bytes, other kinds of frame), the accepted result replayed after it, or the header oversized."""
    frames = list(frames)
    for how in data.draw(st.lists(st.sampled_from(["drop", "repeat", "swap", "truncate", "alter", "insert", "other",
                                                   "replay", "oversize"]), max_size=4), label="changes"):
        index = st.integers(0, max(len(frames) - 1, 0))
        if how == "drop" and frames:
            del frames[data.draw(index)]
        elif how == "repeat" and frames:
            frames.insert(data.draw(st.integers(0, len(frames))), frames[data.draw(index)])
        elif how == "swap" and frames:
            i, j = data.draw(index), data.draw(index)
            frames[i], frames[j] = frames[j], frames[i]
        elif how == "truncate" and frames:
            i = data.draw(index)
            frames[i] = frames[i][: data.draw(st.integers(0, max(len(frames[i]) - 1, 0)))]
        elif how == "alter" and frames and frames[i := data.draw(index)]:
            where = data.draw(st.integers(0, len(frames[i]) - 1))
            frames[i] = frames[i][:where] + bytes([data.draw(st.integers(0, 255))]) + frames[i][where + 1 :]
        elif how == "insert":
            frames.insert(data.draw(st.integers(0, len(frames))), data.draw(st.binary(max_size=64)))
        elif how == "other":
            frames.insert(data.draw(st.integers(0, len(frames))), data.draw(OTHER_FRAMES).SerializeToString())
        elif how == "replay":
            frames += target.accepted_frames
        elif how == "oversize" and frames:
            try:
                frames[0] = oversized(data, frames[0])
            except (DecodeError, ValueError):
                pass  # the first frame is no longer a header
    return frames


def draw_stream(data: st.DataObject, target: Target) -> Case:
    """A frame stream to PushResult: a pending client's honest result or the accepted one, mangled (or not), or
    random bytes, with that client's credentials or others. Streams whose first result could be stored are not
    sent (see may_store); the accepted result replayed intact with its own credentials must be FAILED_PRECONDITION."""
    base = data.draw(st.sampled_from(["random", "accepted", *sorted(target.pending)]), label="base")
    if base == "random":
        frames = data.draw(st.lists(st.binary(max_size=64), max_size=5), label="frames")
        client_id = data.draw(CLIENT_IDS, label="claimed")
    else:
        client_id = target.accepted if base == "accepted" else base
        honest = target.accepted_frames if base == "accepted" else target.pending_frames(base)
        frames = mangle(data, target, honest)
    credentials = draw_credentials(data, target, client_id)
    assume(not may_store(target, frames, credentials))
    replay = base == "accepted" and frames == target.accepted_frames and passes(target, credentials, client_id)
    return Case("PushResult", frames, credentials.metadata, expected=Code.FAILED_PRECONDITION if replay else None)


# The tests.


def fuzz(targets: list[Target], data: st.DataObject, draw_case: Callable[[st.DataObject, Target], Case]) -> None:
    """Draw a server and a case for it, and attack (a failure shows the case as sent)."""
    target = data.draw(st.sampled_from(targets), label="server")
    case = draw_case(data, target)
    note(f"{target.name} server: {case}")
    attack(target, case)


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_join_refuses_and_changes_nothing(targets: list[Target], data: st.DataObject) -> None:
    fuzz(targets, data, draw_join)


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_pull_task_answers_harmlessly(targets: list[Target], data: st.DataObject) -> None:
    fuzz(targets, data, draw_pull)


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_fetch_params_answers_harmlessly(targets: list[Target], data: st.DataObject) -> None:
    fuzz(targets, data, draw_fetch)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_push_result_refuses_fuzzed_results(targets: list[Target], data: st.DataObject) -> None:
    fuzz(targets, data, draw_push)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_push_result_refuses_mangled_streams(targets: list[Target], data: st.DataObject) -> None:
    fuzz(targets, data, draw_stream)


def test_a_replayed_honest_result_is_refused(targets: list[Target]) -> None:
    for target in targets:
        replay = Case("PushResult", target.accepted_frames, own_credentials(target, target.accepted),
                      expected=Code.FAILED_PRECONDITION)
        assert "already answered" in attack(target, replay).details


def test_a_pending_result_with_a_wrong_token_or_session_is_refused(targets: list[Target]) -> None:
    for target in targets:
        client_id = min(target.pending)
        frames, session = target.pending_frames(client_id), ((SESSION_KEY, target.sessions[client_id]),)
        attack(target, Case("PushResult", frames, (), expected=Code.UNAUTHENTICATED if target.secret
                            else Code.FAILED_PRECONDITION))
        if target.secret:
            wrong = auth_metadata(client_id, client_token(b"a guessed secret", client_id))
            attack(target, Case("PushResult", frames, wrong + session, expected=Code.UNAUTHENTICATED))


def test_a_stream_abandoned_midway_releases_its_task(targets: list[Target]) -> None:
    """A client that sends a header and some data, then goes silent until its deadline: the server must let go of
    the task it reserved (and of the call's slot), leaving everything as it was."""
    for target in targets:
        client_id = min(target.pending)
        frames = target.pending_frames(client_id)

        def stalled() -> Iterator[bytes]:
            yield from frames[:2]
            time.sleep(1.0)

        before = snapshot(target.server)
        with pytest.raises(grpc.RpcError) as error:
            target.channel.stream_unary("/fl.Federation/PushResult")(stalled(), timeout=0.3,
                                                                      metadata=own_credentials(target, client_id))
        assert error.value.code() == Code.DEADLINE_EXCEEDED
        assert wait_until(lambda: not target.servicer._calls, 5.0)
        assert wait_until(lambda: target.server.channel.board.snapshot() == before["board"], 5.0)
        assert_same(before, snapshot(target.server))


KINDS: dict[str, Callable[[st.DataObject, Target], Case]] = {
    "Join": draw_join, "PullTask": draw_pull, "FetchParams": draw_fetch, "PushResult fields": draw_push,
    "PushResult stream": draw_stream,
}


@pytest.mark.slow
@settings(FUZZ, max_examples=10_000)
@given(data=st.data())
def test_ten_thousand_calls_of_every_kind(targets: list[Target], data: st.DataObject) -> None:
    fuzz(targets, data, KINDS[data.draw(st.sampled_from(sorted(KINDS)), label="kind")])


# Regressions: bugs the fuzzing found.


def test_a_pull_with_a_nan_wait_is_answered_at_once(targets: list[Target]) -> None:
    """A NaN wait once survived the clamp and held the call until the board changed; four such calls held all of the
    client's call slots."""
    target = targets[0]
    request = fl_pb2.TaskRequest(client_id=target.accepted, wait_seconds=math.nan).SerializeToString()
    attack(target, Case("PullTask", request, own_credentials(target, target.accepted), may_succeed=True,
                        charged=target.accepted, timeout=3.0))


def test_a_doubled_minus_in_the_client_metadata_is_unauthenticated(targets: list[Target]) -> None:
    """int("--1") once raised inside authentication, and every call of a server with tokens answered UNKNOWN."""
    target = next(target for target in targets if target.secret)
    request = fl_pb2.JoinRequest(client_id=1).SerializeToString()
    attack(target, Case("Join", request, ((CLIENT_KEY, "--1"), (TOKEN_KEY, "0" * 64)), expected=Code.UNAUTHENTICATED))


def test_an_empty_tensor_part_with_huge_dimensions_is_invalid(targets: list[Target]) -> None:
    """torch.empty([2**40, 2**40, 0]) overflows torch's size arithmetic: such a part once made PushResult answer
    UNKNOWN."""
    for target in targets:
        client_id = min(target.pending)
        assignment, result = target.pending[client_id]
        draft = Draft.of(result, assignment.task_id)
        draft.state.append(Part(fl_pb2.TensorPart(name="s", dtype="float32", shape=[2**40, 2**40, 0], num_bytes=0)))
        attack(target, Case("PushResult", draft.frames(), own_credentials(target, client_id),
                            expected=Code.INVALID_ARGUMENT))


def test_honest_clients_finish_as_if_never_attacked(targets: list[Target], reference_params: Tensor) -> None:
    """Last in the module: the pending results go in, round 2 ends, round 3 is played, and every attacked server
    holds the parameters of the run that was never attacked."""
    for target in targets:
        target.finish_round()
        for round in range(3, ROUNDS + 1):
            play_round(target.server, round, target.clients)
        assert target.server.version == ROUNDS
        assert torch.equal(target.server.global_params, reference_params), target.name

"""Codecs at the two ends of the uplink: the worker encodes a client's update, the server decodes and checks it.

The sender's codec state (error-feedback residuals) rides in the client's stored state under the "uplink/" prefix;
the receiver's state (EF21's estimates) stays on the server, keyed by client, and changes only for updates that pass.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from transport.channel import ValuesRefused
from transport.codecs.base import Codec, Payload, State
from transport.downlink import Broadcast, Replica

PREFIX = "uplink/"


def split_state(state: State) -> tuple[State, State]:
    """(the strategy hook's state, the uplink codec's state without its prefix)."""
    hook = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    codec = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    return hook, codec


def join_state(hook: State, codec: State) -> State:
    return {**hook, **{PREFIX + k: v for k, v in codec.items()}}


def encode_update(codec: Codec, update: Tensor, codec_state: State, seed: int) -> tuple[Payload, State]:
    """The client side: compress an update with a generator seeded for this client and round."""
    generator = torch.Generator().manual_seed(seed)
    return codec.encode(update, codec_state, generator)


class UplinkDecoder:
    """The server side: decode a client's payload, refuse a wrong shape or dtype or a non-finite value. Decoding
    changes nothing; `stage` keeps the receiver state (EF21's estimate) of an update the server admitted, and the
    round's `commit` writes it (or `discard` drops it, when the round fails)."""

    def __init__(self, codec: Codec, num_params: int, dtypes: tuple[torch.dtype, ...]) -> None:
        self.codec, self.num_params, self.dtypes = codec, num_params, dtypes
        self.states: dict[int, State] = {}
        self.staged: dict[int, State] = {}

    def max_payload_bytes(self) -> int:
        """The largest payload an update may have: the codec's size for the model in the widest allowed dtype."""
        return max(self.codec.payload_nbytes(self.num_params, dtype) for dtype in self.dtypes)

    def decode(self, client_id: int, payload: Payload) -> tuple[Tensor, State]:
        """(update, the client's new receiver state); ValueError for anything malformed or not finite."""
        if payload.shape != (self.num_params,):
            raise ValueError(f"update has shape {payload.shape}, expected ({self.num_params},)")
        if payload.dtype not in self.dtypes:
            raise ValueError(f"update has dtype {payload.dtype}, expected one of {self.dtypes}")
        try:
            update, state = self.codec.decode(payload, self.states.get(client_id, {}))
        except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as error:
            raise ValueError(f"update cannot be decoded: {error}") from None
        if update.shape != (self.num_params,):
            raise ValueError(f"update decodes to shape {tuple(update.shape)}, expected ({self.num_params},)")
        if not torch.isfinite(update).all():
            raise ValuesRefused("update holds NaN or Inf values")
        return update, state

    def stage(self, client_id: int, state: State) -> None:
        self.staged[client_id] = state

    def commit(self, client_ids: Iterable[int]) -> None:
        """Write the staged states of the results a successful round collected; drop any other (a result admitted
        after its round failed, or after its call was cancelled)."""
        staged, self.staged = self.staged, {}
        for client_id in client_ids:
            if client_id in staged:
                self._write(client_id, staged[client_id])

    def discard(self) -> None:
        self.staged = {}

    def settle(self, client_id: int, applied: bool) -> None:
        """An asynchronous run consumed one client's result: write its staged state if applied, else drop it."""
        state = self.staged.pop(client_id, None)
        if applied and state is not None:
            self._write(client_id, state)

    def _write(self, client_id: int, state: State) -> None:
        """Keep a client's receiver state; a stateless codec's empty state takes no entry."""
        if state:
            self.states[client_id] = state
        else:
            self.states.pop(client_id, None)

    def forget(self, client_id: int) -> None:
        self.states.pop(client_id, None)
        self.staged.pop(client_id, None)


class Downlink:
    """The server's broadcast. A lossy codec sends the change of the global parameters since the last broadcast
    (the first goes whole), and `mirror` is the replica every up-to-date client holds. With error feedback
    (`ef(...)`) the replica stays within the residual of the true parameters; a biased codec without it lets the
    replica drift."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.mirror = Replica(codec)
        self.previous: Tensor | None = None  # the parameters of the last broadcast
        self.sender_state: State = {}

    def broadcast(self, version: int, params: Tensor, seed: int) -> Broadcast:
        """What clients receive of `params` as `version`."""
        if self.codec.lossless or self.previous is None:
            self.mirror.set_whole(version, params, {})
            self.previous = params
            return Broadcast(params)
        generator = torch.Generator().manual_seed(seed)
        change, self.sender_state = self.codec.encode(params - self.previous, self.sender_state, generator)
        self.mirror.apply_change(version, change)
        self.previous = params
        return Broadcast(self.mirror.params, change, self.mirror.state)

"""What a client holds of the global parameters, and the cheapest download that brings it up to date.

A compressing downlink broadcasts each version as the compressed change from the one before. A client that holds
version h can catch up to v by decoding the changes h+1..v in order; a new client, or one whose chain is gone or would
cost more than the whole parameters, downloads the whole replica (with the downlink decoder's state, when it keeps
one). The server's mirror and every client's copy are `Replica` objects, so all of them hold the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from transport.codecs.base import Codec, Payload, State


@dataclass
class Broadcast:
    """One published version: the replica clients hold after it, the compressed change from the version before
    (None when only the whole replica travels: a lossless downlink, or the first version), and the downlink
    decoder's state after it (sent along with the whole replica)."""

    params: Tensor
    change: Payload | None = None
    state: State = field(default_factory=dict)


def catch_up(held: int, version: int, change_sizes: Mapping[int, int], whole: int) -> list[int] | None:
    """The versions whose changes take a client from `held` to `version` (held = 0: holds nothing), when every one
    is kept and together they cost fewer bytes than `whole`; None when the whole replica is the download."""
    if held <= 0 or held > version:
        return None
    chain = range(held + 1, version + 1)
    if any(v not in change_sizes for v in chain) or sum(change_sizes[v] for v in chain) >= whole:
        return None
    return list(chain)


def keep_cheaper_than(change_sizes: dict[int, int], whole: int) -> None:
    """Forget the oldest changes until the kept ones cost less than `whole` together (longer chains are never
    sent, so this bounds what the server keeps by the size of one whole download)."""
    while change_sizes and sum(change_sizes.values()) >= whole:
        del change_sizes[min(change_sizes)]


class DownloadLedger:
    """Simulation: the version each client last downloaded, to charge each download as a real client would pay."""

    def __init__(self) -> None:
        self.held: dict[int, int] = {}
        self.change_sizes: dict[int, int] = {}

    def published(self, version: int, change_bytes: int | None, whole: int) -> None:
        if change_bytes is None:
            self.change_sizes.clear()  # a version without a change breaks every chain through it
        else:
            self.change_sizes[version] = change_bytes
            keep_cheaper_than(self.change_sizes, whole)

    def cost(self, client_id: int, version: int, whole: int) -> int:
        """Bytes `client_id` would pay to hold `version` (nothing when it holds it already); changes nothing."""
        held = self.held.get(client_id, 0)
        if held == version:
            return 0
        chain = catch_up(held, version, self.change_sizes, whole)
        return whole if chain is None else sum(self.change_sizes[v] for v in chain)

    def charge(self, client_id: int, version: int, whole: int) -> int:
        """Bytes `client_id` pays to hold `version`; from now on it holds it."""
        cost = self.cost(client_id, version, whole)
        self.held[client_id] = version
        return cost


class Replica:
    """A copy of the broadcast parameters: set whole, or moved on by decoding one version's change at a time."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.version = 0  # 0: holds nothing yet
        self.params: Tensor | None = None
        self.state: State = {}  # the downlink decoder's state

    def set_whole(self, version: int, params: Tensor, state: State) -> None:
        self.version, self.params, self.state = version, params, dict(state)

    def apply_change(self, version: int, change: Payload) -> None:
        """Decode the change that leads from `version - 1` (which this replica must hold) to `version`."""
        if self.params is None or version != self.version + 1:
            raise ValueError(f"a change to version {version} needs version {version - 1}; this replica holds "
                             f"{self.version or 'nothing'}")
        decoded, self.state = self.codec.decode(change, self.state)
        self.params = (self.params + decoded).to(self.params.dtype)
        self.version = version

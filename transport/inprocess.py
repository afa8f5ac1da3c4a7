"""A channel that hands Python objects over directly: the fastest path, for tests and single-process runs."""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from transport.channel import Channel, Endpoint
from transport.downlink import Broadcast, DownloadLedger
from transport.messages import Result, Task, result_bytes, task_bytes, tensor_bytes


def _same(value: Any) -> Any:
    return value


class InProcessEndpoint(Endpoint):
    def open(self, envelope: tuple[Task, Tensor]) -> tuple[Task, Tensor]:
        return envelope

    def send(self, result: Result) -> Result:
        return result


class InProcessChannel(Channel):
    """Hands messages over as objects and counts the payload bytes a wire would carry.

    In-process nothing is copied. The conversions let another object transport reuse the bookkeeping: `share` makes
    what workers receive of the global parameters, `pack` and `unpack` convert tasks and results on the way (Ray's
    channel puts the parameters into its object store and moves tensors as numpy arrays).
    """

    def __init__(self, share: Callable[[Tensor], Any] = _same, pack: Callable[[Any], Any] = _same,
                 unpack: Callable[[Any], Any] = _same, endpoint: Endpoint | None = None) -> None:
        super().__init__()
        self.share, self.pack, self.unpack = share, pack, unpack
        self._endpoint = endpoint or InProcessEndpoint()
        self._shared: Any = None
        self._version, self._whole = 0, 0  # the published version and the bytes of its whole download
        self.downloads = DownloadLedger()

    def publish(self, version: int, broadcast: Broadcast) -> None:
        self._shared = self.share(broadcast.params)
        self._version, self._whole = version, tensor_bytes({"params": broadcast.params, **broadcast.state})
        change = None if broadcast.change is None else broadcast.change.nbytes()
        self.downloads.published(version, change, self._whole)

    def post(self, task: Task) -> tuple[Any, Any]:
        if self._shared is None:
            raise RuntimeError("publish the global parameters before posting tasks")
        download = self.downloads.charge(task.client_id, self._version, self._whole)
        self.traffic.add_down(task.client_id, task_bytes(task, download))
        return self.pack(task), self._shared

    def receive(self, receipt: Any) -> Result:
        result = self.unpack(receipt)
        size = result_bytes(result)
        accepted = self.accepted(result)  # a refused result is not counted either
        self.traffic.add_up(result.client_id, size)
        return accepted

    def endpoint(self) -> Endpoint:
        return self._endpoint

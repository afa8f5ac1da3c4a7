"""Shared pieces of the gRPC tests: a raw payload codec, results, a board with a server and a client."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import grpc
import pytest
import torch

from transport.codecs.base import Payload
from transport.grpc_client import FederationClient
from transport.board import TaskBoard
from transport.channel import Admission
from transport.messages import Result

SIZE = 10
CHUNK = 64 << 10


def raw(values: torch.Tensor) -> Payload:
    return Payload("raw", tuple(values.shape), values.dtype, parts={"values": values})


def decode_raw(client_id: int, payload: Payload) -> torch.Tensor:
    """What the real codec wrapper checks: the codec, shape, dtype and finiteness of the update."""
    values = payload.parts.get("values")
    if payload.codec != "raw" or values is None:
        raise ValueError(f"cannot decode a {payload.codec!r} payload")
    if tuple(values.shape) != (SIZE,) or payload.shape != (SIZE,):
        raise ValueError(f"update shape {tuple(values.shape)}, expected {(SIZE,)}")
    if values.dtype != torch.float32 or payload.dtype != torch.float32:
        raise ValueError(f"update dtype {values.dtype}, expected float32")
    if not torch.isfinite(values).all():
        raise ValueError("update has NaN or Inf values")
    return values.clone()


class PayloadAdmission(Admission):
    """A test server's admission: any client id below `num_clients`, results with finite tensors and their update
    decoded by `decode(client_id, payload)`."""

    def __init__(self, decode=None, num_clients: int = 64, limit: int = 1 << 34) -> None:
        super().__init__(num_clients)
        self.decode, self.limit = decode or decode_raw, limit

    def upload_limit(self) -> int:
        return self.limit

    def admit(self, result: Result) -> Result:
        self.check_client(result.client_id)
        for where, tensors in (("tensors", result.tensors), ("state", result.state)):
            for name, tensor in tensors.items():
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise ValueError(f"result {where}[{name!r}] has NaN or Inf values")
        if result.update is None:
            return result
        return dataclasses.replace(result, update=self.decode(result.client_id, result.update))


def result(client_id: int = 1, value: float = 1.0, **changes) -> Result:
    fields = dict(kind="train", version=1, client_id=client_id, num_samples=5, metrics={"loss": value},
                  update=raw(torch.full((SIZE,), value)))
    return Result(**(fields | changes))


@dataclass
class Federation:
    board: TaskBoard
    client: FederationClient
    address: str


def refusal(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(*args)
    return error.value

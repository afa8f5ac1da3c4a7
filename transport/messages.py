"""The two messages of the update path, independent of how they travel."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from transport.codecs.base import Payload

Scalar = bool | int | float | str
TRAIN, EVALUATE = "train", "evaluate"
# Results of a training task that carry no update: the client's own training diverged (its loss or update is NaN or
# Inf), or the server refused the update's values (too large, NaN or Inf) and closed the task with it.
DIVERGED, REFUSED = "diverged", "refused"


@dataclass
class Task:
    """Server to client: train (or evaluate) on the published global parameters of `version`."""

    kind: str
    version: int  # the round, or the model version of an asynchronous run
    client_id: int
    seed: int
    config: dict[str, Scalar] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)
    # Simulation only: the client's stored state rides along with its task and is never counted as traffic;
    # a deployed client keeps its state on its own machine.
    state: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Result:
    """Client to server: the update of a training task, or the counts of an evaluation task."""

    kind: str
    version: int
    client_id: int
    num_samples: int
    metrics: dict[str, float]
    update: Tensor | Payload | None = None  # encoded by the uplink codec on the client, decoded on the server
    tensors: dict[str, Tensor] = field(default_factory=dict)
    state: dict[str, Tensor] = field(default_factory=dict)  # simulation only, see Task.state


def tensor_bytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def task_bytes(task: Task, params_bytes: int) -> int:
    """Payload bytes a task moves to its client: the global parameters and the extra tensors."""
    return params_bytes + tensor_bytes(task.tensors)


def result_bytes(result: Result) -> int:
    """Payload bytes a result moves to the server: the update and the extra tensors."""
    update = result.update
    if isinstance(update, Payload):
        size = update.nbytes()
    else:
        size = 0 if update is None else update.numel() * update.element_size()
    return size + tensor_bytes(result.tensors)

"""A worker runs many virtual clients in turn: one resident model, every client's data on its device."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fl.bounds import divergence
from fl.compression import encode_update, join_state, split_state
from fl.models import ModelFn
from fl.seeding import CODEC, derive_seed
from fl.training import LocalTrainer, TrainConfig, evaluate
from simulations.federated_data import FederatedData
from strategies.base import ClientAlgorithm, ClientHook
from transport.channel import Endpoint
from transport.codecs.registry import make_codec
from transport.messages import DIVERGED, EVALUATE, TRAIN, Result, Task

DEVICES = ("auto", "cpu", "cuda")
# Simulation only: a decentralized node's own parameters, which its training starts from instead of the published
# global parameters. It rides in `Task.state` (never counted: a real node keeps its model) and never comes back.
NODE_START = "node/start"


def resolve_device(name: str) -> torch.device:
    """"auto" is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def as_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    """A tensor on `device` from a possibly read-only array (Ray hands out read-only shared memory)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).to(device, copy=True)


@dataclass
class WorkerSetup:
    """What every worker receives once; picklable."""

    model_fn: ModelFn
    data: FederatedData
    train_config: TrainConfig
    algorithm: ClientAlgorithm | None
    device: str = "auto"
    threads: int = 1
    uplink: str = "identity"  # codec spec for client updates
    max_update_norm: float = 0.0  # security.max_update_norm: a larger update is reported as diverged (0: no bound)


class Worker:
    def __init__(self, setup: WorkerSetup, endpoint: Endpoint) -> None:
        torch.set_num_threads(setup.threads)
        self.setup, self.endpoint = setup, endpoint
        self.uplink = make_codec(setup.uplink)
        self.device = resolve_device(setup.device)
        self.trainer = LocalTrainer(setup.model_fn(), self.device)
        data = setup.data
        self.offsets, self.test_offsets = data.offsets, data.test_offsets
        self.x, self.y = as_tensor(data.x, self.device), as_tensor(data.y, self.device)
        self.test_x, self.test_y = as_tensor(data.test_x, self.device), as_tensor(data.test_y, self.device)

    def run(self, envelope: Any) -> Any:
        """Open a task, run it, and send the result; returns the endpoint's receipt."""
        return self.run_many([envelope])[0]

    def run_many(self, envelopes: list[Any]) -> list[Any]:
        """Open several tasks, run them in turn, send their results: one exchange for many clients."""
        results = [self._execute(task, params) for task, params in self.endpoint.open_many(envelopes)]
        return self.endpoint.send_many(results)

    def _execute(self, task: Task, global_params: Tensor) -> Result:
        if task.kind == TRAIN:
            return self._train(task, global_params)
        if task.kind == EVALUATE:
            return self._evaluate(task, global_params)
        raise ValueError(f"unknown task kind {task.kind!r}")

    def _train(self, task: Task, global_params: Tensor) -> Result:
        lo, hi = self.offsets[task.client_id], self.offsets[task.client_id + 1]
        config = self.setup.train_config.with_overrides(task.config)
        num_trainable = self.trainer.spec.num_trainable
        algorithm = self.setup.algorithm
        state = dict(task.state)
        start = state.pop(NODE_START, global_params)
        hook_state, codec_state = split_state(state)
        hook = ClientHook() if algorithm is None else algorithm.start(
            start[:num_trainable].to(self.device), task.tensors, hook_state
        )
        outcome = self.trainer.train(start, self.x[lo:hi], self.y[lo:hi], config, task.seed, hook)
        if divergence(outcome.loss, outcome.update, start, self.setup.max_update_norm) is not None:
            return Result(DIVERGED, task.version, task.client_id, int(hi - lo), {})  # a failed task, state unchanged
        payload, codec_state = encode_update(self.uplink, outcome.update, codec_state, derive_seed(task.seed, CODEC))
        metrics = {"loss": outcome.loss, "steps": float(outcome.steps), "lr": config.lr}
        return Result(TRAIN, task.version, task.client_id, int(hi - lo), metrics, payload, outcome.hook_tensors,
                      join_state(outcome.hook_state or hook_state, codec_state))

    def _evaluate(self, task: Task, global_params: Tensor) -> Result:
        lo, hi = self.test_offsets[task.client_id], self.test_offsets[task.client_id + 1]
        self.trainer.flat.load(global_params.to(self.device))
        loss_sum, correct, count = evaluate(self.trainer.model, self.test_x[lo:hi], self.test_y[lo:hi])
        return Result(EVALUATE, task.version, task.client_id, count, {"loss_sum": loss_sum, "correct": float(correct)})

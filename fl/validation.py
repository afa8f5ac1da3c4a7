"""The server boundary: every result, on every channel (gRPC, in-process, Ray), passes `ResultAdmission` once.

A result is admitted only if it answers as this run's clients answer: a known client id, its true sample count, the
metrics the worker reports (finite), an update the uplink codec decodes to the model's shape (finite, and within the
norm bound of fl/bounds.py), exactly the tensors the strategy expects (names, shapes, dtypes, finite), and no stored
state from a deployed client; or, for a training task, a DIVERGED report (the client's own training diverged) with
nothing else. A malformed result changes nothing; one whose values are refused (ValuesRefused) answers its task as a
failed one. An admitted result stages the uplink decoder's new state of its client, which the server writes when the
round commits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fl.bounds import SERVER_SLACK, l2_norm, update_bound
from fl.compression import UplinkDecoder
from strategies.base import TensorSpec
from transport.channel import Admission, ValuesRefused
from transport.codecs.base import Payload
from transport.messages import DIVERGED, EVALUATE, TRAIN, Result

TRAIN_METRICS = frozenset({"loss", "steps", "lr"})  # what fl/worker.py reports for a training task
EVALUATE_METRICS = frozenset({"loss_sum", "correct"})
STATE_BYTES_PER_PARAM = 32  # simulation state (control variates, EF residuals): up to four float64 model copies


class ResultAdmission(Admission):
    """Checks results against what the server knows: client sizes, the codec, the strategy's reply tensors.

    `accept_state`: simulations carry each client's stored state with its result; a deployed client keeps its own,
    so a deployed server refuses any.
    """

    def __init__(
        self,
        train_sizes: Sequence[int],
        test_sizes: Sequence[int],
        decoder: UplinkDecoder,
        reply_tensors: Mapping[str, TensorSpec],
        accept_state: bool = True,
        max_update_norm: float = 0.0,
    ) -> None:
        """`max_update_norm`: security.max_update_norm (0: no bound); `published` tells the models' norms."""
        super().__init__(len(train_sizes))
        self.train_sizes, self.test_sizes = [int(n) for n in train_sizes], [int(n) for n in test_sizes]
        self.decoder, self.reply_tensors, self.accept_state = decoder, dict(reply_tensors), accept_state
        self.max_update_norm = max_update_norm
        self.bounds: dict[int, float] = {}  # version -> the largest update norm a task of it may bring

    def published(self, version: int, params: Tensor) -> None:
        """The global parameters of `version`, which the updates of its tasks apply to."""
        self.bounds[version] = SERVER_SLACK * update_bound(self.max_update_norm, l2_norm(params))

    def upload_limit(self) -> int:
        tensors = sum(spec.nbytes for spec in self.reply_tensors.values())
        state = STATE_BYTES_PER_PARAM * self.decoder.num_params if self.accept_state else 0
        return self.decoder.max_payload_bytes() + tensors + state

    def admit(self, result: Result) -> Result:
        self.check_client(result.client_id)
        if result.kind == TRAIN:
            update, decoder_state = self._check_training(result)
        elif result.kind == DIVERGED:
            self._check_diverged(result)
            update, decoder_state = None, None
        elif result.kind == EVALUATE:
            self._check_evaluation(result)
            update, decoder_state = None, None
        else:
            raise ValueError(f"unknown result kind {result.kind!r}")
        _check_state(result.state, self.accept_state)
        if decoder_state is not None:  # the last step: nothing below can refuse the result
            self.decoder.stage(result.client_id, decoder_state)
        return dataclasses.replace(result, update=update)

    def forget(self, client_id: int) -> None:
        self.decoder.forget(client_id)

    def _check_training(self, result: Result) -> tuple[Tensor, dict[str, Tensor]]:
        _check_samples(result, self.train_sizes[result.client_id], "training")
        _check_metrics(result.metrics, TRAIN_METRICS)
        if result.metrics["steps"] < 0 or result.metrics["lr"] < 0:
            raise ValueError(f"metrics steps and lr must be >= 0, got {result.metrics}")
        _check_tensors(result.tensors, self.reply_tensors)
        if not isinstance(result.update, Payload):
            raise ValueError("a training result must carry an encoded update")
        update, state = self.decoder.decode(result.client_id, result.update)
        bound, norm = self.bounds.get(result.version, math.inf), l2_norm(update)
        if norm > bound:
            raise ValuesRefused(f"update norm {norm:.4g} exceeds the bound {bound:.4g} (security.max_update_norm "
                                f"{self.max_update_norm:g} times the norm of version {result.version}, at least 1)")
        return update, state

    def _check_diverged(self, result: Result) -> None:
        """A client reports that its own training diverged: its sample count and nothing else."""
        _check_samples(result, self.train_sizes[result.client_id], "training")
        if result.metrics or result.update is not None or result.tensors or result.state:
            raise ValueError("a diverged report carries no metrics, update, tensors or state")

    def _check_evaluation(self, result: Result) -> None:
        _check_samples(result, self.test_sizes[result.client_id], "test")
        _check_metrics(result.metrics, EVALUATE_METRICS)
        if not 0 <= result.metrics["correct"] <= result.num_samples or result.metrics["loss_sum"] < 0:
            raise ValueError(f"evaluation counts out of range: {result.metrics} for {result.num_samples} samples")
        if result.update is not None or result.tensors:
            raise ValueError("an evaluation result carries no update and no tensors")


def _check_samples(result: Result, size: int, split: str) -> None:
    if result.num_samples != size:  # training sets hold at least one sample, so zero is refused there
        raise ValueError(f"num_samples = {result.num_samples}, but client {result.client_id} has {size} {split} "
                         f"samples")


def _check_metrics(metrics: Mapping[str, float], expected: frozenset[str]) -> None:
    if metrics.keys() != expected:
        raise ValueError(f"metrics must be exactly {sorted(expected)}, got {sorted(metrics)}")
    bad = {key: value for key, value in metrics.items() if not math.isfinite(value)}
    if bad:
        raise ValuesRefused(f"metrics hold NaN or Inf: {bad}")


def _check_tensors(tensors: Mapping[str, Tensor], expected: Mapping[str, TensorSpec]) -> None:
    if tensors.keys() != expected.keys():
        raise ValueError(f"the strategy expects the tensors {sorted(expected)}, got {sorted(tensors)}")
    for name, tensor in tensors.items():
        spec = expected[name]
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise ValueError(f"tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, expected {spec.shape} "
                             f"{spec.dtype}")
        _check_finite(name, tensor)


def _check_state(state: Mapping[str, Tensor], accepted: bool) -> None:
    if state and not accepted:
        raise ValueError("a deployed client keeps its own state: a result may not carry any")
    for name, tensor in state.items():
        _check_finite(f"state {name}", tensor)


def _check_finite(name: str, tensor: Tensor) -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ValuesRefused(f"tensor {name!r} has NaN or Inf values")

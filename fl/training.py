"""Local training of one client on a resident model: no DataLoader, no per-sample Python in the hot loop."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fl.params import FlatModule, ParamSpec
from strategies.base import ClientHook

OPTIMIZERS = ("sgd", "adam", "adamw")
UPDATE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TrainConfig:
    """How a client trains; a strategy may override any field per client and round."""

    epochs: int = 1
    steps: int = 0  # when > 0: exactly this many steps, cycling through epochs, instead of `epochs`
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    update_dtype: str = "float32"  # "float64" carries updates losslessly (local - global is exact in float64)

    def with_overrides(self, overrides: dict[str, Any]) -> "TrainConfig":
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown client setting {unknown[0]!r}; allowed: {', '.join(sorted(fields))}")
        return dataclasses.replace(self, **overrides) if overrides else self


def seed_everywhere(seed: int) -> None:
    """`torch.manual_seed(seed)` without its cost on a CPU-only build (it queues lazy seeding of every accelerator
    backend, formatting a stack trace each time): the CPU generator, and CUDA's when there is CUDA."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def make_optimizer(config: TrainConfig, parameter: nn.Parameter) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD([parameter], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam([parameter], lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW([parameter], lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")


def samples_processed(num_samples: int, config: TrainConfig) -> int:
    """How many samples local training visits (what `batch_indices` yields, counted without drawing it)."""
    if config.steps <= 0:
        return config.epochs * num_samples
    per_epoch = -(-num_samples // config.batch_size)
    return (config.steps // per_epoch) * num_samples + (config.steps % per_epoch) * config.batch_size


def batch_indices(num_samples: int, config: TrainConfig, generator: torch.Generator, device: torch.device) -> Iterator[Tensor]:
    """Mini-batches of a fresh permutation each epoch; `config.steps` > 0 takes exactly that many batches."""
    steps_left = config.steps if config.steps > 0 else None
    epochs_left = config.epochs
    while (steps_left is None and epochs_left > 0) or (steps_left is not None and steps_left > 0):
        order = torch.randperm(num_samples, generator=generator, device=device)
        for start in range(0, num_samples, config.batch_size):
            if steps_left is not None:
                if steps_left == 0:
                    return
                steps_left -= 1
            yield order[start : start + config.batch_size]
        epochs_left -= 1


@dataclass
class TrainOutcome:
    update: Tensor  # local - global, full flat length, in the configured update dtype
    loss: float  # mean training loss over the local steps
    steps: int
    hook_state: dict[str, Tensor]
    hook_tensors: dict[str, Tensor]


class LocalTrainer:
    """One resident model; trains any client's data starting from given global parameters."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self.model = model.to(device)
        self.spec = ParamSpec.from_module(self.model)
        self.flat = FlatModule(self.model, self.spec)

    def train(
        self, global_params: Tensor, x: Tensor, y: Tensor, config: TrainConfig, seed: int, hook: ClientHook
    ) -> TrainOutcome:
        global_params = global_params.to(self.device)
        self.flat.load(global_params)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        seed_everywhere(seed)  # model-internal randomness such as dropout
        optimizer = make_optimizer(config, self.flat.parameter)
        self.model.train()
        loss_sum, steps = torch.zeros((), device=self.device), 0
        for index in batch_indices(len(y), config, generator, self.device):
            loss = self._gradient(x[index], y[index])
            shift = hook.perturbation(self.flat.parameter.data, self.flat.grad)
            if shift is not None:  # SAM: the gradient at the perturbed point, on the same batch
                point = self.flat.parameter.data.clone()
                self.flat.parameter.data.add_(shift)
                self._gradient(x[index], y[index])
                self.flat.parameter.data.copy_(point)
            hook.on_gradient(self.flat.parameter.data, self.flat.grad)
            optimizer.step()
            loss_sum += loss.detach()
            steps += 1
        finished = hook.on_finish(self.flat.parameter.data, steps, config.lr)
        dtype = UPDATE_DTYPES[config.update_dtype]
        update = self.flat.flatten().to(dtype) - global_params.to(dtype)
        return TrainOutcome(update.cpu(), float(loss_sum) / max(steps, 1), steps, finished.state, finished.tensors)

    def _gradient(self, x: Tensor, y: Tensor) -> Tensor:
        """The mini-batch loss; its gradient lands in the flat gradient buffer."""
        self.flat.grad.zero_()
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        return loss


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096) -> tuple[float, int, int]:
    """(summed cross-entropy loss, correct predictions, samples) of `model` on (x, y)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return loss_sum, correct, len(y)

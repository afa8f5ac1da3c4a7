"""Local SGD of many nodes at once: one vmapped forward and backward per step over [nodes, batch].

Each node draws its mini-batches from its own seeded generator exactly as `LocalTrainer` does; batches of unequal
size (a node's last batch of an epoch) are padded and masked, so every node's gradient is the one of its own batch.
Plain SGD (optionally with weight decay) on models without buffers; anything else trains node by node.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fl.params import ParamSpec
from fl.training import TrainConfig, batch_indices


def batchable(model: nn.Module, config: TrainConfig) -> str | None:
    """Why `BatchedTrainer` cannot train this model with this config (None: it can)."""
    if list(model.buffers()):
        return "the model has buffers (e.g. BatchNorm statistics)"
    if config.steps <= 0:
        return "nodes of different sizes take different numbers of epoch steps (set client.steps)"
    if config.optimizer != "sgd" or config.momentum:
        return f"only plain SGD is batched (optimizer {config.optimizer!r}, momentum {config.momentum})"
    return None


class BatchedTrainer:
    """Trains every node's copy of one model from its own flat parameters, all nodes per step at once."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model.to(device), device
        self.spec = ParamSpec.from_module(model)

    def train(self, starts: Tensor, shards: Sequence[tuple[Tensor, Tensor]], config: TrainConfig,
              seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(updates [nodes, params], mean training loss per node) after local SGD from `starts`."""
        params = starts.to(self.device, torch.float32).clone()
        batches = [batch_indices(len(y), config, torch.Generator(device=self.device).manual_seed(seed), self.device)
                   for (_, y), seed in zip(shards, seeds)]
        step = vmap(grad(self._loss, has_aux=True))
        loss_sum, steps = torch.zeros(len(shards), device=self.device), 0
        while True:
            drawn = [next(iterator, None) for iterator in batches]
            if all(index is None for index in drawn):
                break
            x, y, mask = self._stack(shards, drawn)
            grads, losses = step(params, x, y, mask)
            if config.weight_decay:
                grads = grads + config.weight_decay * params
            params -= config.lr * grads
            loss_sum += losses
            steps += 1
        return (params - starts.to(self.device, torch.float32)).cpu(), (loss_sum / max(steps, 1)).cpu()

    def _loss(self, flat: Tensor, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        tensors = {e.name: flat[e.offset : e.end].view(e.shape) for e in self.spec.entries}
        losses = F.cross_entropy(functional_call(self.model, tensors, (x,)), y, reduction="none")
        loss = (losses * mask).sum() / mask.sum()
        return loss, loss.detach()

    def _stack(self, shards: Sequence[tuple[Tensor, Tensor]], drawn: list[Tensor | None]
               ) -> tuple[Tensor, Tensor, Tensor]:
        """Every node's batch padded to the largest; the mask marks the real samples."""
        if any(index is None for index in drawn):
            raise ValueError("batched nodes must take the same number of steps (set client.steps)")
        size = max(len(index) for index in drawn)
        xs, ys, masks = [], [], []
        for (x, y), index in zip(shards, drawn):
            pad = size - len(index)
            padded = torch.cat([index, index[:1].repeat(pad)]) if pad else index
            xs.append(x[padded])
            ys.append(y[padded])
            masks.append(torch.cat([torch.ones(len(index)), torch.zeros(pad)]).to(self.device))
        return torch.stack(xs), torch.stack(ys), torch.stack(masks)


@torch.no_grad()
def accuracies(model: nn.Module, params: Tensor, x: Tensor, y: Tensor, chunk: int = 32) -> Tensor:
    """Test accuracy of every row of `params` ([models, params]) as `model`'s parameters, `chunk` models at once."""
    spec = ParamSpec.from_module(model)
    model.eval()

    def correct(flat: Tensor) -> Tensor:
        tensors = {e.name: flat[e.offset : e.end].view(e.shape) for e in spec.entries}
        return (functional_call(model, tensors, (x,)).argmax(dim=1) == y).sum()

    counts = [vmap(correct)(params[start : start + chunk].to(x.device)) for start in range(0, len(params), chunk)]
    return torch.cat(counts).double().cpu() / max(len(y), 1)

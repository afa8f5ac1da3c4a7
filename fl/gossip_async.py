"""Asynchronous gossip on the virtual clock: every node wakes by its device profile, adds its local update, sends its
model to one random neighbour (who merges it at once), and starts again.

Node i's n-th task starts from a snapshot of its model, takes the time the cost model gives (its compute speed and
bandwidth, the message as its upload), and may fail (dropout: the node starts again without sending). Its update is
added to the node's model as it is when the node wakes, so merges received meanwhile are kept. The neighbour is drawn
from (seed, ASYNC_GOSSIP, node, n); events are ordered as in every run on the clock, so results never depend on
thread timing. One metrics row covers `num_nodes` wake-ups.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fl.clock import ARRIVE, DROP, EventQueue
from fl.gossip import check_training
from fl.gossip_sim import GossipRun, GossipSetup
from fl.seeding import ASYNC_GOSSIP, DEVICES, TRAINING, derive_rng, derive_seed
from fl.timing import TaskTiming
from fl.training import LocalTrainer
from simulations.profiles import sample_profiles
from strategies.base import ClientHook, Instruction


class AsyncGossipRun(GossipRun):
    def __init__(self, setup: GossipSetup, devices: dict[str, str]) -> None:
        super().__init__(setup)
        profiles = sample_profiles(devices, self.num_nodes, derive_seed(setup.seed, DEVICES)) if devices else None
        message_bytes = self.spec.num_params * self.params.element_size()
        self.timing = TaskTiming(profiles, setup.seed, setup.data.train_sizes(), setup.train_config, message_bytes)
        self.queue = EventQueue()
        self.tasks = np.zeros(self.num_nodes, dtype=np.int64)
        self.snapshots: dict[int, torch.Tensor] = {}
        self.trainer = self.trainer or LocalTrainer(setup.model_fn(), torch.device("cpu"))
        self.neighbours = [[] for _ in range(self.num_nodes)]
        for sender, receiver in self.topology.edges(0):
            self.neighbours[sender].append(receiver)
        for node in range(self.num_nodes):
            self._start(node, 0.0)

    def _round(self, round: int) -> dict[str, Any]:
        """`num_nodes` wake-ups (or failures) on the clock."""
        losses, self._round_bytes, dropped = [], 0, 0
        for _ in range(self.num_nodes):
            event = self.queue.pop()
            if event.kind == DROP:
                dropped += 1
            else:
                losses.append(self._wake(round, event.client_id, event.time))
            self._start(event.client_id, event.time)
        if not torch.isfinite(self.params).all():
            raise FloatingPointError(f"round {round}: a node's model holds NaN or Inf (try a smaller learning rate)")
        metrics: dict[str, Any] = {
            "round": round, "clients": len(losses), "train_loss": float(np.mean(losses)) if losses else None,
            "bytes_up": self._round_bytes, "bytes_down": self._round_bytes,
            "consensus_distance": self.consensus_distance(), "virtual_time": self.queue.now, "dropped": dropped,
        }
        if round == 1:
            metrics["spectral_gap"] = self.spectral_gap
        return metrics

    def _start(self, node: int, now: float) -> None:
        """The node's next task: a snapshot of its model, and its wake-up (or failure) on the clock."""
        self.tasks[node] += 1
        attempt = self.timing.attempt(int(self.tasks[node]), Instruction(node), now)
        self.snapshots[node] = self.params[node].clone()
        if attempt.fails_at is None:
            self.queue.push(now + attempt.seconds, ARRIVE, node)
        else:
            self.queue.push(now + attempt.fails_at, DROP, node)

    def _wake(self, round: int, node: int, now: float) -> float:
        """Train from the snapshot, add the update (Diverged if the training diverged), send the model to one random
        neighbour, who merges it."""
        number = int(self.tasks[node])
        start = self.snapshots.pop(node)
        x, y = self.shards[node]
        seed = derive_seed(self.setup.seed, number, node, TRAINING)
        outcome = self.trainer.train(start, x, y, self.setup.train_config, seed, ClientHook())
        check_training(round, node, outcome.loss, outcome.update, start, self.setup.max_update_norm)
        model = (self.params[node].double() + outcome.update.double()).to(self.params.dtype)
        self.params[node] = model
        neighbours = sorted(self.neighbours[node])
        if neighbours:
            peer = neighbours[int(derive_rng(self.setup.seed, ASYNC_GOSSIP, node, number).integers(len(neighbours)))]
            own = self.params[peer]
            self.params[peer] = self.strategy.combine(peer, 0, own, own, model, self.states[peer])
            size = model.numel() * model.element_size()
            self.edge_bytes[(node, peer)] += size
            self._round_bytes += size
        return outcome.loss


def in_process_run(setup: GossipSetup, devices: dict[str, str]) -> GossipRun:
    """A decentralized run in this process: rounds of synchronous gossip, or asynchronous gossip on the clock (whose
    nodes wake by `devices`, the `[devices]` table)."""
    if getattr(type(setup.strategy), "asynchronous", False):
        return AsyncGossipRun(setup, devices)
    return GossipRun(setup)

"""Gossip strategies on hand-checkable quadratics: D-PSGD (both orders), DFedSAM(-MGS), push-sum, CHOCO-SGD and
variance-corrected averaging, run through the real `fl.gossip.gossip_round` by tests/strategies/gossip_driver.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from fl.gossip import gossip_round, inbox
from strategies.base import WeightedMean
from strategies.gossip.base import GossipStrategy, Layout, Network
from strategies.gossip.choco import ChocoConfig
from strategies.gossip.dfedsam import DFedSAMConfig, DFedSAMMGSConfig, SharpnessAware
from strategies.gossip.dpsgd import DPSGDConfig
from strategies.gossip.pushsum import PushSumConfig
from strategies.gossip.variance import VarianceCorrectedConfig
from tests.strategies.gossip_driver import as_mixing, run_gossip, spread

NAMES = {
    "dpsgd": DPSGDConfig(),
    "dfedsam": DFedSAMConfig(),
    "dfedsam_mgs": DFedSAMMGSConfig(),
    "pushsum": PushSumConfig(),
    "choco": ChocoConfig(),
    "variance_corrected": VarianceCorrectedConfig(),
}
DESCRIPTIONS = {"dpsgd": "D-PSGD: ", "dfedsam": "DFedSAM: ", "dfedsam_mgs": "DFedSAM-MGS: ", "pushsum": "Push-sum (SGP): ",
                "choco": "CHOCO-SGD: ", "variance_corrected": "Variance-corrected averaging: "}
# A 3-node path 0 - 1 - 2, symmetric and doubly stochastic, dyadic entries.
PATH = np.array([[0.75, 0.25, 0.0], [0.25, 0.5, 0.25], [0.0, 0.25, 0.75]])


def network(nodes: int, dim: int, layout: Layout | None = None) -> Network:
    layout = layout or Layout(("w",), (0,), (dim,), (True,))
    return Network(nodes, dim, sum(s for s, t in zip(layout.sizes, layout.trainable) if t), layout, torch.float64)


def ring(nodes: int) -> np.ndarray:
    """BlueFog's RingGraph: 1/3 to itself and to each side."""
    w = np.zeros((nodes, nodes))
    for i in range(nodes):
        w[i, i] = w[i, (i + 1) % nodes] = w[i, (i - 1) % nodes] = 1 / 3
    return w


def column(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_each_config_builds_a_gossip_strategy_with_a_description(name: str) -> None:
    strategy = NAMES[name].build(network(4, 3))
    assert isinstance(strategy, GossipStrategy)
    assert (type(NAMES[name]).__doc__ or "").startswith(DESCRIPTIONS[name])


def test_the_registry_holds_every_gossip_strategy() -> None:
    # Fails until the registry owner adds the entries (strategies/registry.py is not edited here).
    from strategies.registry import STRATEGIES

    assert {name: STRATEGIES.get(name) for name in NAMES} == {name: type(c) for name, c in NAMES.items()}


@pytest.mark.parametrize("order, expected", [("atc", [2.0, 2.5, 3.5]), ("consensus", [1.0, 5.0, 2.0])])
def test_dpsgd_orders_on_a_path(order: str, expected: list[float]) -> None:
    # Prepare: x = [4, 0, 8], c = [0, 4, 0]; one GD step at lr 1/2 gives Delta = [-2, 2, -4], x_half = [2, 2, 4].
    # ATC: W x_half = [2, 2.5, 3.5]. Consensus: W x + Delta = [3, 3, 6] + [-2, 2, -4] = [1, 5, 2].
    strategy = DPSGDConfig(order=order).build(network(3, 1))
    # Execute
    run = run_gossip(strategy, column([4, 0, 8]), column([0, 4, 0]), PATH, rounds=1, steps=1, lr=0.5)
    # Assert
    assert torch.equal(run.params[1], column(expected))


def test_dpsgd_atc_on_the_complete_graph_is_fedavg_with_full_participation() -> None:
    # Prepare: every node at x = [1, 2]; two GD steps at lr 1/2 give Delta_i = -(3/4)(x - c_i) (dyadic):
    # x - c_i = [-4, 0], [0, 4], [4, -4], [8, 12], mean [2, 3], so x + mean(Delta) = [1, 2] - [1.5, 2.25].
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    centers = torch.tensor([[5.0, 2.0], [1.0, -2.0], [-3.0, 6.0], [-7.0, -10.0]], dtype=torch.float64)
    fedavg = WeightedMean()
    for delta in -0.75 * (x - centers):
        fedavg.add(delta)
    strategy = DPSGDConfig(order="atc").build(network(4, 2))
    # Execute
    run = run_gossip(strategy, x.repeat(4, 1), centers, np.full((4, 4), 0.25), rounds=1, steps=2, lr=0.5)
    # Assert: every node holds FedAvg's new global model
    assert torch.equal(run.params[1], torch.tensor([[-0.5, -0.25]] * 4, dtype=torch.float64))
    assert torch.equal(run.params[1][0], x + fedavg.result())


def test_dpsgd_consensus_on_the_complete_graph_mixes_the_update_one_round_later() -> None:
    # Prepare: as above; X <- W X + Delta: W X = X for equal nodes, so each node keeps its own update this round
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    centers = torch.tensor([[5.0, 2.0], [1.0, -2.0], [-3.0, 6.0], [-7.0, -10.0]], dtype=torch.float64)
    strategy = DPSGDConfig(order="consensus").build(network(4, 2))
    # Execute
    run = run_gossip(strategy, x.repeat(4, 1), centers, np.full((4, 4), 0.25), rounds=1, steps=2, lr=0.5)
    # Assert: x + Delta_i, whose mean is FedAvg's model
    assert torch.equal(run.params[1], x + -0.75 * (x - centers))
    assert torch.equal(run.params[1].mean(0), torch.tensor([-0.5, -0.25], dtype=torch.float64))


def test_dfedsam_with_rho_zero_is_dpsgd_bit_for_bit() -> None:
    x0, centers = randn(5, 3, seed=1), randn(5, 3, seed=2)
    sam = run_gossip(DFedSAMConfig(rho=0.0).build(network(5, 3)), x0, centers, ring(5), rounds=4, steps=3, lr=0.1)
    dpsgd = run_gossip(DPSGDConfig().build(network(5, 3)), x0, centers, ring(5), rounds=4, steps=3, lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(sam.params, dpsgd.params))


def test_q_gossip_steps_mix_with_w_to_the_q() -> None:
    # Prepare: pure gossip, 2 rounds of Q = 4 steps: x_2 = W^8 x_0
    x0, w = randn(5, 3, seed=3), ring(5)
    strategy = DFedSAMMGSConfig(gossip_steps=4).build(network(5, 3))
    # Execute
    run = run_gossip(strategy, x0, x0, w, rounds=2, steps=0)
    # Assert
    expected = torch.from_numpy(np.linalg.matrix_power(w, 8)) @ x0
    assert torch.allclose(run.params[2], expected, rtol=0, atol=1e-12)


def test_sam_perturbation_has_radius_rho_along_the_gradient() -> None:
    # Prepare: g = [3, 4], ||g|| = 5, rho = 0.1 -> eps = [0.06, 0.08]
    grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    hook = SharpnessAware(0.1).start(torch.zeros(2), {}, {})
    # Execute
    eps = hook.perturbation(torch.zeros(2, dtype=torch.float64), grad)
    # Assert
    assert torch.allclose(eps, torch.tensor([0.06, 0.08], dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.equal(grad, torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert SharpnessAware(0.0).start(grad, {}, {}).perturbation(grad, grad) is None
    assert torch.equal(hook.perturbation(grad, torch.zeros(2)), torch.zeros(2))


def test_driver_steps_with_the_gradient_at_the_perturbed_point() -> None:
    # Prepare: x = 3, c = 0, rho = 1/2: g = 3, eps = 1/2, g(x + eps) = 3.5; lr 1/4 -> 3 - 0.875 = 2.125 (not 2.25)
    strategy = DFedSAMConfig(rho=0.5).build(network(1, 1))
    # Execute
    run = run_gossip(strategy, column([3.0]), column([0.0]), np.eye(1), rounds=1, steps=1, lr=0.25)
    # Assert
    assert run.params[1].item() == 2.125


# A directed ring 0 -> 1 -> 2 -> 3 -> 0: node j keeps a_j and pushes 1 - a_j on. Columns sum to 1, rows do not.
KEEP = [0.5, 0.25, 0.75, 0.5]
DIRECTED = np.diag(KEEP) + np.roll(np.diag([1 - a for a in KEEP]), 1, axis=0)


def test_pushsum_on_a_directed_ring_reaches_the_average() -> None:
    # Prepare
    x0 = column([4.0, -2.0, 6.0, 0.0])  # average 2
    strategy = PushSumConfig().build(network(4, 1))
    # Execute
    run = run_gossip(strategy, x0, x0, DIRECTED, rounds=200, steps=0)
    models = torch.stack([strategy.debias(i, run.params[-1][i], run.states[i]) for i in range(4)])
    plain = run_gossip(DPSGDConfig().build(network(4, 1)), x0, x0, DIRECTED, rounds=200, steps=0)
    # Assert: push-sum's de-biased models agree on the average; plain row-wise mixing settles elsewhere
    assert strategy.mixing == "column" and strategy.message(0, 0, x0[0], x0[0], run.states[0]).shape == (2,)
    assert np.allclose(DIRECTED.sum(0), 1) and not np.allclose(DIRECTED.sum(1), 1)
    assert torch.allclose(models, torch.full((4, 1), 2.0, dtype=torch.float64), rtol=0, atol=1e-9)
    assert (plain.params[-1] - 2.0).abs().max() > 0.1


def test_pushsum_with_doubly_stochastic_mixing_keeps_weight_one_and_is_dpsgd_atc() -> None:
    x0, centers = randn(5, 3, seed=4), randn(5, 3, seed=5)
    push = run_gossip(PushSumConfig().build(network(5, 3)), x0, centers, ring(5), rounds=3, steps=2, lr=0.25)
    atc = run_gossip(DPSGDConfig().build(network(5, 3)), x0, centers, ring(5), rounds=3, steps=2, lr=0.25)
    assert all(torch.equal(state["weight"], torch.ones(1, dtype=torch.float64)) for state in push.states)
    assert all(torch.equal(a, b) for a, b in zip(push.params, atc.params))


def test_choco_with_identity_and_gamma_one_is_exact_gossip() -> None:
    # Prepare: dyadic W, values and lr, so that every sum is exact
    x0, centers = column([4.0, 0.0, 8.0]), column([0.0, 4.0, 0.0])
    choco = ChocoConfig(gamma=1.0).build(network(3, 1))
    # Execute
    run = run_gossip(choco, x0, centers, PATH, rounds=4, steps=1, lr=0.5)
    exact = run_gossip(DPSGDConfig().build(network(3, 1)), x0, centers, PATH, rounds=4, steps=1, lr=0.5)
    # Assert
    assert all(torch.equal(a, b) for a, b in zip(run.params, exact.params))


class TopK:
    """Keeps the k largest entries in magnitude (values and int32 indices on the wire)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def compress(self, tensor: Tensor, node: int, round: int) -> tuple[Tensor, int]:
        index = tensor.abs().topk(self.k).indices
        out = torch.zeros_like(tensor)
        out[index] = tensor[index]
        return out, 8 * self.k


def test_choco_with_top_k_reaches_consensus_at_the_average() -> None:
    # Prepare: 3 of 10 entries per message on a 5-node ring, pure gossip
    x0 = randn(5, 10, seed=6)
    strategy = ChocoConfig(gamma=0.3).build(network(5, 10), compressor=TopK(3))
    # Execute
    run = run_gossip(strategy, x0, x0, ring(5), rounds=150, steps=0)
    # Assert: the spread shrinks and the average is kept (W doubly stochastic)
    assert spread(run.params[0]) > 1 and spread(run.params[-1]) < 1e-6
    assert torch.allclose(run.params[-1].mean(0), x0.mean(0), rtol=0, atol=1e-12)


# Variance correction: a 2-element weight, a 1-element bias and a 3-element buffer.
LAYOUT = Layout(("w", "b", "running_mean"), (0, 2, 3), (2, 1, 3), (True, True, False))


def combine_all(strategy: GossipStrategy, messages: Tensor, w: np.ndarray) -> Tensor:
    """Every node's combine over W, with the inbox (what `gossip_round` does in one step)."""
    weights = as_mixing(w)(0, 0)
    mixed = torch.from_numpy(w) @ messages
    return torch.stack([strategy.combine(i, 0, messages[i], messages[i], mixed[i], {}, inbox(weights, messages, i))
                        for i in range(len(messages))])


def test_variance_correction_by_hand() -> None:
    # Prepare: node 0 receives w = [0, 2] (Var 1) and [-2, 2] (Var 4): target 2.5. With c = 0 the average is [-1, 2]
    # (mean 0.5, Var 2.25), rescaled about its mean by sqrt(2.5 / 2.25) = sqrt(10) / 3. b and the buffer: averages.
    messages = torch.tensor([[1.0, 1.0, 7.0, 1.0, 1.0, 1.0], [0.0, 2.0, 2.0, 0.0, 2.0, 4.0],
                             [-2.0, 2.0, 4.0, 2.0, 4.0, 6.0]], dtype=torch.float64)
    strategy = VarianceCorrectedConfig(conservative=0.0, eps=0.0).build(network(3, 6, LAYOUT))
    # Execute
    out = combine_all(strategy, messages, np.full((3, 3), 1 / 3))[0]
    # Assert
    scale = 10**0.5 / 3
    expected = torch.tensor([0.5 - 1.5 * scale, 0.5 + 1.5 * scale, 3.0, 1.0, 3.0, 5.0], dtype=torch.float64)
    assert torch.allclose(out, expected, rtol=0, atol=1e-14)
    assert torch.equal(out[2:], expected[2:])
    assert abs(float(out[:2].var(correction=0)) - 2.5) < 1e-14


@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_variance_correction_keeps_the_mean_and_sets_the_reference_variance(eps: float) -> None:
    # Prepare: 4 nodes on a ring, c = 1/2; node i receives from i - 1 and i + 1
    layout = Layout(("w", "b", "running_mean"), (0, 8, 9), (8, 1, 3), (True, True, False))
    messages = randn(4, 12, seed=7)
    strategy = VarianceCorrectedConfig(conservative=0.5, eps=eps).build(network(4, 12, layout))
    # Execute
    out = combine_all(strategy, messages, ring(4))
    # Assert
    for i in range(4):
        received = messages[[(i - 1) % 4, (i + 1) % 4]]
        plain = 0.5 * messages[i] + 0.5 * received.mean(0)
        target = float(received[:, :8].var(dim=1, correction=0).mean())
        var = float(plain[:8].var(correction=0))
        assert abs(float(out[i, :8].mean() - plain[:8].mean())) < 1e-14
        # Var(out) = var (target + eps) / (var + eps) = target + eps (var - target) / (var + eps): target at eps = 0
        assert abs(float(out[i, :8].var(correction=0)) - var * (target + eps) / (var + eps)) < 1e-13
        assert torch.allclose(out[i, 8:], plain[8:], rtol=0, atol=1e-15)  # bias and buffer: only averaged


def test_variance_correction_without_neighbours_keeps_the_model() -> None:
    messages = randn(2, 6, seed=8)
    out = combine_all(VarianceCorrectedConfig().build(network(2, 6, LAYOUT)), messages, np.eye(2))
    assert torch.equal(out, messages)


def test_unknown_dpsgd_order_is_refused() -> None:
    with pytest.raises(ValueError, match="order must be one of atc, consensus, got 'awc'"):
        DPSGDConfig(order="awc").build(network(2, 1))


@pytest.mark.parametrize("name", sorted(NAMES))
def test_no_strategy_changes_the_tensors_it_is_given(name: str) -> None:
    # Prepare: one round's calls by hand on a 4-node ring, keeping copies of every input
    strategy = NAMES[name].build(network(4, 3, Layout(("w",), (0,), (3,), (True,))))
    before, trained = randn(4, 3, seed=9), randn(4, 3, seed=10)
    states = [strategy.initial_state(i, before[i]) for i in range(4)]
    kept = before.clone(), trained.clone()
    weights = as_mixing(ring(4))(0, 0)
    # Execute
    starts = [strategy.train_from(i, before[i], states[i]) for i in range(4)]
    messages = torch.stack([strategy.message(i, 0, before[i], trained[i], states[i]) for i in range(4)])
    mixed = torch.from_numpy(ring(4)) @ messages
    sent = messages.clone(), mixed.clone()
    out = [strategy.combine(i, 0, before[i], trained[i], mixed[i], states[i],
                            inbox(weights, messages, i) if strategy.needs_inbox else None) for i in range(4)]
    gossip_round(strategy, 1, before, trained, lambda round, step: weights, states)
    # Assert
    assert torch.equal(before, kept[0]) and torch.equal(trained, kept[1])
    assert torch.equal(messages, sent[0]) and torch.equal(mixed, sent[1])
    assert all(s.shape == (3,) and o.shape == (3,) for s, o in zip(starts, out))

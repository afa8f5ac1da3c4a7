"""Server optimizers equal the plain torch optimizer on the same pseudo-gradients; Yogi equals its formula."""

import numpy as np
import pytest
import torch

from strategies.base import Federation, Reply
from strategies.registry import strategy_config
from strategies.yogi import Yogi

FED = Federation(num_clients=4, per_round=2, num_params=3, num_trainable=3)
# Two replies per round with weights 1 and 3; updates chosen so the weighted mean is exact in float64.
ROUNDS = [
    ([0.5, -1.0, 2.0], [1.5, 1.0, -2.0]),
    ([-0.25, 4.0, 0.0], [0.75, -4.0, 1.0]),
    ([2.0, 2.0, -0.5], [2.0, -2.0, 0.5]),
]


def replies(first: list[float], second: list[float]) -> list[Reply]:
    metrics = {"loss": 0.0, "steps": 1, "lr": 0.1}
    return [
        Reply(0, torch.tensor(first, dtype=torch.float64), 1, metrics),
        Reply(1, torch.tensor(second, dtype=torch.float64), 3, metrics),
    ]


def reference(make_optimizer) -> list[torch.Tensor]:
    """The plain torch optimizer stepped on -(weighted mean update), round by round."""
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    optimizer, out = make_optimizer([param]), []
    for first, second in ROUNDS:
        mean = (torch.tensor(first, dtype=torch.float64) + 3 * torch.tensor(second, dtype=torch.float64)) / 4
        param.grad = -mean
        optimizer.step()
        out.append(param.detach().clone())
    return out


def run_strategy(name: str, options: dict) -> list[torch.Tensor]:
    strategy = strategy_config(name, options).build(FED)
    global_params, out = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), []
    for round, (first, second) in enumerate(ROUNDS):
        global_params, _ = strategy.aggregate(round, global_params, replies(first, second))
        out.append(global_params)
    return out


@pytest.mark.parametrize(
    "name, options, make_optimizer",
    [
        ("fedavgm", {"server_lr": 0.5, "momentum": 0.9}, lambda ps: torch.optim.SGD(ps, lr=0.5, momentum=0.9)),
        (
            "fedadam",
            {"server_lr": 0.1, "beta1": 0.8, "beta2": 0.95, "eps": 1e-3},
            lambda ps: torch.optim.Adam(ps, lr=0.1, betas=(0.8, 0.95), eps=1e-3),
        ),
        ("fedadagrad", {"server_lr": 0.3, "eps": 1e-2}, lambda ps: torch.optim.Adagrad(ps, lr=0.3, eps=1e-2)),
        ("fedyogi", {"server_lr": 0.2}, lambda ps: Yogi(ps, lr=0.2)),
    ],
)
def test_server_step_equals_plain_torch_optimizer(name, options, make_optimizer) -> None:
    # Execute
    got, expected = run_strategy(name, options), reference(make_optimizer)
    # Assert: bit for bit over 3 rounds, so the optimizer state carried over
    for got_round, expected_round in zip(got, expected):
        assert torch.equal(got_round, expected_round)
    assert not torch.equal(got[2], reference(lambda ps: torch.optim.SGD(ps, lr=1.0))[2])


def test_buffers_take_the_plain_mean_and_dtype_is_kept() -> None:
    # Prepare: 2 trainable entries and 1 buffer, float32 global
    fed = Federation(num_clients=2, per_round=2, num_params=3, num_trainable=2)
    strategy = strategy_config("fedadam", {"server_lr": 0.1}).build(fed)
    update = torch.tensor([1.0, -1.0, 0.25])
    # Execute
    new, _ = strategy.aggregate(0, torch.zeros(3), [Reply(0, update, 1, {"loss": 0.0, "steps": 1, "lr": 0.1})])
    # Assert: first Adam step moves each trainable entry by about lr along the update's sign
    assert new.dtype == torch.float32
    assert new[2].item() == 0.25
    assert torch.allclose(new[:2], torch.tensor([0.1, -0.1]), atol=1e-3)


def yogi_numpy(x, grads, lr, beta1, beta2, eps, v0):
    """Zaheer et al. / Reddi et al. Yogi, written out; no bias correction."""
    m, v = np.zeros_like(x), np.full_like(x, v0)
    for g in grads:
        m = beta1 * m + (1 - beta1) * g
        v = v - (1 - beta2) * g * g * np.sign(v - g * g)
        x = x - lr * m / (np.sqrt(v) + eps)
    return x


def test_yogi_matches_the_formula() -> None:
    # Prepare: gradients that make v both grow and shrink, and one entry with v - g^2 = 0 (sign 0)
    grads = [np.array([1.0, 0.001, -3.0, 0.0]), np.array([0.5, 0.0, 2.0, 1e-3]), np.array([-2.0, 0.1, 0.0, 0.0])]
    x0 = np.array([0.3, -0.7, 1.1, 2.0])
    param = torch.nn.Parameter(torch.tensor(x0))
    optimizer = Yogi([param], lr=0.05, betas=(0.9, 0.99), eps=1e-3, initial_accumulator=1e-6)
    # Execute
    for g in grads:
        param.grad = torch.tensor(g)
        optimizer.step()
    # Assert: allclose, not equal, because torch fuses multiply-adds that numpy rounds twice
    expected = yogi_numpy(x0, grads, 0.05, 0.9, 0.99, 1e-3, 1e-6)
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-12, atol=0)
    assert not np.allclose(expected, yogi_numpy(x0, grads, 0.05, 0.9, 0.999, 1e-3, 1e-6), rtol=1e-6, atol=0)


def test_yogi_rejects_bad_betas() -> None:
    with pytest.raises(ValueError, match="betas"):
        Yogi([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 1.0))

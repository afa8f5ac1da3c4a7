"""The registry: every strategy is tested, errors name the allowed values, strategies/ imports no runtime."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from strategies.asynchronous.base import AsyncStrategy
from strategies.base import Federation, SyncStrategy
from strategies.gossip.base import GossipStrategy, Layout, Network
from strategies.registry import STRATEGIES, describe, kind, register, strategy_config

TESTS = Path(__file__).parents[1]
STRATEGY_SOURCES = sorted((TESTS.parent / "strategies").rglob("*.py"))
FORBIDDEN_IMPORTS = {"fl", "ray", "transport", "simulations", "grpc", "google"}


def test_every_strategy_is_guarded_by_a_test() -> None:
    # Prepare: the text of every other test file
    texts = [p.read_text() for p in TESTS.rglob("test_*.py") if p.name != Path(__file__).name]
    # Execute
    untested = [name for name in STRATEGIES if not any(re.search(rf"[\"']{name}[\"']", t) for t in texts)]
    # Assert
    assert untested == []


NETWORK = Network(num_nodes=4, num_params=3, num_trainable=2,
                  layout=Layout(("w", "b"), (0, 2), (2, 1), (True, False)))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_config_has_defaults_a_description_and_builds(name: str) -> None:
    config = strategy_config(name, {})
    if kind(name) == "decentralized":
        assert isinstance(config.build(NETWORK), GossipStrategy)
    else:
        strategy = config.build(Federation(num_clients=4, per_round=2, num_params=3, num_trainable=2))
        assert isinstance(strategy, (SyncStrategy, AsyncStrategy))
        assert kind(name) == ("asynchronous" if isinstance(strategy, AsyncStrategy) else "synchronous")
    assert dataclasses.is_dataclass(config)
    assert describe(name) and "\n" not in describe(name)


def test_the_asynchronous_strategies_are_marked_as_such() -> None:
    assert {name for name in STRATEGIES if kind(name) == "asynchronous"} == {
        "fedasync", "fedbuff", "fedfix", "async_fedavg", "fedcompass", "afa_cd", "afa_cs"}
    assert {name for name in STRATEGIES if kind(name) == "decentralized"} == {
        "dpsgd", "dfedsam", "dfedsam_mgs", "pushsum", "choco", "variance_corrected", "async_gossip"}


def test_unknown_strategy_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown strategy 'fedsgd'; allowed: .*diloco, dpsgd, fedadagrad") as err:
        strategy_config("fedsgd", {})
    assert "\n" not in str(err.value)


def test_unknown_option_names_the_allowed_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown option 'lr' for strategy 'fedprox'; allowed: mu, server_lr"):
        strategy_config("fedprox", {"mu": 0.1, "lr": 0.1})


def test_options_override_defaults() -> None:
    assert strategy_config("fedavgm", {"momentum": 0.5}).momentum == 0.5


def test_register_adds_to_a_copy_and_refuses_duplicates() -> None:
    # Prepare
    registry = dict(STRATEGIES)

    @dataclasses.dataclass
    class PluginConfig:
        """Plug-in: a test strategy."""

        def build(self, federation: Federation) -> None:
            return None

    # Execute
    register("plugin", PluginConfig, registry)
    # Assert
    assert describe("plugin", registry) == "Plug-in: a test strategy."
    assert "plugin" not in STRATEGIES
    with pytest.raises(ValueError, match="already registered"):
        register("fedavg", PluginConfig, registry)


def test_strategies_import_no_runtime_or_transport() -> None:
    for path in STRATEGY_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN_IMPORTS, f"{path.name} imports {roots & FORBIDDEN_IMPORTS}"

"""The strategies by name, synchronous, asynchronous and decentralized: one explicit dict of config classes, no
import-time registration.

A config class is a dataclass with defaults, a docstring whose first line describes it, and `build(federation)`.
Plug-ins add theirs with `register` (to this dict or to a copy of it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from strategies.asynchronous.anarchic import AFACDConfig, AFACSConfig
from strategies.asynchronous.base import AsyncStrategy
from strategies.asynchronous.fedasync import FedAsyncConfig
from strategies.asynchronous.fedbuff import FedBuffConfig
from strategies.asynchronous.fedcompass import FedCompassConfig
from strategies.asynchronous.fedfix import AsyncFedAvgConfig, FedFixConfig
from strategies.base import Federation
from strategies.client_momentum import ClientMomentumConfig
from strategies.diloco import DiLoCoConfig
from strategies.fedau import FedAUConfig
from strategies.fedavg import FedAvgConfig
from strategies.fedopt import FedAdagradConfig, FedAdamConfig, FedAvgMConfig, FedYogiConfig
from strategies.fedprox import FedProxConfig
from strategies.gossip.async_gossip import AsyncGossipConfig
from strategies.gossip.choco import ChocoConfig
from strategies.gossip.dfedsam import DFedSAMConfig, DFedSAMMGSConfig
from strategies.gossip.dpsgd import DPSGDConfig
from strategies.gossip.pushsum import PushSumConfig
from strategies.gossip.variance import VarianceCorrectedConfig
from strategies.scaffold import ScaffoldConfig

STRATEGIES: dict[str, type] = {
    "fedavg": FedAvgConfig,
    "fedavgm": FedAvgMConfig,
    "fedadam": FedAdamConfig,
    "fedyogi": FedYogiConfig,
    "fedadagrad": FedAdagradConfig,
    "fedprox": FedProxConfig,
    "scaffold": ScaffoldConfig,
    "fedavg_client_momentum": ClientMomentumConfig,
    "fedau": FedAUConfig,
    "diloco": DiLoCoConfig,
    "fedasync": FedAsyncConfig,
    "fedbuff": FedBuffConfig,
    "fedfix": FedFixConfig,
    "async_fedavg": AsyncFedAvgConfig,
    "fedcompass": FedCompassConfig,
    "afa_cd": AFACDConfig,
    "afa_cs": AFACSConfig,
    "dpsgd": DPSGDConfig,
    "dfedsam": DFedSAMConfig,
    "dfedsam_mgs": DFedSAMMGSConfig,
    "pushsum": PushSumConfig,
    "choco": ChocoConfig,
    "variance_corrected": VarianceCorrectedConfig,
    "async_gossip": AsyncGossipConfig,
}


def register(name: str, config_cls: type, registry: dict[str, type] = STRATEGIES) -> None:
    """Add a strategy config class under a new name; raises ValueError if the name is taken."""
    if name in registry:
        raise ValueError(f"strategy {name!r} is already registered (as {registry[name].__name__})")
    if not dataclasses.is_dataclass(config_cls) or not callable(getattr(config_cls, "build", None)):
        raise TypeError(f"{config_cls!r} must be a dataclass with a build(federation) method")
    registry[name] = config_cls


def _lookup(name: str, registry: dict[str, type]) -> type:
    if name not in registry:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(registry))}")
    return registry[name]


def describe(name: str, registry: dict[str, type] = STRATEGIES) -> str:
    """The first line of the strategy config's docstring."""
    return (_lookup(name, registry).__doc__ or "").strip().partition("\n")[0]


def kind(name: str, registry: dict[str, type] = STRATEGIES) -> str:
    """"synchronous", "asynchronous" or "decentralized" (a gossip strategy's config is marked `decentralized`)."""
    config_cls = _lookup(name, registry)
    if getattr(config_cls, "decentralized", False):
        return "decentralized"
    strategy = config_cls().build(Federation(num_clients=4, per_round=2, num_params=2, num_trainable=2))
    return "asynchronous" if isinstance(strategy, AsyncStrategy) else "synchronous"


def strategy_config(name: str, options: dict[str, Any], registry: dict[str, type] = STRATEGIES) -> Any:
    """The config of strategy `name` with `options` overriding its defaults; unknown names and keys raise ValueError."""
    config_cls = _lookup(name, registry)
    allowed = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for strategy {name!r}; allowed: {', '.join(allowed)}")
    defaults = config_cls()
    return config_cls(**{key: _typed(name, key, value, getattr(defaults, key)) for key, value in options.items()})


def _typed(strategy: str, key: str, value: Any, default: Any) -> Any:
    """`value` as the type of the option's default (an int may stand for a float); ValueError otherwise."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if default is not None and type(value) is not type(default):
        raise ValueError(f"strategy {strategy!r} option {key!r} must be {type(default).__name__}, got {value!r}")
    return value

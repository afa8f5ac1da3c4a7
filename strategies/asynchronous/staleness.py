"""Staleness weights s(tau), tau = versions published since the client started (Xie et al. 2019; Nguyen et al. 2022).

    constant            s(tau) = 1
    polynomial:a=A      s(tau) = (1 + tau)^-A              (FedBuff's default 1/sqrt(1 + tau) is A = 0.5)
    hinge:a=A,b=B       s(tau) = 1 if tau <= B else 1 / (A (tau - B) + 1)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StalenessWeight:
    kind: str = "constant"
    a: float = 0.5
    b: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "polynomial", "hinge"):
            raise ValueError(f"unknown staleness function {self.kind!r}; allowed: constant, hinge, polynomial")
        if self.kind != "constant" and not self.a > 0:
            raise ValueError(f"staleness function {self.kind}: a must be > 0, got {self.a}")
        if self.kind == "hinge" and not self.b >= 0:
            raise ValueError(f"staleness function hinge: b must be >= 0, got {self.b}")

    def __call__(self, staleness: int) -> float:
        if staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        if self.kind == "polynomial":
            return float((1.0 + staleness) ** -self.a)
        if self.kind == "hinge" and staleness > self.b:
            return 1.0 / (self.a * (staleness - self.b) + 1.0)
        return 1.0


def parse_staleness(spec: str) -> StalenessWeight:
    """"constant", "polynomial:a=0.5" or "hinge:a=10,b=4"; ValueError naming the allowed forms otherwise."""
    kind, _, params = spec.partition(":")
    values: dict[str, float] = {}
    for item in filter(None, params.split(",")):
        key, sep, text = item.partition("=")
        if not sep or key not in ("a", "b"):
            raise ValueError(f"bad staleness parameter {item!r} in {spec!r}; expected a=NUMBER or b=NUMBER")
        try:
            values[key] = float(text)
        except ValueError:
            raise ValueError(f"staleness parameter {key} in {spec!r} is not a number") from None
    return StalenessWeight(kind.strip(), **values)


def staleness_limit(max_staleness: int) -> int | None:
    """A config's max_staleness as the runtime's limit: -1 means None (no limit); ValueError below -1."""
    if max_staleness < -1:
        raise ValueError(f"max_staleness must be >= 0, or -1 for no limit, got {max_staleness}")
    return None if max_staleness == -1 else max_staleness

"""A run directory: the resolved config, metrics.jsonl (one line per round) and the final model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fl.params import ParamSpec


def unique_dir(parent: Path, name: str) -> Path:
    """parent/name, or parent/name-2, -3, ... so that no earlier run is overwritten."""
    candidate, suffix = parent / name, 2
    while candidate.exists():
        candidate, suffix = parent / f"{name}-{suffix}", suffix + 1
    return candidate


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def to_toml(values: dict[str, Any]) -> str:
    """TOML for a dict of scalars and one level of tables (the shape of a RunConfig)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for key, table in values.items():
        if isinstance(table, dict):
            lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


class RunWriter:
    """Writes one run's files as the run goes, so an interrupted run keeps every finished round."""

    def __init__(self, parent: str | Path, name: str, config: dict[str, Any]) -> None:
        self.path = unique_dir(Path(parent), name)
        self.path.mkdir(parents=True)
        (self.path / "config.toml").write_text(to_toml(config))
        self._metrics = (self.path / "metrics.jsonl").open("a")

    def write_round(self, metrics: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(metrics) + "\n")
        self._metrics.flush()

    def write_model(self, spec: ParamSpec, global_params: Tensor) -> None:
        """model.pt: the flat vector and the names, shapes and offsets to unflatten it."""
        entries = [{"name": e.name, "shape": list(e.shape), "dtype": str(e.dtype), "offset": e.offset} for e in spec.entries]
        torch.save({"params": global_params.clone(), "entries": entries}, self.path / "model.pt")

    def write_events(self, events: list[tuple[int, float, str, int]]) -> None:
        """events.jsonl: the virtual clock's events, one line each: round, time (s), kind, client."""
        lines = [json.dumps({"round": r, "time": t, "kind": kind, "client": c}) for r, t, kind, c in events]
        (self.path / "events.jsonl").write_text("".join(line + "\n" for line in lines))

    def write_json(self, name: str, values: dict[str, Any]) -> None:
        (self.path / name).write_text(json.dumps(values) + "\n")

    def write_staleness(self, counts: dict[int, int]) -> None:
        """staleness.json (applied updates per staleness) and staleness.png, its histogram."""
        (self.path / "staleness.json").write_text(json.dumps({str(k): v for k, v in counts.items()}) + "\n")
        from fl.plot import plot_staleness

        plot_staleness(counts, self.path / "staleness.png")

    def close(self) -> None:
        self._metrics.close()


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no metrics at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

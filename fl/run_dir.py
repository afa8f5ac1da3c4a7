"""A run directory: the resolved config, metrics.jsonl (one line per round) and the final model.

Every JSON file is strict JSON: a value that is not a finite number (NaN, Infinity: a diverging run) is written as
null, and a metrics row that had any names them under NON_FINITE.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fl.params import ParamSpec

NON_FINITE = "non_finite"  # a metrics row's key: the fields written as null because they were NaN or infinite


def finite_or_null(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """`value` with every NaN or infinite float, in nested dicts and lists too, replaced by None; and the paths of
    the replaced ones ("test_loss", "bytes_by_client.3.0")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [path]
    if isinstance(value, dict):
        items = [(key, *finite_or_null(item, f"{path}.{key}" if path else str(key))) for key, item in value.items()]
        return {key: clean for key, clean, _ in items}, [p for _, _, paths in items for p in paths]
    if isinstance(value, (list, tuple)):
        items = [finite_or_null(item, f"{path}.{i}" if path else str(i)) for i, item in enumerate(value)]
        return [clean for clean, _ in items], [p for _, paths in items for p in paths]
    return value, []


def strict_json(value: Any) -> str:
    """JSON text of `value` with non-finite floats as null (`finite_or_null`), never a bare NaN or Infinity."""
    return json.dumps(finite_or_null(value)[0], allow_nan=False)


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
        self._told = False  # whether the run has said that it wrote non-finite values as null

    def write_round(self, metrics: dict[str, Any]) -> None:
        """One line of metrics.jsonl; non-finite values become null, named under NON_FINITE (said once per run)."""
        row, nulled = finite_or_null(metrics)
        if nulled:
            row[NON_FINITE] = nulled
            self._tell(row.get("round"), nulled)
        self._metrics.write(json.dumps(row, allow_nan=False) + "\n")
        self._metrics.flush()

    def _tell(self, round: Any, nulled: list[str]) -> None:
        if not self._told:
            print(f"fl: round {round}: {', '.join(nulled)} not finite (NaN or infinite: the run diverged?); "
                  f"metrics.jsonl holds null for such values and names them under {NON_FINITE!r}", file=sys.stderr)
        self._told = True

    def write_model(self, spec: ParamSpec, global_params: Tensor) -> None:
        """model.pt: the flat vector and the names, shapes and offsets to unflatten it."""
        entries = [{"name": e.name, "shape": list(e.shape), "dtype": str(e.dtype), "offset": e.offset} for e in spec.entries]
        torch.save({"params": global_params.clone(), "entries": entries}, self.path / "model.pt")

    def write_events(self, events: list[tuple[int, float, str, int]]) -> None:
        """events.jsonl: the virtual clock's events, one line each: round, time (s), kind, client."""
        lines = [strict_json({"round": r, "time": t, "kind": kind, "client": c}) for r, t, kind, c in events]
        (self.path / "events.jsonl").write_text("".join(line + "\n" for line in lines))

    def write_json(self, name: str, values: dict[str, Any]) -> None:
        (self.path / name).write_text(strict_json(values) + "\n")

    def write_staleness(self, counts: dict[int, int]) -> None:
        """staleness.json: applied updates per staleness (`fl.plot.plot_staleness` draws its histogram)."""
        (self.path / "staleness.json").write_text(strict_json({str(k): v for k, v in counts.items()}) + "\n")

    def close(self) -> None:
        self._metrics.close()


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (null, for a value that was not finite, reads as None)."""
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no metrics at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

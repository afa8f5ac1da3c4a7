"""The server's side of an asynchronous run: its tasks run through the channel and the worker pool, and each
published version becomes one metrics row."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Sequence

from fl.async_loop import TaskRunner, VersionRecord
from fl.compression import UplinkDecoder
from fl.pool import WorkerPool
from fl.state_store import ClientStateStore
from transport.channel import Channel
from transport.messages import Result, Task


class PoolTasks(TaskRunner):
    """Posts tasks on the channel (with the client's stored state), trains them on the pool, and writes a result's
    client and decoder state only when the loop applies it. Counts the bytes each task moved."""

    def __init__(self, channel: Channel, pool: WorkerPool, store: ClientStateStore, decoder: UplinkDecoder,
                 sizes: Sequence[int]) -> None:
        self.channel, self.pool, self.store, self.decoder, self.sizes = channel, pool, store, decoder, sizes
        self.down: dict[int, int] = defaultdict(int)  # downloads since the last row
        self.up: dict[int, int] = defaultdict(int)  # uploads of the results consumed since the last row

    def post(self, task: Task) -> tuple[Any, int]:
        envelope = self.channel.post(dataclasses.replace(task, state=self.store.get(task.client_id)))
        return envelope, task.client_id

    def run(self, handles: list[tuple[Any, int]]) -> list[tuple[Result, int]]:
        receipts = self.pool.run([envelope for envelope, _ in handles], [float(self.sizes[c]) for _, c in handles])
        results = [self.channel.receive(receipt) for receipt in receipts]
        down, up = self.channel.traffic.take()
        self._count_down(down)
        return [(result, up.get(result.client_id, 0)) for result in results]

    def cancel(self, handle: tuple[Any, int]) -> None:
        self.channel.cancel(handle[0])

    def settle(self, result: Result, applied: bool) -> None:
        if applied and result.state:
            self.store.put(result.client_id, result.state)
        self.decoder.settle(result.client_id, applied)

    def traffic(self, record: VersionRecord) -> tuple[dict[int, int], dict[int, int]]:
        """(down, up) bytes per client since the last row: downloads of the tasks started, uploads of the results
        the loop consumed (applied or too stale)."""
        down, _ = self.channel.traffic.take()
        self._count_down(down)
        out = dict(self.down), dict(record.up_by_client)
        self.down.clear()
        return out

    def _count_down(self, down: dict[int, int]) -> None:
        for client, num_bytes in down.items():
            self.down[client] += num_bytes


def version_row(round: int, record: VersionRecord, down: dict[int, int], up: dict[int, int]) -> dict[str, Any]:
    """The metrics row of one published version (or of the end of the run, `ended`)."""
    staleness = record.staleness
    row: dict[str, Any] = {
        "round": round,
        "version": record.version,
        "clients": len(staleness),
        "train_loss": record.loss_sum / record.samples if record.samples else None,
        "bytes_up": sum(up.values()),
        "bytes_down": sum(down.values()),
        "bytes_by_client": {str(c): [down.get(c, 0), up.get(c, 0)] for c in sorted(down.keys() | up.keys())},
        "virtual_time": record.time,
        "staleness_mean": sum(staleness) / len(staleness) if staleness else None,
        "staleness_max": max(staleness) if staleness else None,
        "in_flight": record.in_flight,
        "dropped": record.dropped,
        "stale": record.stale,
        "diverged": record.diverged,
        "refused": record.refused,
    }
    if record.ended:
        row["ended"] = True
    return row

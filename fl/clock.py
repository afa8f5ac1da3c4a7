"""The virtual clock: time advances only by popping events from a queue ordered by (time, kind priority, client id,
sequence), so ties never depend on thread timing or insertion order, and real time is never read to decide anything.

A synchronous round on the clock (`schedule_round`): every selected client that is online starts its task at the
round's start; a client whose task fails (dropout) or who is offline when it finishes never arrives; the first
`per_round` arrivals within the deadline are kept and later ones are late.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Sequence

# Event kinds, in the order they are handled at equal times: arrivals and failures, then a strategy's timer, then
# delayed starts and wake-ups (an asynchronous run), so a client that arrives at a timer's time is in its aggregate.
ARRIVE, DROP, TIMER, START, WAKE = "arrive", "drop", "timer", "start", "wake"
PRIORITY = {ARRIVE: 0, DROP: 1, TIMER: 2, START: 3, WAKE: 4}


@dataclass(frozen=True, order=True)
class Event:
    time: float
    priority: int
    client_id: int
    sequence: int
    kind: str = field(compare=False)


class EventQueue:
    """Events popped in (time, kind priority, client id, sequence) order; `now` is the time of the last one popped."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._heap: list[Event] = []
        self._sequence = 0

    def push(self, time: float, kind: str, client_id: int) -> None:
        if math.isnan(time) or time < self.now:
            raise ValueError(f"an event at {time} s cannot come before the clock's {self.now} s")
        heapq.heappush(self._heap, Event(time, PRIORITY[kind], client_id, self._sequence, kind))
        self._sequence += 1

    def pop(self) -> Event:
        event = heapq.heappop(self._heap)
        self.now = event.time
        return event

    def peek_time(self) -> float:
        """The time of the next event (inf when there is none)."""
        return self._heap[0].time if self._heap else math.inf

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(frozen=True)
class Attempt:
    """One selected client's task as the clock sees it: how long it takes, and whether (and when) it fails."""

    client_id: int
    seconds: float
    fails_at: float | None = None  # seconds after the start at which the task fails (dropout or offline at finish)


@dataclass
class RoundSchedule:
    """Who a synchronous round keeps, in arrival order, and what became of the others."""

    start: float
    end: float
    kept: list[int]
    late: list[int]
    dropped: list[int]
    events: list[tuple[float, str, int]]  # (time, kind, client id) in the order the clock handled them


def schedule_round(start: float, attempts: Sequence[Attempt], per_round: int, deadline: float = 0.0) -> RoundSchedule:
    """Keep the first `per_round` clients to arrive no later than `start + deadline` (deadline 0: none).

    The round ends when `per_round` clients are kept, or at the deadline, or when every task has arrived or failed,
    whichever comes first."""
    queue = EventQueue(start)
    for attempt in attempts:
        if attempt.fails_at is None:
            queue.push(start + attempt.seconds, ARRIVE, attempt.client_id)
        else:
            queue.push(start + attempt.fails_at, DROP, attempt.client_id)
    limit = start + deadline if deadline > 0 else math.inf
    schedule = RoundSchedule(start, start, [], [], [], [])
    full = False
    while queue:
        event = queue.pop()
        schedule.events.append((event.time, event.kind, event.client_id))
        if event.kind == DROP:
            schedule.dropped.append(event.client_id)
        elif not full and event.time <= limit:
            schedule.kept.append(event.client_id)
            schedule.end, full = event.time, len(schedule.kept) == per_round
        else:
            schedule.late.append(event.client_id)
    if not full and schedule.events:
        schedule.end = min(limit, schedule.events[-1][0])
    return schedule

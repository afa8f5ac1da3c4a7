"""When clients' training diverges: a diverged task is a failed one, counted in its row; the run stops once the
global model keeps making clients diverge.

A client whose own training diverged (a NaN or Inf loss or update, or one beyond security.max_update_norm) reports
so instead of sending an update. The run stops, raising `Diverged`, when more than half of the latest results
diverged: those of a synchronous round, or the latest min(concurrency, WINDOW) training results of an asynchronous
run (refused results, which the server turned down, do not count). The message names the round, the clients that
diverged and the clients whose updates made the model they diverged from.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from fl.errors import Diverged
from transport.messages import DIVERGED, TRAIN

WINDOW = 10  # an asynchronous run judges the latest results, at most this many
LISTED = 10  # client ids named in a message, at most


def check_divergence(where: str, outcomes: Sequence[tuple[int, str]], made_by: Iterable[int]) -> None:
    """Raise Diverged when more than half of `outcomes` ((client id, result kind)) diverged; `made_by`: the clients
    whose updates made the model they trained from (none: the initial model)."""
    judged = [(client, kind) for client, kind in outcomes if kind in (TRAIN, DIVERGED)]
    diverged = [client for client, kind in judged if kind == DIVERGED]
    if 2 * len(diverged) > len(judged):
        raise Diverged(message(where, diverged, len(judged), made_by))


def message(where: str, diverged: Sequence[int], judged: int, made_by: Iterable[int]) -> str:
    makers = sorted(set(made_by))
    source = (f"the global model that the updates of clients {_listed(makers)} made" if makers
              else "the initial model")
    return (f"{where}: the training of {len(diverged)} of {judged} clients ({_listed(sorted(set(diverged)))}) "
            f"diverged from {source}: try a smaller client.lr (or strategy.server_lr)")


def _listed(ids: Sequence[int]) -> str:
    shown = ", ".join(map(str, ids[:LISTED]))
    return shown + (f" and {len(ids) - LISTED} more" if len(ids) > LISTED else "")


class DivergenceWatch:
    """The latest training results of an asynchronous run, judged as `check_divergence` judges a round."""

    def __init__(self, concurrency: int) -> None:
        self.latest: deque[tuple[int, str, tuple[int, ...]]] = deque(maxlen=max(1, min(concurrency, WINDOW)))

    def add(self, where: str, client: int, kind: str, made_by: Iterable[int]) -> None:
        """One consumed result, of a task whose start model `made_by`'s updates made; raises Diverged when the
        window is full and more than half of it diverged."""
        if kind not in (TRAIN, DIVERGED):
            return
        self.latest.append((client, kind, tuple(made_by)))
        if len(self.latest) == self.latest.maxlen:
            check_divergence(where, [(c, k) for c, k, _ in self.latest],
                             [m for c, k, makers in self.latest if k == DIVERGED for m in makers])

"""Every random draw in a run comes from a seed derived from (run seed, round, client id, purpose)."""

from __future__ import annotations

import numpy as np

# Purposes keep the streams of one (round, client) pair apart.
INIT, SAMPLING, AVAILABILITY, TRAINING, EVALUATION, CODEC = range(6)

# Streams that are not keyed by a round start with a namespace: derive_seed(seed, NAMESPACE, ...). SeedSequence reads
# the keys as 32-bit words (and drops trailing zero words); a namespace 2**62 + k reads as the words (k, 2**30), and an
# old stream (seed, round, client, purpose) would need a client id or purpose of 2**30 to repeat them: none does.
DEVICES = 1 << 62  # the device profiles drawn at the start: derive_seed(seed, DEVICES)
SELECTION = DEVICES + 1  # a client's availability when selected: derive_seed(seed, SELECTION, round, client)
DROPOUT = DEVICES + 2  # whether and when a client's task fails: derive_seed(seed, DROPOUT, round, client)
# An asynchronous run keys a client's n-th task (n = 1, 2, ...) as the synchronous streams key its task in round n
# (training, dropout), and each time it fills free slots (the k-th time, k = 1, 2, ...) it draws
ASYNC_ONLINE = DEVICES + 3  # who of the idle clients is online: derive_seed(seed, ASYNC_ONLINE, k)
ASYNC_SELECT = DEVICES + 4  # the strategy's choice among them: derive_seed(seed, ASYNC_SELECT, k)
TOPOLOGY = DEVICES + 5  # a random gossip graph (regular, Erdos-Renyi): derive_seed(seed, TOPOLOGY)
ASYNC_GOSSIP = DEVICES + 6  # the neighbour a waking node sends to: derive_seed(seed, ASYNC_GOSSIP, node, n)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed (valid for torch and numpy) that depends on every key."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def derive_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*keys))

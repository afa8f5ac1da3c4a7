"""Errors a run ends with, beyond a bad configuration (fl.config.ConfigError)."""

from __future__ import annotations


class Diverged(FloatingPointError):
    """Training diverged: a client's or node's loss or parameters became NaN or Inf, or the global model kept making
    clients diverge. The message is one line naming the round and the clients or nodes, with a learning-rate hint."""


class ClientsGone(RuntimeError):
    """A deployed run has no client left: every one was dropped or went quiet, and none joined again in time."""

"""The norm bound on updates (`security.max_update_norm`), one rule for clients, the server and gossip nodes.

An update (a gossip message) may have an L2 norm of at most `max_update_norm * max(1, |x|)`, x the model it applies
to; 0 turns the bound off. A client checks its own update against the model it started from, and reports its task as
diverged rather than send one beyond it; the server refuses only updates beyond `SERVER_SLACK` times the bound of the
version the task started from, since a client's model is the downlink's replica, which a lossy codec makes differ a
little from the server's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SERVER_SLACK = 1.01


def l2_norm(tensor: Tensor) -> float:
    """The L2 norm, summed in float64 (inf for a non-finite tensor)."""
    return float(torch.linalg.vector_norm(tensor.detach().to(torch.float64)))


def update_bound(max_update_norm: float, model_norm: float) -> float:
    """The largest update norm allowed for a model of norm `model_norm` (inf when the bound is off)."""
    return math.inf if max_update_norm <= 0 else max_update_norm * max(1.0, model_norm)


def divergence(loss: float, update: Tensor, start: Tensor, max_update_norm: float) -> str | None:
    """Why a client's training from `start` diverged (a NaN or Inf loss or update, an update beyond the bound), or
    None when it did not."""
    if not math.isfinite(loss):
        return f"loss {loss}"
    norm = l2_norm(update)
    if not math.isfinite(norm):
        return "the update holds NaN or Inf"
    bound = update_bound(max_update_norm, l2_norm(start))
    if norm > bound:
        return f"update norm {norm:.3g} > {bound:.3g} (security.max_update_norm)"
    return None

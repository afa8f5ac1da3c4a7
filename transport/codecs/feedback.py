"""Error feedback as wrappers: each takes any codec C (with decoder D) and is itself a Codec, so it composes.

State keys live under a namespace (default the wrapper's name, e.g. "ef21.g"); give an uplink and a downlink
wrapper different namespaces ("up.ef21", "down.ef21") when their states share one dict. State tensors never alias
inputs, payloads or outputs, and are replaced, never modified in place. The sender decodes its own payload to know
what the receiver will see, so the wrapped codec's `decode` must not depend on receiver state (true of every
plain codec here). Payloads travel under the wrapper's name, e.g. "ef21(topk)".
"""

from __future__ import annotations

import torch
from torch import Tensor

from transport.codecs.base import Codec, Payload, State
from transport.codecs.common import expect, flat_input, renamed


class _Wrapper(Codec):
    """Shared plumbing: naming, and encoding/decoding through the wrapped codec."""

    kind = "wrapper"

    def __init__(self, inner: Codec, namespace: str | None = None) -> None:
        self.inner, self.namespace = inner, namespace or self.kind
        self.name = f"{self.kind}({inner.name})"
        self.lossless = inner.lossless

    def _send(self, v: Tensor, state: State, generator: torch.Generator | None) -> tuple[Payload, Tensor, State]:
        """Encode `v` with the wrapped codec; also return what the receiver will decode."""
        payload, state = self.inner.encode(v, state, generator)
        decoded, _ = self.inner.decode(payload, state)
        return renamed(payload, self.name), decoded, state

    def _receive(self, payload: Payload, state: State) -> tuple[Tensor, State]:
        expect(payload, self.name)
        return self.inner.decode(renamed(payload, self.inner.name), state)

    def payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        """The wrapped codec's: the payload is its payload, renamed."""
        return self.inner.payload_nbytes(numel, dtype)


class ErrorFeedback(_Wrapper):
    """Classic error feedback (Seide et al. 2014; Karimireddy et al. 2019, "Error Feedback Fixes SignSGD"): the
    sender keeps the residual e (key "<ns>.residual", zero at first), sends p = C(x + e) and keeps
    e <- x + e - D(p). The receiver is stateless and returns D(p); the sum of what it returns over T steps equals
    the sum of the inputs minus the current residual.
    """

    kind = "ef"

    def encode(self, x: Tensor, state: State, generator: torch.Generator | None = None) -> tuple[Payload, State]:
        """Send C(x + e) and keep what it missed."""
        x = flat_input(x)
        residual = state.get(f"{self.namespace}.residual")
        corrected = x if residual is None else x + residual
        payload, decoded, state = self._send(corrected, state, generator)
        return payload, {**state, f"{self.namespace}.residual": corrected - decoded}

    def decode(self, payload: Payload, state: State) -> tuple[Tensor, State]:
        """D(p)."""
        return self._receive(payload, state)


class _Estimate(_Wrapper):
    """Receiver side shared by EF21 and EControl: keep the estimate g per sender, return g <- g + D(c)."""

    estimate = "g"  # the state key's suffix

    def decode(self, payload: Payload, state: State) -> tuple[Tensor, State]:
        """g + D(c), which also becomes the stored g (the returned tensor is a separate copy)."""
        decoded, state = self._receive(payload, state)
        key = f"{self.namespace}.{self.estimate}"
        previous = state.get(key)
        if previous is None:
            return decoded, {**state, key: decoded.clone()}
        estimate = previous + decoded
        return estimate.clone(), {**state, key: estimate}


class EF21(_Estimate):
    """EF21 (Richtarik, Sokolov, Fatkhullin 2021, "EF21: A New, Simpler, Theoretically Better, and Practically Faster
    Error Feedback"): sender and receiver both keep g, the receiver's running estimate of x (zero at first; key
    "<ns>.g" on both sides). The sender sends c = C(x - g) and sets g <- g + D(c); the receiver returns
    x_hat = g + D(c) and stores it as g. With a deterministic decoder both copies of g stay identical.
    """

    kind = "ef21"

    def encode(self, x: Tensor, state: State, generator: torch.Generator | None = None) -> tuple[Payload, State]:
        """Send the compressed change of x since the receiver's estimate."""
        x = flat_input(x)
        key = f"{self.namespace}.g"
        estimate = state.get(key)
        payload, decoded, state = self._send(x if estimate is None else x - estimate, state, generator)
        return payload, {**state, key: decoded.clone() if estimate is None else estimate + decoded}


class EControl(_Estimate):
    """EControl (Gao, Islamov, Stich, ICLR 2024, "EControl: Fast Distributed Optimization with Compression and Error
    Control", arXiv 2311.05645). The sender keeps an error e ("<ns>.e") and the shared estimate h ("<ns>.h"), both
    zero at first, and with 0 <= eta <= 1:

        c = C(eta * e + x - h),   e <- e + x - h - D(c),   h <- h + D(c);

    the receiver keeps the same h and returns x_hat = h + D(c) (as in EF21). eta scales how much of the accumulated
    error is fed back; eta = 0 is EF21. The theory takes eta = delta / 400 (delta: the compressor's contraction, k/n
    for top-k); the paper's experiments tune it. Measured on distributed least squares with top-k, step 0.5 / L:
    at delta = 0.1, eta = delta converged as fast as EF21 and eta = 0.5 diverged; at delta = 0.01, eta >= delta / 2
    diverged and eta = delta / 10 converged, slowly. The default 0.001 is delta / 10 for 1 % top-k: tune it.
    Source of the rule: the paper's reviews (OpenReview, ICLR 2024: "with h_0 = C(g_0) and eta = 0, EControl is
    EF21"; "eta = delta / 400 suggested by the theory") and a public third-party implementation; the paper's own
    algorithm box could not be read here. That implementation sends g_0 uncompressed first (h_0 = g_0); here h
    starts at 0, so every message is compressed.
    """

    kind = "econtrol"
    estimate = "h"

    def __init__(self, inner: Codec, eta: float = 0.001, namespace: str | None = None) -> None:
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta!r}")
        super().__init__(inner, namespace)
        self.eta = float(eta)

    def encode(self, x: Tensor, state: State, generator: torch.Generator | None = None) -> tuple[Payload, State]:
        """Send C(eta e + x - h); keep the new error and estimate."""
        x = flat_input(x)
        error, estimate = state.get(f"{self.namespace}.e"), state.get(f"{self.namespace}.h")
        change = x if estimate is None else x - estimate
        target = change if error is None else change + self.eta * error
        payload, decoded, state = self._send(target, state, generator)
        new_error = change - decoded if error is None else error + change - decoded
        new_estimate = decoded.clone() if estimate is None else estimate + decoded
        return payload, {**state, f"{self.namespace}.e": new_error, f"{self.namespace}.h": new_estimate}

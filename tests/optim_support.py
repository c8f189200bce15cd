"""Helpers for the optimizer tests: run two implementations side by side and hold them to the
agreement the specification asks for.

Fused code may round the moving averages differently in the last bits. So the buffers must
agree within a few ulps and the binary weights exactly, except weights whose decision lies
within that rounding of the threshold (or whose buffers did round differently).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hypothesis import strategies as st

import benchbnn

ULPS = 4
EPS32 = float(torch.finfo(torch.float32).eps)
NEAR = 1e-5  # relative distance to the threshold within which rounding may decide


def build(name: str, binary, real=(), implementation: str = "reference", **hparams):
    optimizer = benchbnn.get_optimizer(name).build(binary, real, **hparams)
    optimizer.implementation = implementation
    return optimizer


def decision_margin(name: str, group: dict, w_before: torch.Tensor, state: dict) -> torch.Tensor:
    """How far each weight's decision quantity lies from the threshold, in float64."""
    w = w_before.double()
    m = state["m"].double()
    if name == "bop":
        signal = w * m
    else:
        v = state["v"].double()
        if group.get("unbiased"):
            signal = w * (m / group["gamma"]) / ((v / group["sigma"]).sqrt() + 1e-10)
        else:
            signal = w * m / (v.sqrt() + 1e-10)
    return (signal - group["threshold"]) / (abs(group["threshold"]) + signal.abs() + 1e-30)


def assert_buffers_close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = float(a.abs().max()) if a.numel() else 0.0
    torch.testing.assert_close(a, b, rtol=ULPS * EPS32, atol=ULPS * EPS32 * scale + 1e-38)


def run_side_by_side(
    name: str,
    hparams: dict,
    shapes: Sequence[tuple[int, ...]],
    grads: Sequence[Sequence[torch.Tensor]],
    implementations: tuple[str, str],
    init: Sequence[torch.Tensor] | None = None,
) -> int:
    """Step two copies of an optimizer with the same gradients and check agreement after every
    step. Returns how many weights were excused for lying within rounding of the threshold."""
    torch.manual_seed(0)
    init = list(init) if init is not None else [torch.randn(s) for s in shapes]
    copies = []
    for implementation in implementations:
        params = [torch.nn.Parameter(t.clone()) for t in init]
        copies.append((params, build(name, params, [], implementation, **hparams)))
    (pa, oa), (pb, ob) = copies
    group = oa.param_groups[0]
    excused = 0
    for step_grads in grads:
        before = [p.detach().clone() for p in pa]
        for params in (pa, pb):
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
        oa.step()
        ob.step()
        differing = 0
        for a, b, w0 in zip(pa, pb, before):
            buffers_differ = torch.zeros_like(a, dtype=torch.bool)
            for key in oa.state_buffers:
                x, y = oa.state[a][key], ob.state[b][key]
                assert_buffers_close(x, y)
                buffers_differ |= x != y
            if name == "adam-latent":
                assert_buffers_close(a.detach(), b.detach())
                allowed = buffers_differ | (a.detach().abs() < 1e-6)
            else:
                near = decision_margin(name, group, w0, oa.state[a]).abs() <= NEAR
                allowed = buffers_differ | near
                mismatch = a.detach() != b.detach()
                assert not (mismatch & ~allowed).any(), f"{int(mismatch.sum())} weights disagree"
                excused += int((mismatch & allowed).sum())
            differing += int(allowed.sum())
            with torch.no_grad():
                b.copy_(a)  # continue both from the same weights
        assert abs(int(oa.flip_count) - int(ob.flip_count)) <= differing
    return excused


# --- hypothesis strategies ------------------------------------------------------------------

gradient = st.floats(
    -100.0, 100.0, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32
)
rate = st.floats(-3.0, 0.0).map(lambda e: 10.0**e)  # gamma, sigma in [1e-3, 1]
threshold = st.one_of(st.just(0.0), st.floats(-8.0, 0.0).map(lambda e: 10.0**e))


@st.composite
def rule_hparams(draw, name):
    if name == "adam-latent":
        return {
            "lr": draw(st.floats(-4.0, 0.0).map(lambda e: 10.0**e)),
            "clip": draw(st.floats(0.5, 2.0)),
        }
    hparams = {"gamma": draw(rate), "threshold": draw(threshold)}
    if name != "bop":
        hparams["sigma"] = draw(rate)
    if name == "bop2ndorder":
        hparams["unbiased"] = draw(st.booleans())
    if name == "pbop":
        hparams["scaler"] = draw(st.floats(0.0, 6.0).map(lambda e: 10.0**e))
        hparams["seed"] = draw(st.integers(0, 2**31))
    return hparams

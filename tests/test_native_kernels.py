"""Optimizer rules with a C++ kernel of their own (``update_native``), and the kernels' builder.

MD-tanh ships one (``plugins/optimizers/md_tanh.cpp``): its stable step must give the
reference's bits (weights, both moments, flip counts) for every size, rate and weight, run
whenever the compiled implementation steps float32 CPU weights, and leave torch.compile's
kernel to run where it cannot be built or does not apply.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from compile_support import needs_compile

import benchbnn
from benchbnn.core import native
from benchbnn.core.errors import PluginError
from benchbnn.optim import BinaryOptimizer, NativeKernels, ema_, flip_
from benchbnn_plugins.optimizers import md_tanh
from benchbnn_plugins.optimizers.md_tanh import FLOAT32_MAX, KERNELS, MDTanh

RULE = {"direction_beta1": 0.9, "direction_beta2": 0.999, "direction_eps": 1e-8}


def built() -> bool:
    return KERNELS.module() is not None


needs_kernel = pytest.mark.skipif(
    not native.native_builds_here(), reason="C++ kernels are only built on Linux"
)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def weights(n: int, generator: torch.Generator) -> torch.Tensor:
    """Weights in [-1, 1]: uniform, crowded near 0 and near +-1, and the exact edge values."""
    w = 2 * torch.rand(n, generator=generator) - 1
    near = torch.rand(n, generator=generator) < 0.3
    w = torch.where(near, w * 0.2, w)
    edges = torch.tensor([1.0, -1.0, 0.0, -0.0, 1 - 2**-24, -1 + 2**-24, 0.2499, -0.25])
    w[: min(n, len(edges))] = edges[: min(n, len(edges))]
    return w


@needs_kernel
@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 70_001])
@pytest.mark.parametrize("rate", [1e-3, 0.3, 50.0, FLOAT32_MAX])
def test_the_md_tanh_kernel_gives_the_reference_bits(n, rate):
    assert built()
    generator = torch.Generator().manual_seed(n)
    w = weights(n, generator)
    powers = torch.randint(-6, 1, (n,), generator=generator)
    g = torch.randn(n, generator=generator) * 10.0**powers
    m = torch.randn(n, generator=generator) * 1e-3
    v = torch.rand(n, generator=generator) * 1e-4
    g[::7], m[::7] = 0.0, 0.0  # no gradient and no momentum: a = 0 keeps x exactly
    expected = [t.clone() for t in (w, m, v)]
    flips = MDTanh.update(*expected[:1], g, *expected[1:], rate=rate, stable=True, **RULE)
    got = MDTanh.update_native(w, g, m, v, rate=rate, stable=True, **RULE)
    assert got == int(flips)
    for a, b in zip((w, m, v), expected):
        assert torch.equal(bits(a), bits(b))


@needs_kernel
@pytest.mark.parametrize(
    "beta1, beta2, eps",
    [(0.0, 0.0, 1e-30), (0.3, 0.7, 0.1), (0.9999, 0.999999, 1.0), (0.5, 0.99, 1e-8)],
)
def test_other_constants_and_more_than_one_block_give_the_reference_bits(beta1, beta2, eps):
    assert built()
    n = 2**20 + 4099  # the kernel counts flips per block of 2^20 weights
    generator = torch.Generator().manual_seed(11)
    w = weights(n, generator)
    g = torch.randn(n, generator=generator) * 1e-2
    m = torch.randn(n, generator=generator) * 1e-3
    v = torch.rand(n, generator=generator) * 1e-4
    rule = {"direction_beta1": beta1, "direction_beta2": beta2, "direction_eps": eps}
    expected = [t.clone() for t in (w, m, v)]
    flips = MDTanh.update(expected[0], g, expected[1], expected[2], rate=2.5, stable=True, **rule)
    got = MDTanh.update_native(w, g, m, v, rate=2.5, stable=True, **rule)
    assert got == int(flips) > 0
    for a, b in zip((w, m, v), expected):
        assert torch.equal(bits(a), bits(b))


@needs_kernel
def test_the_kernel_refuses_aliased_or_mismatched_tensors():
    assert built()
    w, g = torch.zeros(8), torch.zeros(8)
    with pytest.raises(RuntimeError, match="distinct tensors"):
        KERNELS.module().md_tanh_stable(w, g, w, torch.zeros(8), 0.9, 0.999, 1e-8, 0.1)
    with pytest.raises(RuntimeError, match="contiguous float32 CPU tensor"):
        KERNELS.module().md_tanh_stable(w, g, torch.zeros(8).double(), w, 0.9, 0.999, 1e-8, 0.1)


@needs_kernel
def test_nan_gradients_give_nan_where_the_reference_does():
    assert built()
    w = torch.linspace(-1, 1, 64)
    g = torch.full((64,), 1e-3)
    g[::5] = float("nan")
    m, v = torch.zeros(64), torch.zeros(64)
    expected = [t.clone() for t in (w, m, v)]
    flips = MDTanh.update(expected[0], g, expected[1], expected[2], rate=0.1, stable=True, **RULE)
    got = MDTanh.update_native(w, g, m, v, rate=0.1, stable=True, **RULE)
    assert got == int(flips)
    for a, b in zip((w, m, v), expected):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(bits(a[~a.isnan()]), bits(b[~b.isnan()]))


def run(implementation: str, steps: int = 12, **hparams) -> tuple[list, list[int]]:
    generator = torch.Generator().manual_seed(3)
    shapes = [(32, 3, 3, 3), (200,), (64, 130)]
    params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    grads = [[torch.randn(s, generator=generator) for s in shapes] for _ in range(steps)]
    opt = MDTanh(params, implementation=implementation, step_size=0.05, beta_interval=3, **hparams)
    flips = []
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g
        opt.step()
        flips.append(int(opt.flip_count))
    return [p.detach().clone() for p in params], flips


class Counting:
    """Stands in for the built module and counts the kernel's calls."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def md_tanh_stable(self, *args):
        self.calls += 1
        return self.module.md_tanh_stable(*args)


@needs_compile
@needs_kernel
def test_the_compiled_implementation_steps_through_the_kernel(monkeypatch):
    counting = Counting(KERNELS.module())
    monkeypatch.setattr(KERNELS, "module", lambda: counting)
    compiled, compiled_flips = run("compiled")
    assert counting.calls == 12 * 3  # every tensor of every step
    generator = torch.Generator().manual_seed(5)
    p = torch.nn.Parameter(torch.randn(40, generator=generator))
    opt = MDTanh([p], implementation="compiled")
    p.grad, version = torch.randn(40, generator=generator), p._version
    opt.step()
    assert counting.calls == 37 and p._version > version  # autograd sees the in-place write
    q = torch.nn.Parameter(torch.randn(40, 40, generator=generator).t())  # not contiguous
    opt = MDTanh([q], implementation="compiled")
    q.grad = torch.randn(40, 40, generator=generator)
    opt.step()
    assert counting.calls == 37
    reference, reference_flips = run("reference")
    assert counting.calls == 37  # the reference never does
    assert compiled_flips == reference_flips
    for a, b in zip(compiled, reference):
        assert torch.equal(bits(a), bits(b))


@needs_compile
def test_without_the_kernel_torch_compiles_kernel_gives_the_same_bits(monkeypatch):
    monkeypatch.setattr(KERNELS, "module", lambda: None)
    compiled, compiled_flips = run("compiled")
    reference, reference_flips = run("reference")
    assert compiled_flips == reference_flips
    for a, b in zip(compiled, reference):
        assert torch.equal(bits(a), bits(b))


@needs_compile
def test_the_exp_form_and_bfloat16_weights_leave_the_kernel_to_torch_compile(monkeypatch):
    counting = Counting(KERNELS.module())
    monkeypatch.setattr(KERNELS, "module", lambda: counting)
    compiled, compiled_flips = run("compiled", steps=4, stable=False)
    reference, reference_flips = run("reference", steps=4, stable=False)
    assert counting.calls == 0
    assert compiled_flips == reference_flips
    for a, b in zip(compiled, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    p = torch.nn.Parameter(torch.randn(100).to(torch.bfloat16))
    opt = MDTanh([p], implementation="compiled")
    p.grad = torch.randn(100).to(torch.bfloat16)
    opt.step()
    assert counting.calls == 0  # the rule runs on a float32 copy: torch.compile's kernel


@needs_compile
@needs_kernel
def test_a_failed_build_warns_once_and_the_compiled_rule_runs(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    KERNELS.reset()
    try:
        with pytest.warns(RuntimeWarning, match=r"md-tanh's C\+\+ step could not be built"):
            MDTanh([torch.nn.Parameter(torch.randn(8))], implementation="compiled")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once: the failure is remembered
            compiled, _ = run("compiled", steps=3)
        reference, _ = run("reference", steps=3)
        for a, b in zip(compiled, reference):
            assert torch.equal(bits(a), bits(b))
    finally:
        KERNELS.reset()


def test_the_build_name_follows_the_source_and_the_cpu(tmp_path, monkeypatch):
    source = tmp_path / "k.cpp"
    source.write_text("// one\n")
    kernels = NativeKernels(source, "k", purpose="k", fallback="nothing")
    name = kernels.build_name()
    assert name.startswith("benchbnn_k_")
    source.write_text("// two\n")
    assert kernels.build_name() != name
    name = kernels.build_name()
    monkeypatch.setattr(native, "cpu_model", lambda: "another CPU")
    assert kernels.build_name() != name
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        NativeKernels(source, "k-1", purpose="k", fallback="nothing")


def test_kernels_are_tried_on_linux_only_and_where_they_apply(tmp_path):
    assert native.native_builds_here("linux")
    assert not native.native_builds_here("darwin")
    assert not native.native_builds_here("win32")
    never = NativeKernels(tmp_path / "k.cpp", "k", purpose="k", fallback="x", applies=lambda: False)
    assert not never.tried_here()
    assert never.module() is None  # no build, no warning


def _bop_declaration(**members):
    return type(
        "NativeBop",
        (BinaryOptimizer,),
        {
            "name": "native-bop",
            "rule_hparams": (
                benchbnn.HParam("threshold", 1e-8, low=0.0, high=1.0),
                benchbnn.HParam("gamma", 1e-4, low=0.0, high=1.0),
            ),
            "state_buffers": ("m",),
            "update": staticmethod(_bop_update),
            **members,
        },
    )


def _bop_update(w, g, m, *, gamma, threshold):
    ema_(m, g, gamma)
    return flip_(w, w * m > threshold)


def test_update_native_is_declared_like_update():
    def loose(w, g, m, *, gamma, threshold):
        return None

    _bop_declaration(update_native=staticmethod(loose))  # accepted
    with pytest.raises(PluginError, match="update_native must be a @staticmethod"):
        _bop_declaration(update_native=loose)
    with pytest.raises(PluginError, match=r"takes 2 tensors, but the rule has 3 tensors"):
        _bop_declaration(update_native=staticmethod(lambda w, g, *, gamma, threshold: None))
    with pytest.raises(PluginError, match="does not take threshold, which update takes"):
        _bop_declaration(update_native=staticmethod(lambda w, g, m, *, gamma: None))


def test_a_subclass_with_a_rule_of_its_own_does_not_inherit_the_kernel():
    class Variant(MDTanh):
        name = "md-tanh-variant"

        @staticmethod
        def update(w, g, m, v, *, direction_beta1, direction_beta2, direction_eps, rate, stable):
            return MDTanh.update(
                w,
                g,
                m,
                v,
                direction_beta1=direction_beta1,
                direction_beta2=direction_beta2,
                direction_eps=direction_eps,
                rate=rate * 0.5,
                stable=stable,
            )

    class Renamed(MDTanh):
        name = "md-tanh-renamed"

    assert Variant.update_native is None and Variant.native_kernels is None
    assert Variant.update_foreach is None
    assert Renamed.update_native is MDTanh.update_native  # the same rule: the same kernel
    assert Renamed.native_kernels is KERNELS


@needs_compile
def test_an_update_native_that_declines_leaves_the_step_to_the_compiled_rule():
    calls = []

    def declining(w, g, m, *, gamma, threshold):
        calls.append(w.numel())
        return None

    cls = _bop_declaration(update_native=staticmethod(declining))
    p = torch.nn.Parameter(torch.randn(50))
    q = torch.nn.Parameter(p.detach().clone())
    opts = [cls([p], implementation="compiled"), cls([q], implementation="reference")]
    for _ in range(3):
        g = torch.randn(50)
        p.grad, q.grad = g, g.clone()
        for opt in opts:
            opt.step()
    assert calls == [50, 50, 50]
    assert torch.equal(p, q)
    assert md_tanh.MDTanh.native_kernels is KERNELS

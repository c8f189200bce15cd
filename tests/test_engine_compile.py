"""The engine's compiled mode: same training as eager, one compilation per shape, fallback, timing.

Real runs on the embedded digits data (tiny BNN MLP) and on small synthetic images (BinaryNet at
width 0.125), tracked into temporary SQLite stores. ``torch._dynamo`` counters tell when
anything compiled.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch._dynamo
from engine_support import TIMINGS, TINY_BINARYNET, computed, fresh_store, tiny_config
from mlflow import MlflowClient
from torch._dynamo.utils import counters

import benchbnn
from benchbnn.bench.compare import training_environment
from benchbnn.core.binary import binary_layers
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.machine import native_bf16_cpu
from benchbnn.core.names import TAG_ENVIRONMENT, TAG_OPTIMIZER_IMPLEMENTATION
from benchbnn.optim.base import IMPLEMENTATION_ENV
from benchbnn.train.engine import (
    RECOMPILE_LIMIT,
    TAG_COMPILE,
    TAG_PRECISION,
    check_run_mode,
    train,
)
from benchbnn.train.identity import Environment

CONV = TINY_BINARYNET


@pytest.fixture
def store(tmp_path) -> str:
    return fresh_store(tmp_path / "store")


class Capture:
    """Records the compiled-frame count at every epoch's end and the final binary weights."""

    def __init__(self) -> None:
        self.frames: list[int] = []

    @benchbnn.hookimpl
    def benchbnn_epoch_end(self, run: Any, epoch: int, metrics: dict) -> None:
        self.frames.append(int(counters["frames"]["total"]))

    @benchbnn.hookimpl
    def benchbnn_run_end(self, run: Any, result: Any) -> None:
        self.binary = [layer.weight.detach().clone() for _, layer in binary_layers(run.model)]
        self.optimizer_state = [
            value
            for state in run.optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        ]
        self.state = {k: v.clone() for k, v in run.model.state_dict().items()}


def _train(store: str, tmp_path, name: str, config, **options: Any):
    capture = Capture()
    result = train(
        config,
        quiet=True,
        tracking_uri=store,
        checkpoint_dir=tmp_path / name,
        plugins=[capture],
        **options,
    )
    assert result.status == "FINISHED", result.error
    return result, capture


class FirstStep:
    """The parameters and their gradients right after the first optimizer step."""

    @benchbnn.hookimpl
    def benchbnn_step_end(self, run: Any, step: int, logs: Any) -> None:
        if step == 1:
            named = list(run.model.named_parameters())
            self.weights = {n: p.detach().clone() for n, p in named}
            self.grads = {n: p.grad.clone() for n, p in named}
            self.binary = {n for n, _ in binary_layers(run.model)}


def test_compiled_and_eager_take_the_same_first_step(store, tmp_path):
    """One Bop2ndOrder step of the MLP on digits. The compiled model computes the same
    function with kernels that round differently (fused batch-norm reductions): gradients agree
    to ~1e-8 (float32 rounding of values up to ~0.3). A binary weight flips where its gradient's
    sign agrees with the weight's (this configuration's gamma / sqrt(sigma) = 1e-5 exceeds the
    1e-6 threshold whatever the gradient's size), so the two may flip differently only where the
    gradient is rounding noise: the digits' constant border pixels feed batch norm, whose input
    gradient sums to zero over the batch, leaving |g| ~ 1e-9. Every binary weight with a
    gradient above 1e-7 flips identically; real-valued parameters agree to float32 rounding."""
    config = tiny_config(epochs=1, subset=64)  # one step of 64
    eager, compiled = FirstStep(), FirstStep()
    train(
        config,
        quiet=True,
        tracking_uri=store,
        checkpoint_dir=tmp_path / "e",
        plugins=[eager],
        compile="off",
    )
    train(
        config,
        quiet=True,
        tracking_uri=store,
        checkpoint_dir=tmp_path / "c",
        plugins=[compiled],
        compile="on",
    )
    for name, grad in eager.grads.items():
        torch.testing.assert_close(compiled.grads[name], grad, rtol=0, atol=1e-7)
        if name.removesuffix(".weight") in eager.binary:
            differ = eager.weights[name] != compiled.weights[name]
            assert int(differ.sum()) < grad.numel() // 10
            assert bool((grad[differ].abs() < 1e-7).all())
        else:
            torch.testing.assert_close(
                compiled.weights[name], eager.weights[name], rtol=0, atol=1e-6
            )


def test_no_recompilation_after_the_first_epoch(store, tmp_path):
    """The MLP on digits with a validation split: the training batch (64; the partial last
    batch is dropped) and the evaluation shapes (test 256 + 104, validation 143) compile in
    epoch 1; epochs 2 and 3, with the same shapes, compile nothing."""
    torch._dynamo.reset()  # earlier tests may have compiled the same graphs in this process
    config = tiny_config(epochs=3, val_fraction=0.1)
    result, capture = _train(store, tmp_path, "mlp", config, compile="on")
    assert capture.frames[0] >= 4  # train, test 256, test 104, validation 143
    assert capture.frames[1] == capture.frames[2] == capture.frames[0]
    assert result.metrics["compile_time_s"] > 0
    assert sum(h["epoch_time_s"] for h in result.history) < result.metrics["compile_time_s"]


@pytest.mark.parametrize(("before", "after"), [(8, RECOMPILE_LIMIT), (1000, 1000)])
def test_a_compiled_run_lifts_the_recompile_limit_for_long_lived_workers(
    store, tmp_path, before, after
):
    """A worker trains many configurations in one process, each adding compiled variants to the
    model's shared forward frames; torch's default limit of 8 per frame made later runs eager
    without a word. A compiled run raises it (never lowers a user's larger setting)."""
    with torch._dynamo.config.patch(recompile_limit=before):
        result, _ = _train(store, tmp_path, "mlp", tiny_config(epochs=1), compile="on")
        assert result.finished
        assert torch._dynamo.config.recompile_limit == after


@pytest.mark.slow
def test_conv_net_compiles_by_default_without_graph_breaks(store, tmp_path):
    """BinaryNet (channels_last inputs) compiles under "auto": once per shape in epoch 1, no
    graph break in the binary layers' straight-through sign, the tags and compile time
    recorded in the store."""
    torch._dynamo.reset()
    result, capture = _train(store, tmp_path, "conv", benchbnn.RunConfig(**CONV), compile="auto")
    assert capture.frames[0] >= 4  # train, eval 256, eval 44, eval 26 (+ the optimizer's step)
    assert capture.frames[1] == capture.frames[2] == capture.frames[0]
    assert counters["graph_break"] == {}
    run = MlflowClient(store).get_run(result.run_id)
    assert run.data.tags[TAG_COMPILE] == "compiled"
    assert run.data.tags[TAG_PRECISION] == "fp32"
    assert run.data.metrics["compile_time_s"] == result.metrics["compile_time_s"] > 0


def test_scheduled_ste_window_does_not_recompile(store, tmp_path):
    """AdamLatent's clip is the layers' straight-through window; scheduled, it changes at every
    step, and the compiled model reads it from the layers' ``ste_clip`` buffers as a value,
    not as a constant to recompile for."""
    torch._dynamo.reset()
    config = tiny_config(
        optimizer="adam-latent",
        epochs=2,
        schedules={"clip": {"schedule": "polynomial", "start": 1.5, "end": 0.5, "power": 1.0}},
    )
    _, capture = _train(store, tmp_path, "latent", config, compile="on")
    assert capture.frames[1] == capture.frames[0]
    assert counters["graph_break"] == {}


def test_auto_leaves_an_mlp_eager(store, tmp_path):
    result, _ = _train(store, tmp_path, "auto", tiny_config(epochs=1), compile="auto")
    tags = MlflowClient(store).get_run(result.run_id).data.tags
    assert tags[TAG_COMPILE] == "eager (auto: no convolutions, compiling would not pay)"
    assert result.metrics["compile_time_s"] == 0.0
    # a short run of a small model: the optimizer's step is not compiled either
    assert tags[TAG_OPTIMIZER_IMPLEMENTATION] == "foreach"


def test_an_eager_model_counts_its_compiled_optimizer_step_as_compile_time(
    store, tmp_path, monkeypatch
):
    """Compiling the optimizer's step is compile time even when the model runs eagerly: it is
    kept out of the epochs' times (it used to be counted only in compiled mode)."""
    monkeypatch.setenv(IMPLEMENTATION_ENV, "compiled")
    torch._dynamo.reset()  # so that the step compiles in this run, whatever ran before
    result, _ = _train(store, tmp_path, "eager-model", tiny_config(epochs=1), compile="off")
    tags = MlflowClient(store).get_run(result.run_id).data.tags
    assert tags[TAG_COMPILE] == "eager (compile off)"
    assert tags[TAG_OPTIMIZER_IMPLEMENTATION] == "compiled"
    assert result.metrics["compile_time_s"] > 0


def test_the_optimizer_implementation_is_recorded(store, tmp_path, monkeypatch):
    monkeypatch.setenv(IMPLEMENTATION_ENV, "reference")
    result, _ = _train(store, tmp_path, "impl", tiny_config(epochs=1), compile="off")
    tags = MlflowClient(store).get_run(result.run_id).data.tags
    assert tags[TAG_OPTIMIZER_IMPLEMENTATION] == "reference"


def test_compilation_failing_falls_back_to_eager_with_one_warning(store, tmp_path, monkeypatch):
    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", unavailable)
    with pytest.warns(RuntimeWarning, match="training eagerly") as caught:
        result, _ = _train(store, tmp_path, "fallback", tiny_config(epochs=1), compile="on")
    assert len([w for w in caught if "training eagerly" in str(w.message)]) == 1
    tags = MlflowClient(store).get_run(result.run_id).data.tags
    assert tags[TAG_COMPILE] == ("eager (compilation failed: RuntimeError: no compiler here)")
    eager, _ = _train(store, tmp_path, "eager", tiny_config(epochs=1), compile="off")
    assert computed(result.history) == computed(eager.history)  # exactly the eager run


def test_compile_error_at_the_first_step_falls_back(store, tmp_path, monkeypatch):
    """A compiler that fails lazily, at the first forward pass: the tag set at the start
    ("compiled") is replaced in the store and the run trains eagerly."""
    from torch._dynamo.exc import BackendCompilerFailed

    def failing_backend(graph: Any, inputs: Any) -> Any:
        raise RuntimeError("backend broke")

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: real_compile(fn, backend=failing_backend)
    )
    with pytest.warns(RuntimeWarning, match="training eagerly"):
        result, _ = _train(store, tmp_path, "lazy", tiny_config(epochs=1), compile="on")
    tag = MlflowClient(store).get_run(result.run_id).data.tags[TAG_COMPILE]
    assert tag.startswith(f"eager (compilation failed: {BackendCompilerFailed.__name__}")


def test_epoch_timing_metrics_are_present_and_positive(store, tmp_path):
    result, _ = _train(store, tmp_path, "timing", tiny_config(epochs=2), compile="off")
    for entry in result.history:
        assert entry["forward_backward_s"] > 0
        assert entry["optimizer_step_s"] > 0
        assert entry["forward_backward_s"] + entry["optimizer_step_s"] <= entry["epoch_time_s"]
        assert entry["load_average"] >= 0
    logged = MlflowClient(store).get_run(result.run_id).data.metrics
    for name in ("forward_backward_s", "optimizer_step_s", "load_average", "compile_time_s"):
        assert name in logged
    assert set(TIMINGS) >= {"forward_backward_s", "optimizer_step_s", "load_average"}


@pytest.mark.skipif(
    "bayesbinn" not in benchbnn.get_registry().names("optimizer"),
    reason="needs the closure optimizer bayesbinn",
)
def test_closure_optimizer_counts_the_closure_as_forward_backward(store, tmp_path):
    """BayesBiNN takes a closure (its step runs forward and backward itself) and evaluates
    sampled networks through evaluation_weights(); compiled, it trains and both timings stay
    positive, the optimizer's without the closure's passes."""
    config = tiny_config(optimizer="bayesbinn", epochs=1)
    result, _ = _train(store, tmp_path, "closure", config, compile="on")
    (entry,) = result.history
    assert entry["forward_backward_s"] > 0
    assert entry["optimizer_step_s"] > 0


@pytest.mark.parametrize(
    ("compile", "precision", "device", "error"),
    [
        ("maybe", "fp32", "cpu", "compile must be one of auto, on, off"),
        ("auto", "fp16", "cpu", "precision must be one of fp32, bf16"),
        ("auto", "bf16", "meta", "precision bf16 \\(autocast\\) runs on CUDA or a CPU"),
    ],
)
def test_bad_run_mode_is_refused(compile, precision, device, error):
    with pytest.raises(BenchbnnError, match=error):
        check_run_mode(compile, precision, torch.device(device))


def test_bf16_on_a_cpu_without_native_bfloat16_is_refused_with_the_flags(monkeypatch):
    """Emulated bfloat16 is slower than fp32: refused, naming the instructions that are missing."""
    monkeypatch.setattr("benchbnn.train.engine.native_bf16_cpu", lambda: False)
    with pytest.raises(BenchbnnError, match=r"native bfloat16 arithmetic .*avx512_bf16"):
        check_run_mode("auto", "bf16", torch.device("cpu"))
    monkeypatch.setattr("benchbnn.train.engine.native_bf16_cpu", lambda: True)
    assert check_run_mode("auto", "bf16", torch.device("cpu")) == ("auto", "bf16")


def test_native_bf16_reads_the_cpu_flags():
    assert native_bf16_cpu(frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert native_bf16_cpu(frozenset({"amx_tile", "amx_bf16"}))
    assert native_bf16_cpu(frozenset({"fp", "asimd", "bf16"}))  # Arm
    assert not native_bf16_cpu(frozenset({"avx2", "avx512f", "avx512bw"}))
    assert not native_bf16_cpu(frozenset())


def test_bf16_is_a_numerical_environment_of_its_own():
    """A bf16 run's environment line differs from fp32's, which keeps its old spelling."""
    fp32 = Environment("cpu", "2.14.1", 1, 1)
    bf16 = Environment("cpu", "2.14.1", 1, 1, "bf16")
    assert fp32.key() == "cpu, torch 2.14.1, 1 thread, world size 1"
    assert bf16.key() == "cpu, torch 2.14.1, 1 thread, world size 1, bf16"
    # compare plans --precision bf16 in the bf16 environment, alone or with local workers
    assert training_environment("cpu", None, "bf16").endswith(", bf16")
    assert training_environment("cpu", 2, "bf16").endswith(", world size 1, bf16")
    assert not training_environment("cpu", 2).endswith(", bf16")


@pytest.mark.skipif(not native_bf16_cpu(), reason="this CPU has no native bfloat16")
def test_bf16_on_a_native_cpu_trains_with_exact_binary_weights_and_float32_state(store, tmp_path):
    """BinaryNet under CPU bf16 autocast, eager: the binary weights stay exactly +-1 in
    float32, the optimizer's state stays float32, the run is tagged bf16 and its numerical
    environment says bf16 (so an fp32 compare never reuses it)."""
    config = benchbnn.RunConfig(**{**CONV, "epochs": 1})
    result, capture = _train(store, tmp_path, "bf16", config, compile="off", precision="bf16")
    for weight in capture.binary:
        assert weight.dtype == torch.float32
        assert set(weight.unique().tolist()) <= {-1.0, 1.0}
    run = MlflowClient(store).get_run(result.run_id)
    assert run.data.tags[TAG_PRECISION] == "bf16"
    assert run.data.tags[TAG_ENVIRONMENT].endswith(", bf16")
    assert capture.optimizer_state  # Bop's m of every binary weight, Adam's moments
    assert all(
        value.dtype == torch.float32
        for value in capture.optimizer_state
        if value.is_floating_point()
    )


def test_run_mode_accepts_booleans():
    assert check_run_mode(True, "fp32", torch.device("cpu")) == ("on", "fp32")
    assert check_run_mode(False, "fp32", torch.device("cpu")) == ("off", "fp32")


def test_images_of_steps_that_compiled_are_not_in_the_rate(store, tmp_path, monkeypatch):
    """images_per_s divides the images of the timed steps by their seconds: a step that
    compiled leaves both out (it used to leave out only its seconds, so a first epoch of N steps
    showed N / (N - 1) times its speed). An epoch in which every step compiled has no rate."""
    import benchbnn.train.engine as engine

    calls = iter(range(1, 10**6))
    monkeypatch.setattr(engine, "_compile_count", lambda: next(calls))  # every block compiled
    result, _ = _train(store, tmp_path, "all-compiled", tiny_config(epochs=2), compile="off")
    assert result.metrics["compile_time_s"] > 0
    assert all(math.isnan(entry["images_per_s"]) for entry in result.history)
    monkeypatch.undo()
    result, _ = _train(store, tmp_path, "none-compiled", tiny_config(epochs=2), compile="off")
    assert all(entry["images_per_s"] > 0 for entry in result.history)

"""The training engine: one configuration, trained and evaluated, tracked and checkpointed.

:func:`train` resolves and validates everything first (names, hyperparameters, schedules, the
tracking location, the data) and raises :class:`~benchbnn.core.errors.BenchbnnError` with nothing
started. It then trains with cross-entropy, applying schedules per step, and evaluates every
epoch. Tracking (MLflow), the progress display and any extra metrics are plugins of the
lifecycle hooks in :mod:`benchbnn.core.hookspecs`, called through a plugin manager built for the
run, so the loop itself only trains and keeps running sums on the device.

The optimizer's declaration (its spec) decides how the binary layers use its weights
(``forward``), whether a step is ``optimizer.step(closure)`` (``needs_closure``) and what the
divergence message advises; every evaluation runs inside the optimizer's
``evaluation_weights()`` and on binary layers whose weights are exactly +-1, or the run fails
(RunFailed: a real-valued network is never reported as a BNN).

Outcomes: a finished run returns ``status="FINISHED"``; a diverging run (non-finite loss)
returns ``status="FAILED"`` and never raises; an interruption (Ctrl-C, SIGTERM) or an exception
from a lifecycle plugin ends the run as KILLED and propagates; any other crash ends it as FAILED
and raises :class:`~benchbnn.core.errors.RunFailed`. A run that did not finish is tagged with its
failure class (:mod:`benchbnn.train.identity`): ``run`` when it failed because of itself
(divergence, an invalid configuration), ``environment`` when because of where it ran
(interrupted, killed, out of memory, I/O or permission errors), ``stopped`` when a lifecycle
plugin stopped it on purpose (it raised :class:`~benchbnn.core.errors.RunStopped`, as the
tuner's pruning does; the run ends KILLED and the exception propagates); ``run`` and
``stopped`` are results, ``environment`` is not.

Every run is tagged with its identity schema, its numerical environment and its owner process.
A finished run's checkpoint is deleted unless ``keep_checkpoint`` is set.

How the model runs (:func:`_prepare_model`) is part of the run's environment, not of its identity:
convolutional networks read their input batches in ``channels_last`` memory format (the weights
keep theirs, so optimizers and checkpoints see the same tensors); ``compile`` ("auto", "on",
"off") compiles the model with ``torch.compile`` (``nn.Module.compile``: the module, its
parameters and its state_dict stay the same objects) on CPU and CUDA, where "auto" compiles
convolutional networks only (measured: compiling the quick suite's MLP costs more seconds than its
short runs save); when compilation is unavailable or fails the run trains eagerly, with one
warning saying why, recorded in the tag ``benchbnn.compile``. Shapes are static
(``dynamic=False``): the training batch (the loader drops the last partial batch) and each
evaluation batch shape compile once, in the first epoch, and never again. Seconds spent in steps
and evaluation batches that compiled are the run metric ``compile_time_s`` and are left out of
the epoch's times. ``precision="bf16"`` runs forward passes under autocast (bfloat16: the
convolutions and matrix products and their backward passes; the loss in float32); the
parameters, binary weights (exactly +-1, which bfloat16 represents exactly) and optimizer state
stay float32. On a CPU it is accepted only where the processor computes in bfloat16 natively
(:func:`benchbnn.core.machine.native_bf16_cpu`: AVX-512 BF16, AMX or Arm BF16); elsewhere
PyTorch emulates it, slower than float32, and it is refused. bf16 changes the numbers (products
of +-1 are exact, but sums above 256 and the backward pass's gradients are rounded to 8
significant bits), so it is part of a run's numerical environment: a bf16 run is never reused
as an fp32 result or the other way round (:class:`benchbnn.train.identity.Environment`).
``binary_kernel`` ("auto", "int8", "float") lets binary convolutions whose input and weight are
exactly +-1 run their forward pass as an int8 convolution (:mod:`benchbnn.core.int8`): integer
sums, so the results are bit-identical to float32's and the choice is only a tag
(``benchbnn.binary_kernel``), like ``compile``. On a CPU the engine keeps freed host memory in
the process for the next step (:func:`benchbnn.core.host_memory.retain_freed_memory`: glibc's
``mallopt`` thresholds, once per process; ``BENCHBNN_HOST_MEMORY=release`` turns it off), which
saves the page faults of allocating every step's tensors on fresh pages; the tag
``benchbnn.host_memory`` records what the process does.

Per epoch the engine measures in process the seconds of the forward and backward passes
(``forward_backward_s``) and of the optimizer's own steps (``optimizer_step_s``; for an optimizer
that takes a closure, the closure's forward and backward count as forward/backward), with CUDA
events on CUDA (read once at the epoch's end) and the process clock elsewhere, plus the 1-minute
``load_average`` at the epoch's end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
import torch.nn.functional as F
from torch import nn

from benchbnn.core import hookspecs
from benchbnn.core.binary import (
    BinaryConv2d,
    binary_layers,
    set_binary_kernel,
    set_latent_mode,
    set_ste_window,
    split_parameters,
)
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError, RunFailed, RunStopped, first_line
from benchbnn.core.host_memory import host_memory_mode, retain_freed_memory
from benchbnn.core.int8 import TAG_BINARY_KERNEL, resolve_binary_kernel
from benchbnn.core.machine import NATIVE_BF16_FLAGS, cpu_model, load_average, native_bf16_cpu
from benchbnn.core.names import (
    COMPILE_MODES,
    DEFAULT_EXPERIMENT,
    FAILURE_ENVIRONMENT,
    FAILURE_RUN,
    FAILURE_STOPPED,
    PRECISIONS,
    RUN_METRICS,
    TAG_COMPILE,
    TAG_HOST_MEMORY,
    TAG_OPTIMIZER_IMPLEMENTATION,
    TAG_PRECISION,
    TAG_STEPS_PER_EPOCH,
)
from benchbnn.core.plugins import (
    PROJECT,
    get_architecture,
    get_dataset,
    get_optimizer,
    get_registry,
    hookimpl,
)
from benchbnn.core.popcount import popcount_ready
from benchbnn.core.specs import OptimizerSpec, RunContext
from benchbnn.data.pipeline import build_loaders
from benchbnn.optim.base import ClosureResult, EvaluationSamples
from benchbnn.optim.schedules import apply_schedules, validate_schedules
from benchbnn.train import checkpoint, distributed
from benchbnn.train.identity import (
    environment_tags,
    failure_class_of,
    identity_tags,
    owner_tags,
    reopened_tags,
)
from benchbnn.train.progress import ProgressDisplay
from benchbnn.train.tracking import MlflowTracker

#: read the device-side loss and flip ratio every this many steps (tracking, divergence check)
DEFAULT_LOG_EVERY = 10
#: the offset inside pi_t = log(F_t / N + e^-9) (Bop paper; Bop2ndOrder paper, eq. 11)
FLIP_LOG_OFFSET = math.exp(-9)
TOP_K = 5
#: evaluation batches hold at least this many images (evaluation has no gradients to keep)
EVAL_BATCH_SIZE = 256
#: how the model may run: compiled where it pays ("auto"), always when possible ("on"), never
#: devices torch.compile's default backend (inductor) generates code for
COMPILE_DEVICES = ("cpu", "cuda")


@dataclass
class RunResult:
    """How a run ended and what it measured.

    ``history`` has one dict per finished epoch (``epoch`` plus EPOCH_METRICS and any extras);
    ``metrics`` is the last epoch's plus RUN_METRICS. ``failure_class`` is None for a finished
    run, else ``"run"`` (it failed because of itself: a result), ``"environment"`` (because
    of where it ran: not a result) or ``"stopped"`` (a plugin stopped it on purpose: a
    result). ``checkpoint`` is the path of the last checkpoint, None when there is none (a
    finished run's is deleted unless kept).
    """

    status: str
    run_id: str | None
    config_hash: str
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    checkpoint: str | None = None
    failure_class: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"


@dataclass(eq=False)
class Run:
    """The engine's view of the run in progress, as lifecycle hooks receive it.

    Plugins read these fields and never replace them:

    * ``config`` the :class:`~benchbnn.core.config.RunConfig` being trained, ``config_hash``
      its hash; ``hparams`` the optimizer hyperparameters with defaults filled in;
      ``schedules`` hyperparameter name -> :class:`~benchbnn.optim.schedules.Schedule`;
      ``arch_options`` the architecture options with defaults filled in.
    * ``device`` the ``torch.device``; ``world`` the process group view (``rank`` and
      ``world_size`` properties; 0 and 1 without torchrun).
    * ``data`` the :class:`~benchbnn.data.pipeline.DataBundle` (train / val / test loaders,
      ``num_classes``, ``image_shape``); ``model`` the ``nn.Module``; ``optimizer`` the
      ``torch.optim.Optimizer``; ``binary_params`` and ``real_params`` the two parameter lists it
      was built with; ``l2_params`` those under the suite's L2 penalty.
    * ``epoch`` the current epoch (from 1) and ``step`` the optimizer steps taken so far;
      ``steps_per_epoch``, ``total_steps``; ``start_epoch`` the epochs already done when
      resuming.
    * ``history`` one metric dict per finished epoch; ``run_metrics`` run-level figures
      (``binary_weights``, ``real_parameters``, ``state_bytes_per_binary_weight``, ...).
    * ``run_id`` the MLflow run id (set by the tracking plugin in ``run_start``; None on ranks
      other than 0 and until then); ``tracking_uri``, ``experiment``, ``tags``,
      ``parent_run_id``, ``run_name``.
    * ``log_every`` (steps between reads of device-side figures), ``quiet``,
      ``checkpoint_dir``, ``replaced_checkpoint_epoch`` (set when a checkpoint was replaced),
      ``note`` (shown by the progress display when the run starts).
    * ``ste_window`` the scheduled hyperparameter that sets the straight-through window of
      ``ste_layers`` (the model's binary layers) at every step; None when none is scheduled.
    * ``optimizer_spec`` the optimizer's :class:`~benchbnn.core.specs.OptimizerSpec`;
      ``context`` the :class:`~benchbnn.core.specs.RunContext` the optimizer was built with.
    """

    config: RunConfig
    config_hash: str
    hparams: dict[str, Any]
    schedules: dict[str, Any]
    arch_options: dict[str, Any]
    device: torch.device
    world: distributed.World
    data: Any = None
    # Set by the engine before any hook sees the run (hooks never see a run without them).
    model: nn.Module = None  # type: ignore[assignment]
    optimizer: torch.optim.Optimizer = None  # type: ignore[assignment]
    binary_params: list[nn.Parameter] = field(default_factory=list)
    real_params: list[nn.Parameter] = field(default_factory=list)
    l2_params: list[nn.Parameter] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    start_epoch: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    run_metrics: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    run_name: str | None = None
    log_every: int = DEFAULT_LOG_EVERY
    quiet: bool = False
    checkpoint_dir: Path | None = None
    replaced_checkpoint_epoch: int | None = None
    note: str | None = None  # shown by the progress display when the run starts
    #: the scheduled hyperparameter the binary layers' straight-through window follows (the
    #: optimizer's ``ste_window``), and those layers; None and empty when nothing follows
    ste_window: str | None = None
    ste_layers: list[Any] = field(default_factory=list)
    #: the optimizer's spec (its declaration: forward mode, closure, divergence advice) and the
    #: RunContext it was built with; set with the optimizer
    optimizer_spec: OptimizerSpec | None = None
    context: RunContext | None = None
    #: how the model runs (see :func:`_prepare_model`): the requested compile mode, whether it
    #: is compiled now, whether inputs go channels_last, the precision; and the seconds spent
    #: compiling (in all, and in the current epoch), and the training images of the current
    #: epoch's steps that compiled (left out of ``images_per_s`` with their seconds)
    compile_mode: str = "auto"
    compiled: bool = False
    channels_last: bool = False
    precision: str = "fp32"
    compile_time_s: float = 0.0
    epoch_compile_s: float = 0.0
    epoch_compile_images: int = 0
    #: the binary layers' kernel, "int8" or "float" (``binary_kernel`` of :func:`train`
    #: resolved: :func:`benchbnn.core.int8.resolve_binary_kernel`)
    binary_kernel: str = "float"

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def world_size(self) -> int:
        return self.world.world_size


class _Diverged(Exception):
    """The training loss became NaN or infinite."""


class _PluginRaised(Exception):
    """A lifecycle-hook implementation raised ``original``."""

    def __init__(self, original: BaseException):
        super().__init__(repr(original))
        self.original = original

    def ending(self) -> tuple[str, str]:
        """``(failure reason, failure class)`` of the run the plugin stopped: a
        :class:`~benchbnn.core.errors.RunStopped` stops it on purpose (class ``stopped``, its
        own words as the reason); anything else is a plugin that broke (class ``environment``:
        not a result of the run, which compare redoes)."""
        if isinstance(self.original, RunStopped):
            return self.original.record(), FAILURE_STOPPED
        return f"stopped by a plugin: {self.original!r}", FAILURE_ENVIRONMENT


# --- resolving and validating ------------------------------------------------------------------


def canonical_config(config: RunConfig | Mapping[str, Any]) -> RunConfig:
    """``config`` with hyperparameters converted to their types and schedules written as data.

    ``--set gamma=1e-7`` (a string) and ``gamma = 1e-7`` in a suite (a float) then give the same
    configuration and the same :meth:`~benchbnn.core.config.RunConfig.config_hash`. Unknown
    names and malformed values raise BenchbnnError, and so does a network of more parameters than
    :data:`benchbnn.core.limits.MAX_PARAMETERS` (counted on the meta device, nothing allocated).
    Already canonical configurations come back unchanged.
    """

    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config)
    try:
        config.check_budget()
    except BenchbnnError as exc:
        raise BenchbnnError(f"{exc}; fix the run configuration") from None
    spec = get_optimizer(config.optimizer)
    resolved = spec.resolve(**dict(config.hparams))
    # every epoch start of the run (the steps per epoch are known once the data are: _build)
    schedules = validate_schedules(
        spec, dict(config.schedules), epochs=config.epochs, hparams=config.hparams
    )
    get_dataset(config.dataset)
    arch_options = get_architecture(config.arch).resolve_options(config.arch_options)
    from benchbnn.core.limits import check_model_size

    check_model_size(config.arch, config.dataset, arch_options)  # counted, not allocated
    return dataclasses.replace(
        config,
        hparams={k: resolved[k] for k in config.hparams},
        schedules={k: dict(s.to_dict()) for k, s in schedules.items()},
    )


def _new_run(
    config: RunConfig | Mapping[str, Any], device: torch.device, world: distributed.World
) -> Run:
    """Everything that needs no data or model: names, hyperparameters, schedules, options."""

    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config)
    canonical_config(config)  # validates every name and value; the run keeps the config as given
    spec = get_optimizer(config.optimizer)
    return Run(
        config=config,
        config_hash=config.config_hash(),
        hparams=spec.resolve(**dict(config.hparams)),
        schedules=validate_schedules(spec, dict(config.schedules), hparams=config.hparams),
        arch_options=get_architecture(config.arch).resolve_options(config.arch_options),
        device=device,
        world=world,
    )


def _plugin_manager(own: Iterable[Any], extra: Iterable[Any]) -> pluggy.PluginManager:
    """Installed plugins, the engine's own, then the caller's (called first of all)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name, plugin in get_registry().plugin_manager.list_name_plugin():
        if plugin is not None:
            pm.register(plugin, name=name)
    for plugin in [*own, *extra]:
        if pm.is_registered(plugin):
            continue
        try:
            pm.register(plugin)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise BenchbnnError(f"lifecycle plugin {plugin!r} cannot be used: {exc}") from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise BenchbnnError(f"a lifecycle plugin implements an unknown hook: {exc}") from None
    return pm


# --- building ------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed every generator the run may touch (python, numpy, torch on all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def l2_parameters(model: nn.Module, real_params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Weights that L2 applies to: the real-valued (full-precision) conv and linear weights.

    Binary weights (latent or not), batch-norm parameters and biases are left out, as in the
    XNOR-Net setting of the paper (5e-7 on the full-precision first and last layers).
    """
    real = {id(p) for p in real_params}
    layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, layers) and isinstance(m.weight, nn.Parameter) and id(m.weight) in real
    ]


def _set_latent_mode(run: Run, spec: OptimizerSpec) -> None:
    """Put the model's binary layers in the optimizer's mode, with its straight-through window.

    A latent-weight optimizer that declares ``ste_window`` sets the window to that
    hyperparameter's value at step 0 (its schedule's first value when scheduled; then
    :func:`_follow_ste_window` keeps it in step). Any other optimizer leaves the window at 1.
    Raises HyperparameterError for a window that is not a positive number.
    """
    name = spec.ste_window if spec.latent_weights else None
    window = 1.0 if name is None else run.hparams[name]
    if name is not None and name in run.schedules:
        run.ste_window = name
        run.ste_layers = [layer for _, layer in binary_layers(run.model)]
        window = run.schedules[name].value(0, run.steps_per_epoch, run.total_steps)
    set_latent_mode(run.model, bool(spec.latent_weights), clip=window)
    # binary mode feeds the weights as they are: +-1 only for forward="sign" optimizers
    set_binary_kernel(run.model, run.binary_kernel, sign_weights=spec.forward == "sign")


def _follow_ste_window(run: Run, step: int) -> None:
    """Set the binary layers' window to its hyperparameter's scheduled value at ``step`` (from 0).

    Called after a resume, so that the layers hold the window of the last step taken; during
    training :func:`_optimizer_step` sets it together with the optimizer's value.
    """
    if run.ste_window is not None:
        value = run.schedules[run.ste_window].value(step, run.steps_per_epoch, run.total_steps)
        set_ste_window(run.ste_layers, value)


def _build(run: Run, data_dir: str | Path | None, download: bool) -> None:

    cfg = run.config
    if cfg.batch_size % run.world_size:
        raise BenchbnnError(
            f"batch size {cfg.batch_size} is not divisible by the {run.world_size} ranks; the "
            f"batch size is the global one, split evenly over the ranks"
        )
    per_rank = cfg.batch_size // run.world_size
    run.data = build_loaders(
        cfg.dataset,
        data_dir=data_dir,
        batch_size=per_rank,
        seed=cfg.seed,
        eval_batch_size=max(per_rank, EVAL_BATCH_SIZE),
        subset=cfg.subset,
        val_fraction=cfg.val_fraction,
        download=download,
        rank=run.rank,
        world_size=run.world_size,
        device=run.device,
        options=dict(cfg.dataset_options) or None,
    )
    run.steps_per_epoch = len(run.data.train)
    if run.steps_per_epoch < 1:
        raise BenchbnnError(
            f"batch size {cfg.batch_size} leaves no full training batch of the "
            f"{run.data.train.num_samples} training images per rank; lower --batch-size"
        )
    run.total_steps = run.steps_per_epoch * cfg.epochs
    run.tags[TAG_STEPS_PER_EPOCH] = str(run.steps_per_epoch)
    # the last point before training: every step's scheduled value, now that the steps are known
    validate_schedules(
        get_optimizer(cfg.optimizer),
        run.schedules,
        epochs=cfg.epochs,
        steps_per_epoch=run.steps_per_epoch,
    )
    seed_everything(cfg.seed)
    channels, height, _ = run.data.image_shape
    arch = get_architecture(cfg.arch)
    model = arch.build(
        num_classes=run.data.num_classes,
        in_channels=channels,
        image_size=height,
        **dict(cfg.arch_options),
    )
    run.model = model.to(run.device)
    spec = get_optimizer(cfg.optimizer)
    _set_latent_mode(run, spec)
    run.binary_params, run.real_params = split_parameters(run.model)
    run.optimizer_spec = spec
    run.context = RunContext(
        train_size=run.data.train.dataset_size,
        steps_per_epoch=run.steps_per_epoch,
        total_steps=run.total_steps,
        world_size=run.world_size,
        device=run.device,
        seed=cfg.seed,
    )
    run.optimizer = spec.build(
        run.binary_params, run.real_params, context=run.context, **dict(cfg.hparams)
    )
    _tag_optimizer(run)
    run.l2_params = l2_parameters(run.model, run.real_params) if cfg.l2 else []
    _prepare_model(run)


# --- how the model runs --------------------------------------------------------------------


def check_run_mode(compile: str | bool, precision: str, device: torch.device) -> tuple[str, str]:
    """``(compile mode, precision)`` as the engine uses them, or BenchbnnError saying what to pass.

    ``compile`` is one of :data:`COMPILE_MODES` (True and False mean "on" and "off");
    ``precision`` one of :data:`PRECISIONS`; "bf16" on CUDA, or on a CPU that computes in
    bfloat16 natively (:func:`benchbnn.core.machine.native_bf16_cpu`), never on other devices.
    """
    mode = ("on" if compile else "off") if isinstance(compile, bool) else compile
    if mode not in COMPILE_MODES:
        raise BenchbnnError(
            f"compile must be one of {', '.join(COMPILE_MODES)} (or True/False), got {compile!r}"
        )
    if precision not in PRECISIONS:
        raise BenchbnnError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        _check_bf16_device(device)
    return mode, precision


def _check_bf16_device(device: torch.device) -> None:
    """Refuse bf16 autocast on a device that would emulate bfloat16 (BenchbnnError)."""
    if device.type == "cuda":
        return
    if device.type == "cpu":
        if native_bf16_cpu():
            return
        raise BenchbnnError(
            f"precision bf16 needs a CPU with native bfloat16 arithmetic (one of the flags "
            f"{', '.join(NATIVE_BF16_FLAGS)}), which this one ({cpu_model()}) lacks: PyTorch "
            f"would emulate it, slower than fp32; use --precision fp32 or a CUDA --device"
        )
    raise BenchbnnError(
        f"precision bf16 (autocast) runs on CUDA or a CPU with native bfloat16, not on "
        f"{device.type}; use --precision fp32"
    )


def _is_conv_net(model: nn.Module) -> bool:
    """Whether ``model`` has a convolution (then its inputs go channels_last)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def _why_eager(run: Run, conv_net: bool) -> tuple[str | None, bool]:
    """``(reason, warn)``: why the model runs eagerly (None: compile it) and whether to warn.

    "auto" leaves networks without convolutions eager: measured on the quick suite (digits,
    bnn-mlp, 20 epochs of a few steps), compiling costs more seconds than it saves.
    """
    mode = run.compile_mode
    if mode == "off":
        return "compile off", False
    if run.device.type not in COMPILE_DEVICES:
        return f"torch.compile does not support {run.device.type} here", mode == "on"
    if mode == "auto" and not conv_net:
        return "auto: no convolutions, compiling would not pay", False
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile is not supported by this Python", True
    except Exception as exc:
        return f"torch.compile is unavailable: {_first_line(exc)}", True
    return None, False


#: Compiled variants torch.compile keeps per Python frame before it runs that frame eagerly
#: (``torch._dynamo.config.recompile_limit``, 8 by default). A worker trains many runs in one
#: process and every run adds variants to the model's shared forward frames (its train,
#: evaluation and last-batch shapes; latent or binary mode; the binary kernel), so with the
#: default the ninth variant ran eagerly, silently, while the run said "compiled".
RECOMPILE_LIMIT = 64


def _allow_recompiles() -> None:
    """Raise torch.compile's per-frame recompile limit to :data:`RECOMPILE_LIMIT` (never lower
    it: a user's larger setting stays)."""
    import torch._dynamo.config as dynamo_config

    if getattr(dynamo_config, "recompile_limit", RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
        dynamo_config.recompile_limit = RECOMPILE_LIMIT


def _first_line(exc: BaseException) -> str:
    """:func:`~benchbnn.core.errors.first_line`, at most 300 characters (for a tag)."""
    return first_line(exc)[:300]


def _prepare_model(run: Run) -> None:
    """Channels-last inputs for convolutional networks; compile the model as ``compile_mode``
    asks (``nn.Module.compile``, static shapes); tag how it runs (TAG_COMPILE, TAG_PRECISION).
    """
    conv_net = _is_conv_net(run.model)
    run.channels_last = conv_net and run.device.type in COMPILE_DEVICES
    why, warn = _why_eager(run, conv_net)
    if why is None:
        try:
            _allow_recompiles()
            run.model.compile(dynamic=False)
            run.compiled = True
        except Exception as exc:
            why, warn = f"compilation failed: {_first_line(exc)}", True
    _tag_mode(run, why)
    run.tags[TAG_BINARY_KERNEL] = _binary_kernel_tag(run)
    if run.tags[TAG_BINARY_KERNEL] == "int8":
        popcount_ready()  # a first build (about 25 s) here, not in the first timed step
    if run.device.type == "cpu":
        run.tags[TAG_HOST_MEMORY] = retain_freed_memory()
    if warn:
        _warn_eager(why)


def _binary_kernel_tag(run: Run) -> str:
    """What the binary convolutions run on: "int8" when at least one of them may use the exact
    integer forward (:meth:`benchbnn.core.binary.BinaryConv2d.int8_applies`), else "float"
    with the reason."""
    if run.binary_kernel == "float":
        return "float"
    if run.precision != "fp32":
        return f"float ({run.precision} autocast)"
    convs = [layer for _, layer in binary_layers(run.model) if isinstance(layer, BinaryConv2d)]
    if not any(c.binary_operands for c in convs):
        return "float (no binary convolution with +-1 inputs and weights)"
    return "int8"


def _tag_optimizer(run: Run) -> None:
    """Record how the optimizer's step runs (TAG_OPTIMIZER_IMPLEMENTATION), for optimizers with
    an ``implementation`` attribute; "reference (compile failed: ...)" once a compiled step fell
    back to the reference path (``compile_error``)."""
    implementation = getattr(run.optimizer, "implementation", None)
    if not isinstance(implementation, str):
        return
    error = getattr(run.optimizer, "compile_error", "")
    if implementation == "compiled" and error:
        implementation = f"reference (compile failed: {error})"
    run.tags[TAG_OPTIMIZER_IMPLEMENTATION] = implementation


def _tag_mode(run: Run, why: str | None) -> None:
    run.tags[TAG_COMPILE] = "compiled" if why is None else f"eager ({why})"
    run.tags[TAG_PRECISION] = run.precision


def _warn_eager(why: str | None) -> None:
    warnings.warn(f"benchbnn: training eagerly ({why})", RuntimeWarning, stacklevel=3)


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exception types torch.compile raises when it cannot compile (not the model's own)."""
    import torch._dynamo.exc

    kinds: list[type[BaseException]] = [torch._dynamo.exc.TorchDynamoException]
    try:
        from torch._inductor.exc import InductorError

        kinds.append(InductorError)
    except ImportError:
        pass
    return tuple(kinds)


def _fall_back(run: Run, exc: BaseException) -> None:
    """Stop compiling after ``exc`` (raised while compiling): eager from now on, one warning."""
    run.model._compiled_call_impl = None  # what nn.Module.compile set
    run.compiled = False
    why = f"compilation failed: {_first_line(exc)}"
    _tag_mode(run, why)
    _warn_eager(why)


def _autocast(run: Run) -> contextlib.AbstractContextManager[Any]:
    if run.precision == "bf16":
        return torch.autocast(run.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _forward(run: Run, images: torch.Tensor) -> torch.Tensor:
    """The model's logits (batch x classes, float32) for ``images`` as the run runs the model:
    channels_last, under autocast for bf16, compiled, falling back to eager if compiling fails.
    """
    if run.channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    if run.compiled:
        try:
            with _autocast(run):
                return run.model(images).float()
        except _compile_errors() as exc:
            _fall_back(run, exc)
    with _autocast(run):
        return run.model(images).float()


def _compile_count() -> int:
    """Grows whenever torch.compile compiles something in this process: the frames it has
    compiled plus the graphs it has captured (a ``fullgraph`` function, such as an optimizer's
    compiled step, counts as a graph but not always as a frame)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"]) + int(counters["stats"]["unique_graphs"])


class _StepClock:
    """Seconds of the forward/backward passes and optimizer steps of one epoch, in process.

    On CUDA each mark records an event, read once at the epoch's end (:meth:`totals`
    synchronises then, never per step); elsewhere marks are ``time.perf_counter()``, as CPU
    kernels run synchronously. A step's spans are pending until :meth:`end_step` keeps or
    drops them (a step that compiled counts as compile time instead).
    """

    NAMES = ("forward_backward_s", "optimizer_step_s")

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[str, Any, Any, float]] = []
        self._kept: list[tuple[str, Any, Any, float]] = []

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add(self, name: str, start: Any, end: Any, sign: float = 1.0) -> None:
        """Count ``end - start`` (``sign`` -1: take it off) towards ``name``."""
        self._pending.append((name, start, end, sign))

    def end_step(self, keep: bool = True) -> None:
        if keep:
            self._kept.extend(self._pending)
        self._pending = []

    def totals(self) -> dict[str, float]:
        """Seconds per name over the kept steps."""
        sums = dict.fromkeys(self.NAMES, 0.0)
        if self.cuda and self._kept:
            torch.cuda.synchronize()
        for name, start, end, sign in self._kept:
            seconds = start.elapsed_time(end) / 1000.0 if self.cuda else end - start
            sums[name] += sign * seconds
        return {k: max(v, 0.0) for k, v in sums.items()}


def _restore(run: Run, state: Mapping[str, Any]) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    checkpoint.set_rng_state(state["rng"])
    run.history = [dict(h) for h in state["history"]]
    run.start_epoch = run.epoch = int(state["epoch"])
    run.step = int(state["step"])
    _follow_ste_window(run, max(run.step - 1, 0))
    if run.world.is_main:
        run.run_id = state.get("run_id")


def _resume(run: Run, tracker: MlflowTracker | None) -> None:
    """Continue ``run`` from its checkpoint, if there is one (else a note says so).

    The checkpoint is first checked against the run as built (:func:`checkpoint.check_resumable`);
    plugin releases that changed without changing the state layout are named in ``run.note``.
    Raises CheckpointMismatch when it cannot continue the run (unreadable, another format, or
    made with another model or optimizer state layout, or restoring it fails), after ending its
    MLflow run KILLED with the reason, so that no run is left RUNNING that nothing will continue.
    """
    assert run.checkpoint_dir is not None, "resuming needs a checkpoint folder"
    path = run.checkpoint_dir / checkpoint.FILENAME
    try:
        state = checkpoint.load(run.checkpoint_dir, run.config_hash)
        if state is None:
            run.note = f"no checkpoint in {run.checkpoint_dir} to resume from; starting over"
            return
        changes = checkpoint.check_resumable(state, path, run.config, run.model, run.optimizer)
        try:
            _restore(run, state)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise checkpoint.CheckpointMismatch(
                f"checkpoint {path} cannot be restored ({why})",
                run_id=state.get("run_id"),
                epoch=state.get("epoch"),
            ) from exc
    except checkpoint.CheckpointMismatch as exc:
        if tracker is not None:
            tracker.abandon(exc.run_id, f"its checkpoint cannot be resumed: {exc.reason}")
        raise
    if changes:
        run.note = (
            f"the checkpoint was made with other plugin releases ({'; '.join(changes)}); "
            f"their state layout is the same, so the run continues"
        )
    if tracker is not None:
        _retag_resumed(run, tracker)


def _retag_resumed(run: Run, tracker: MlflowTracker) -> None:
    """Give the tracked run being resumed its new owner (this process), and mark its
    environment mixed when it was started in another one (:func:`identity.reopened_tags`).

    A run that is not in this store (the tracker then creates one with this run's tags) is left
    alone; a store error becomes a warning.
    """
    if not run.run_id or tracker.client is None:
        return
    from mlflow.entities import RunTag

    try:
        existing = tracker.client.get_run(run.run_id)
    except Exception:  # not in this store: the tracker creates a new run with the tags
        return
    tags = reopened_tags(existing.data.tags, run.tags)
    try:
        tracker.client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    except Exception as exc:
        warnings.warn(f"benchbnn: could not tag resumed run {run.run_id}: {exc!r}", stacklevel=2)


def _save(run: Run) -> str | None:
    if not run.world.is_main or run.checkpoint_dir is None:
        return None
    optimizer_state = run.optimizer.state_dict()
    path = checkpoint.save(
        run.checkpoint_dir,
        {
            "config_hash": run.config_hash,
            "config": run.config.to_dict(),
            checkpoint.RECORD: checkpoint.made_with(
                run.config_hash, run.config, optimizer_state, run.optimizer
            ),
            "epoch": run.epoch,
            "step": run.step,
            "model": run.model.state_dict(),
            "optimizer": optimizer_state,
            "rng": checkpoint.rng_state(),
            "history": run.history,
            "run_id": run.run_id,
            "tracking_uri": run.tracking_uri,
            "world_size": run.world_size,
        },
    )
    return str(path)


# --- the loop ------------------------------------------------------------------------------


def _call(hook: Any, **kwargs: Any) -> None:
    try:
        hook(**kwargs)
    except Exception as exc:
        raise _PluginRaised(exc) from exc


def _stats_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(batch, k) booleans: is the label among the top-1 .. top-k predictions."""
    k = min(TOP_K, logits.shape[1])
    return logits.topk(k, dim=1).indices.eq(labels.unsqueeze(1))


def _check_finite(run: Run, totals: torch.Tensor) -> None:
    """Raise _Diverged if the running loss sum is NaN or infinite on any rank (a host sync)."""
    bad = (~torch.isfinite(totals[0])).to(torch.float32).reshape(1)
    distributed.all_reduce_max(bad, run.world)
    if bad.item():
        loss = totals[0].item()
        spec = run.optimizer_spec or get_optimizer(run.config.optimizer)
        raise _Diverged(
            f"training diverged: the loss is {loss} in epoch {run.epoch} (by step {run.step}); "
            f"{spec.divergence_hint()}"
        )


def _optimizer_step(
    run: Run, images: torch.Tensor, labels: torch.Tensor, clock: _StepClock | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Schedules, forward, cross-entropy, backward, gradient averaging, L2, step.

    ``clock`` receives the spans of the forward/backward passes (with gradient averaging and
    L2) and of the optimizer step.
    """
    clock = clock or _StepClock(run.device)
    if run.schedules:
        values = apply_schedules(
            run.optimizer, run.schedules, run.step - 1, run.steps_per_epoch, run.total_steps
        )
        if run.ste_window is not None:  # the layers' window moves with the optimizer's value
            set_ste_window(run.ste_layers, values[run.ste_window])
    if run.optimizer_spec is not None and run.optimizer_spec.needs_closure:
        return _closure_step(run, images, labels, clock)
    started = clock.mark()
    logits = _forward(run, images)
    loss = F.cross_entropy(logits, labels)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _finish_gradients(run)
    passed = clock.mark()
    run.optimizer.step()
    clock.add("forward_backward_s", started, passed)
    clock.add("optimizer_step_s", passed, clock.mark())
    return loss.detach(), logits.detach()


def _finish_gradients(run: Run) -> None:
    """Average the gradients over the ranks, then add the L2 term (after each backward)."""
    if run.world.parallel:
        distributed.average_gradients(run.binary_params + run.real_params, run.world)
    for p in run.l2_params:  # d/dw of l2 * ||w||^2, as Keras' l2 regularizer
        if p.grad is not None:
            p.grad.add_(p.detach(), alpha=2.0 * run.config.l2)


def _closure_step(
    run: Run, images: torch.Tensor, labels: torch.Tensor, clock: _StepClock
) -> tuple[torch.Tensor, torch.Tensor]:
    """``optimizer.step(closure)`` for an optimizer that declares ``needs_closure``.

    Each call of the closure clears the gradients, runs the forward and backward pass on this
    batch at the weights the parameters hold then, averages the gradients over the ranks (every
    rank calls it as often as the others: the optimizer's draws are seeded alike) and adds the
    L2 term; it returns a :class:`~benchbnn.optim.base.ClosureResult` (loss, logits). The
    step's metrics are the first call's. The closure's time counts as forward/backward and is
    taken off the optimizer step's.
    """
    calls: list[ClosureResult] = []
    optimizer = run.optimizer
    assert run.model is not None and optimizer is not None

    def closure() -> Any:
        started = clock.mark()
        with torch.enable_grad():
            optimizer.zero_grad(set_to_none=True)
            logits = _forward(run, images)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
        _finish_gradients(run)
        ended = clock.mark()
        clock.add("forward_backward_s", started, ended)
        clock.add("optimizer_step_s", started, ended, sign=-1.0)
        result = ClosureResult(loss.detach(), logits.detach())
        calls.append(result)
        return result

    started = clock.mark()
    optimizer.step(closure)
    clock.add("optimizer_step_s", started, clock.mark())
    if not calls:
        raise RunFailed(
            f"optimizer {run.config.optimizer!r} declares needs_closure but its step did not "
            f"call the closure"
        )
    return calls[0].loss, calls[0].logits


@torch.no_grad()
def _tally(
    totals: torch.Tensor,
    flips: torch.Tensor,
    loss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    optimizer: Any,
) -> tuple[Any, Any]:
    """Add one step to the device-side running sums; returns (F_t/N, pi_t) or (None, None)."""
    n = labels.shape[0]
    hits = _hits(logits, labels)
    totals[0] += loss * n
    totals[1] += hits[:, 0].sum()
    totals[2] += hits.sum()
    totals[3] += n
    ratio = getattr(optimizer, "flip_ratio", None)
    if ratio is None:
        return None, None
    log_ratio = torch.log(ratio + FLIP_LOG_OFFSET)
    flips[0] += ratio
    flips[1] += log_ratio
    return ratio, log_ratio


def _train_epoch(
    run: Run, pm: pluggy.PluginManager, epoch: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """One pass over the training data; returns (totals, flip sums) as device tensors and the
    seconds of forward/backward and optimizer steps (:class:`_StepClock`).

    Nothing here reads a device value except the divergence check every ``log_every`` steps.
    A step during which anything compiled counts towards ``run.epoch_compile_s`` instead.
    """
    step_end, spe = pm.hook.benchbnn_step_end, run.steps_per_epoch
    dtype = _stats_dtype(run.device)
    totals = torch.zeros(4, dtype=dtype, device=run.device)  # loss x n, top-1, top-5, n
    flips = torch.zeros(2, dtype=dtype, device=run.device)  # sum of F_t/N, sum of pi_t
    run.model.train()
    run.data.train.set_epoch(epoch)
    clock = _StepClock(run.device)
    for batch, (images, labels) in enumerate(run.data.train, 1):
        run.step += 1
        with _compile_watch(run) as compiled:
            loss, logits = _optimizer_step(run, images, labels, clock)
        clock.end_step(keep=not compiled)
        if compiled:  # its seconds are compile time, so its images are not in images_per_s
            run.epoch_compile_images += labels.shape[0]
        ratio, log_ratio = _tally(totals, flips, loss, logits, labels, run.optimizer)
        _call(
            step_end,
            run=run,
            step=run.step,
            logs={
                "loss": loss,
                "flip_ratio": ratio,
                "flip_log_ratio": log_ratio,
                "totals": totals,
                "epoch": epoch,
                "batch": batch,
                "batches": spe,
                "images": labels.shape[0],
            },
        )
        if run.step % run.log_every == 0:
            _check_finite(run, totals)
    _check_finite(run, totals)
    return totals, flips, clock.totals()


class _Compiled:
    """Whether anything compiled inside a :func:`_compile_watch` block (truthy then)."""

    def __init__(self) -> None:
        self.value = False

    def __bool__(self) -> bool:
        return self.value


@contextlib.contextmanager
def _compile_watch(run: Run) -> Iterator[_Compiled]:
    """Adds the block's wall seconds to the run's compile time when something compiled in it:
    the model (compiled mode) or the optimizer's step (its compiled implementation, also under
    an eager model), so that epoch times never include compiling.

    The block's own execution, one step or batch, is counted with it: negligible next to
    compiling (seconds to minutes).
    """
    seen = _Compiled()
    before, started = _compile_count(), time.perf_counter()
    yield seen
    if _compile_count() != before:
        seen.value = True
        seconds = time.perf_counter() - started
        run.compile_time_s += seconds
        run.epoch_compile_s += seconds


class _Networks:
    """The networks one evaluation runs: the model as it is, or the optimizer's sampled networks
    (:class:`~benchbnn.optim.base.EvaluationSamples`). The first time each is used, every binary
    layer's weight, as the layer uses it, is checked to be exactly +-1."""

    def __init__(self, run: Run, samples: EvaluationSamples | None) -> None:
        self.run, self.samples = run, samples
        self.count = 1 if samples is None else samples.count
        self._checked: set[int] = set()

    def use(self, index: int) -> None:
        if self.samples is not None:
            self.samples.draw(index)
        if index not in self._checked:
            _check_evaluated_weights(self.run, index if self.samples is not None else None)
            self._checked.add(index)


def _check_evaluated_weights(run: Run, sample: int | None = None) -> None:
    """Raise RunFailed unless every binary layer evaluates with exactly +-1 weights: a network
    of real-valued weights is not a BNN, and its accuracy must never be reported as one."""
    assert run.model is not None
    for name, layer in binary_layers(run.model):
        weight, _ = layer.binarized_weight()
        if not bool((weight.abs() == 1).all()):
            provides = getattr(run.optimizer, "provides_evaluation_weights", False)
            which = f", sampled network {sample}" if sample is not None else ""
            fix = (
                "its evaluation_weights() must put exactly ±1 weights in place"
                if provides
                else "declare forward='latent', or forward='identity' with evaluation_weights()"
            )
            raise RunFailed(
                f"evaluated weights of layer {name or '(model)'} are not ±1: the optimizer must "
                f"provide evaluation weights (optimizer {run.config.optimizer!r}{which}; {fix})"
            )


@contextlib.contextmanager
def _evaluation_networks(run: Run) -> Iterator[_Networks]:
    """The optimizer's evaluation weights in place (``optimizer.evaluation_weights()``, when
    it has one) for the duration of an evaluation; what it yields says which networks to run."""
    provide = getattr(run.optimizer, "evaluation_weights", None)
    manager = provide() if callable(provide) else contextlib.nullcontext()
    with torch.no_grad(), manager as samples:
        if samples is not None:
            count, draw = getattr(samples, "count", None), getattr(samples, "draw", None)
            if not (isinstance(count, int) and count >= 1 and callable(draw)):
                raise RunFailed(
                    f"optimizer {run.config.optimizer!r}: evaluation_weights() yielded "
                    f"{samples!r}; yield None (evaluate the network as it is) or "
                    f"EvaluationSamples(count >= 1, draw)"
                )
        yield _Networks(run, samples)


def _mean_prediction(run: Run, networks: _Networks, images: torch.Tensor) -> torch.Tensor:
    """The log of the sampled networks' mean softmax output (log-probabilities, batch x classes)."""
    probabilities: torch.Tensor | None = None
    assert run.model is not None
    for index in range(networks.count):
        networks.use(index)
        p = F.softmax(_forward(run, images), dim=1)
        probabilities = p if probabilities is None else probabilities.add_(p)
    assert probabilities is not None
    probabilities.div_(networks.count)
    return probabilities.clamp_min_(torch.finfo(probabilities.dtype).tiny).log_()


@torch.no_grad()
def _evaluate(run: Run, loader: Any, networks: _Networks | None = None) -> torch.Tensor:
    """Summed loss, top-1 hits, top-5 hits and images over ``loader`` (this rank's share).

    ``networks`` (from :func:`_evaluation_networks`) says which networks to evaluate; sampled
    networks are scored by their mean prediction.
    """
    run.model.eval()
    sums = torch.zeros(4, dtype=_stats_dtype(run.device), device=run.device)
    for images, labels in loader:
        with _compile_watch(run):
            logits, loss = _evaluate_batch(run, networks, images, labels)
        hits = _hits(logits, labels)
        sums[0] += loss
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.sum()
        sums[3] += labels.shape[0]
    return sums


def _evaluate_batch(
    run: Run, networks: _Networks | None, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits or mean log-probabilities, batch x classes; summed loss) of one batch."""
    if networks is None or networks.samples is None:
        if networks is not None:
            networks.use(0)
        logits = _forward(run, images)
        return logits, F.cross_entropy(logits, labels, reduction="sum")
    logits = _mean_prediction(run, networks, images)
    return logits, F.nll_loss(logits, labels, reduction="sum")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA max allocated, else the RSS high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows: no getrusage
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB else


def _split_metrics(prefix: str, sums: list[float]) -> dict[str, float]:
    loss, top1, top5, n = sums
    n = max(n, 1.0)
    return {
        f"{prefix}_loss": loss / n,
        f"{prefix}_top1": 100.0 * top1 / n,
        f"{prefix}_top5": 100.0 * top5 / n,
    }


def _epoch_metrics(
    run: Run,
    parts: dict[str, torch.Tensor],
    flips: torch.Tensor,
    times: list[float],
    steps: Mapping[str, float],
) -> dict[str, Any]:
    """Reduce this epoch's sums over the ranks (one all-reduce each) into the metric dict.

    ``times`` are the (training, whole epoch) wall seconds without compiling; ``steps`` the
    seconds of forward/backward and optimizer steps (:class:`_StepClock`); each time is the
    slowest rank's.
    """
    names = list(parts)
    untimed = torch.tensor(
        [run.epoch_compile_images], dtype=_stats_dtype(run.device), device=run.device
    )
    summed = distributed.all_reduce_sum(torch.cat([*(parts[k] for k in names), untimed]), run.world)
    *values, untimed_images = summed.tolist()
    step_names = list(steps)
    local_max = torch.tensor(
        [*times, *steps.values(), peak_memory_mb(run.device)],
        dtype=_stats_dtype(run.device),
        device=run.device,
    )
    train_time, epoch_time, *step_times, peak = distributed.all_reduce_max(
        local_max, run.world
    ).tolist()
    metrics: dict[str, Any] = {"epoch": run.epoch}
    for i, name in enumerate(names):
        metrics.update(_split_metrics(name, values[4 * i : 4 * i + 4]))
    timed_images = values[3] - untimed_images  # the training images of the timed steps
    metrics["epoch_time_s"] = epoch_time
    metrics["images_per_s"] = timed_images / max(train_time, 1e-9) if timed_images else math.nan
    metrics.update(zip(step_names, step_times))
    load = load_average()
    if load is not None:
        metrics["load_average"] = load[0]
    if getattr(run.optimizer, "flip_ratio", None) is not None:
        flip_sum, log_sum = flips.tolist()
        metrics["flip_ratio"] = flip_sum / run.steps_per_epoch
        metrics["flip_log_ratio"] = log_sum / run.steps_per_epoch
    lr = _current_lr(run.optimizer)
    if lr is not None:
        metrics["lr"] = lr
    for name in run.schedules:
        value = next((g[name] for g in run.optimizer.param_groups if name in g), None)
        if value is not None:
            metrics[f"hparam.{name}"] = float(value)
    run.run_metrics["peak_memory_mb"] = peak
    return metrics


def _current_lr(optimizer: torch.optim.Optimizer) -> float | None:
    """The real-valued parameters' Adam lr (or the first group's lr)."""
    groups = optimizer.param_groups
    for group in [g for g in groups if g.get("kind") == "real"] + list(groups):
        if "lr" in group:
            return float(group["lr"])
    return None


def _run_epoch(run: Run, pm: pluggy.PluginManager, epoch: int) -> None:
    run.epoch, run.epoch_compile_s, run.epoch_compile_images = epoch, 0.0, 0
    _call(pm.hook.benchbnn_epoch_start, run=run, epoch=epoch)
    started = time.perf_counter()
    train_sums, flips, steps = _train_epoch(run, pm, epoch)
    train_time = time.perf_counter() - started - run.epoch_compile_s
    distributed.average_buffers(run.model, run.world)
    parts = {"train": train_sums}
    loaders = {split: getattr(run.data, split) for split in ("val", "test")}
    loaders = {split: loader for split, loader in loaders.items() if loader is not None}
    if loaders:  # with the optimizer's evaluation weights in place, checked to be exactly +-1
        with _evaluation_networks(run) as networks:
            for split, loader in loaders.items():
                parts[split] = _evaluate(run, loader, networks)
    epoch_time = time.perf_counter() - started - run.epoch_compile_s
    metrics = _epoch_metrics(run, parts, flips, [train_time, epoch_time], steps)
    if run.world.parallel and not distributed.check_in_sync(run.binary_params, run.world):
        raise RunFailed(f"binary weights differ between ranks after epoch {epoch}")
    run.history.append(metrics)
    _tag_optimizer(run)
    _call(pm.hook.benchbnn_epoch_end, run=run, epoch=epoch, metrics=metrics)
    _save(run)


def _run_metrics(run: Run) -> dict[str, Any]:
    opt = run.optimizer
    metrics = dict(run.run_metrics)
    metrics["binary_weights"] = int(
        getattr(opt, "num_binary_weights", None) or sum(p.numel() for p in run.binary_params)
    )
    metrics["real_parameters"] = int(sum(p.numel() for p in run.real_params))
    state_bytes = getattr(opt, "state_bytes_per_binary_weight", None)
    if callable(state_bytes):
        metrics["state_bytes_per_binary_weight"] = float(state_bytes())
    metrics.setdefault("peak_memory_mb", peak_memory_mb(run.device))
    metrics["compile_time_s"] = run.compile_time_s
    return {k: metrics[k] for k in RUN_METRICS if k in metrics}


def _result(run: Run, status: str, error: str | None) -> RunResult:
    """The run's outcome; never raises (what cannot be summarised is left out, with a warning).

    It runs on the failure path, where the optimizer or the history may be in any state: a
    summary that raised here would keep the run_end hooks, and so the tracker, from ending the
    MLflow run.
    """
    metrics: dict[str, Any] = {}
    try:
        last_epoch = run.history[-1] if run.history else {}
        metrics.update({k: v for k, v in last_epoch.items() if k != "epoch"})
        if run.optimizer is not None:
            metrics.update(_run_metrics(run))
    except Exception as exc:
        warnings.warn(f"benchbnn: could not summarise the run: {exc!r}", RuntimeWarning, 2)
    try:
        last = run.checkpoint_dir / checkpoint.FILENAME if run.checkpoint_dir else None
        saved = str(last) if last is not None and last.is_file() else None
    except OSError:
        saved = None
    return RunResult(
        status=status,
        run_id=run.run_id,
        config_hash=run.config_hash,
        history=[dict(h) for h in run.history],
        metrics=metrics,
        error=error,
        checkpoint=saved,
    )


def _end(pm: pluggy.PluginManager, run: Run, result: RunResult) -> None:
    """Call every run_end implementation, even when one of them fails.

    An exception is reported as a warning. An interruption inside one (KeyboardInterrupt,
    SystemExit) does not stop the others either, so that the tracker, called last, still ends
    the MLflow run; the first such interruption is raised again once all have run.
    """
    interrupted: BaseException | None = None
    for impl in reversed(pm.hook.benchbnn_run_end.get_hookimpls()):
        kwargs = {"run": run, "result": result}
        try:
            impl.function(*[kwargs[name] for name in impl.argnames])
        except Exception as exc:
            warnings.warn(
                f"benchbnn: plugin {impl.plugin_name!r} failed in run_end: {exc!r}",
                RuntimeWarning,
                stacklevel=2,
            )
        except BaseException as exc:
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while training (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _execute(run: Run, pm: pluggy.PluginManager) -> RunResult:
    """Run the epochs; end the run (run_end hooks) however they stop, then raise what stopped it.

    Never leaves the run without its run_end hooks: the summary (:func:`_result`) does not raise,
    and neither an exception nor an interruption inside one hook keeps the others from running.
    """
    status, error, why = "FINISHED", None, None
    pending: BaseException | None = None
    try:
        with _sigterm_interrupts():
            if run.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(run.device)
            _call(pm.hook.benchbnn_run_start, run=run)
            for epoch in range(run.start_epoch + 1, run.config.epochs + 1):
                _run_epoch(run, pm, epoch)
    except _Diverged as exc:
        status, error, why = "FAILED", str(exc), FAILURE_RUN
    except _PluginRaised as exc:  # KILLED: MLflow's only status for a run ended early
        status, pending = "KILLED", exc.original
        error, why = exc.ending()
    except KeyboardInterrupt as exc:
        status, error, pending = "KILLED", f"interrupted ({str(exc) or 'Ctrl-C'})", exc
        why = FAILURE_ENVIRONMENT
    except RunFailed as exc:
        status, error, pending, why = "FAILED", str(exc), exc, failure_class_of(exc)
    except Exception as exc:
        status, error, why = "FAILED", f"{type(exc).__name__}: {exc}", failure_class_of(exc)
        pending = RunFailed(f"run crashed: {error}")
        pending.__cause__ = exc
    except BaseException as exc:  # SystemExit and the like: end the run too, then let it go on
        status, error, pending = "KILLED", f"stopped ({type(exc).__name__}: {exc})", exc
        why = FAILURE_ENVIRONMENT
    result = _result(run, status, error)
    result.failure_class = why
    _end(pm, run, result)
    if pending is not None:
        raise pending
    return result


def train(
    config: RunConfig | Mapping[str, Any],
    *,
    data_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    resume: bool = False,
    quiet: bool = False,
    checkpoint_dir: str | Path | None = None,
    plugins: Iterable[Any] = (),
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    download: bool = False,
    log_every: int = DEFAULT_LOG_EVERY,
    keep_checkpoint: bool = False,
    compile: str | bool = "auto",
    precision: str = "fp32",
    binary_kernel: str = "auto",
) -> RunResult:
    """Train and evaluate one configuration; track it in MLflow; checkpoint every epoch.

    ``device`` defaults to CUDA when available. ``tracking_uri`` defaults to
    $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` in the working directory; ``tags`` are
    added to the MLflow run, nested under ``parent_run_id`` if given. Checkpoints go to
    ``checkpoint_dir`` (default ``.benchbnn/checkpoints/<config_hash>/``); ``resume`` continues
    from the last one and ends with the metrics an uninterrupted run would have had.
    ``plugins`` are extra lifecycle-hook implementations for this run only. ``log_every``: the
    per-step flip ratio is recorded, and divergence checked, every this many steps (the only
    host synchronisations of the training loop). Under torchrun the run is data-parallel over
    the ranks, ``batch_size`` being the global batch split evenly over them; only rank 0
    tracks, checkpoints and prints. Once the run has finished its checkpoint is deleted
    (:func:`benchbnn.train.checkpoint.remove`), unless ``keep_checkpoint``; an unfinished
    run's stays, to resume from.

    Besides ``tags``, the MLflow run is tagged with its identity schema, its numerical
    environment and the host, pid and start time of this process
    (:mod:`benchbnn.train.identity`); a run that does not finish also with its failure class.

    ``compile`` ("auto", "on", "off"; True/False) and ``precision`` ("fp32", or "bf16" on
    CUDA and on CPUs with native bfloat16) say how the model runs (see the module's
    docstring); neither is part of the run's configuration identity: they are tagged
    (TAG_COMPILE, TAG_PRECISION), the seconds spent compiling are the run metric
    ``compile_time_s``, and a bf16 run's numerical environment says bf16 (so compare reuses
    it only for bf16).

    ``binary_kernel`` ("auto", "int8", "float"; :data:`benchbnn.core.int8.BINARY_KERNELS`) says
    whether binary convolutions whose input and weight are exactly +-1 (fp32, CPU; latent mode,
    or binary mode with a forward="sign" optimizer) run their forward pass as an int8
    convolution: bit-identical results, so it is neither part of the identity nor of the
    numerical environment, only the tag ``benchbnn.binary_kernel``. "auto" uses int8 on CPUs
    where it pays (VNNI), "int8" wherever it applies (BenchbnnError where oneDNN's int8
    operators are missing or the device is not a CPU).

    On a CPU the process keeps freed host memory for reuse from the first run on (glibc's
    ``mallopt`` thresholds, process-wide: :mod:`benchbnn.core.host_memory`; set
    ``BENCHBNN_HOST_MEMORY=release`` to leave the C library's policy alone), recorded as the tag
    ``benchbnn.host_memory``.

    Raises BenchbnnError (nothing started) for a bad configuration or a bad
    ``$BENCHBNN_HOST_MEMORY``, RunFailed for a crash;
    returns ``status="FAILED"`` when training diverges. With ``resume``, a checkpoint that
    cannot continue the run (made with another optimizer state layout or model, in another
    format, or unreadable) raises :class:`~benchbnn.train.checkpoint.CheckpointMismatch`, a
    BenchbnnError saying what differs, with nothing trained and the checkpoint's MLflow run
    ended KILLED; :func:`train_or_start_over` starts such a run over instead.
    """

    if not isinstance(log_every, int) or log_every < 1:
        raise BenchbnnError(f"log_every must be a positive whole number, got {log_every!r}")
    world = distributed.world_from_env()
    run = _new_run(config, distributed.resolve_device(device, world.local_rank), world)
    run.compile_mode, run.precision = check_run_mode(compile, precision, run.device)
    host_memory_mode()  # a bad $BENCHBNN_HOST_MEMORY fails here, with nothing started
    run.binary_kernel = resolve_binary_kernel(binary_kernel, run.device)
    run.tags = {str(k): str(v) for k, v in (tags or {}).items()}
    run.tags.update(
        {
            **identity_tags(run.config),
            **environment_tags(run.device, world.world_size, run.precision),
            **owner_tags(),
        }
    )
    run.parent_run_id, run.log_every, run.quiet = parent_run_id, log_every, quiet
    run.run_name = run_name or (
        f"{run.config.optimizer}-{run.config.arch}-{run.config.dataset}-s{run.config.seed}"
    )
    run.experiment = experiment
    run.checkpoint_dir = checkpoint.run_dir(run.config_hash, checkpoint_dir)
    tracker = MlflowTracker(tracking_uri, experiment) if world.is_main else None
    own = [tracker, ProgressDisplay(quiet=quiet)] if tracker is not None else []
    pm = _plugin_manager(own, plugins)
    if tracker is not None:
        tracker.prepare()  # opens the store and experiment only: no run is created yet
        checkpoint.check_writable(run.checkpoint_dir)
        run.tracking_uri = tracker.uri
    run.world = distributed.init(world, run.device)
    try:
        _build(run, data_dir, download)
        if resume:
            _resume(run, tracker)
        elif world.is_main:
            run.replaced_checkpoint_epoch = checkpoint.saved_epoch(
                run.checkpoint_dir, run.config_hash
            )
        result = _execute(run, pm)
    finally:
        distributed.shutdown(run.world)
    if result.finished and world.is_main and not keep_checkpoint:
        checkpoint.remove(run.checkpoint_dir)
        result.checkpoint = None
    return result


def train_or_start_over(
    config: RunConfig | Mapping[str, Any],
    *,
    on_start_over: Callable[[checkpoint.CheckpointMismatch], None] | None = None,
    **kwargs: Any,
) -> RunResult:
    """Resume ``config`` from its checkpoint, or train it from scratch if that cannot continue it.

    For unattended callers (``compare``, workers), where ``benchbnn run --resume`` refuses:
    ``train(config, resume=True, **kwargs)``, and when its checkpoint was made with another
    optimizer state layout, model or format, or cannot be read, ``on_start_over`` receives the
    :class:`~benchbnn.train.checkpoint.CheckpointMismatch` saying why and the run starts over
    from epoch 1 in a new MLflow run. The checkpoint's MLflow run has ended KILLED with that
    reason, so no run's metric history mixes epochs of two state layouts; the checkpoint is
    replaced after the first new epoch. Raises what :func:`train` raises.
    """
    try:
        return train(config, resume=True, **kwargs)
    except checkpoint.CheckpointMismatch as exc:
        if on_start_over is not None:
            on_start_over(exc)
        started_over = _StartedOver(exc.reason)
    plugins = [*kwargs.pop("plugins", ()), started_over]
    return train(config, resume=False, plugins=plugins, **kwargs)


class _StartedOver:
    """Says why a run starts over although a checkpoint exists (see train_or_start_over).

    It replaces the progress display's "pass --resume to continue it" note, which would be
    wrong for a checkpoint that cannot continue the run.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    @hookimpl(tryfirst=True)
    def benchbnn_run_start(self, run: Run) -> None:
        run.replaced_checkpoint_epoch = None
        run.note = f"starting over: {self.reason}"

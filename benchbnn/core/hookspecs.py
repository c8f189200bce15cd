"""Every hook a benchbnn plugin can implement, in one place.

A plugin is a module (or any object) with functions marked ``@benchbnn.hookimpl`` whose names
match the functions below. Register it through the ``benchbnn`` entry-point group of your
package, with ``benchbnn -p module``, or with ``BENCHBNN_PLUGINS=module``.

Registration hooks take no arguments and return a list of frozen records from
``benchbnn.core.specs``; the host validates them once, when plugins load. Lifecycle hooks are called
by the training engine while a run progresses; tracking, progress display and extra metrics are
themselves plugins of these hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # types only: the engine sits above this module
    from benchbnn.core.specs import ArchitectureSpec, DatasetSpec, OptimizerSpec, SuiteSpec
    from benchbnn.train.engine import Run, RunResult

hookspec = pluggy.HookspecMarker("benchbnn")


# --- registration -----------------------------------------------------------------------------
#
# A hookspec is a declaration: pluggy reads its name, arguments and docstring and never calls
# its body, so the registration specs below, which declare what an implementation returns, keep
# an empty body and tell mypy so (``empty-body``) on each ``def`` line.


@hookspec
def benchbnn_optimizers() -> list[OptimizerSpec]:  # type: ignore[empty-body]  # spec only
    """Return the :class:`benchbnn.OptimizerSpec` records this plugin provides.

    Called once when plugins load. Each spec names the optimizer (kebab-case, unique across all
    installed plugins), declares its hyperparameters with defaults, valid ranges and search
    ranges, and gives a factory ``factory(binary_params, real_params, **hparams)`` that returns a
    ``torch.optim.Optimizer``. The usual implementation returns the specs derived from
    ``benchbnn.optim.BinaryOptimizer`` subclasses, which declare all of this once::

        @benchbnn.hookimpl
        def benchbnn_optimizers():
            return [benchbnn.optimizer_spec(MyOptimizer)]
    """


@hookspec
def benchbnn_architectures() -> list[ArchitectureSpec]:  # type: ignore[empty-body]  # spec only
    """Return the :class:`benchbnn.ArchitectureSpec` records this plugin provides.

    Called once when plugins load. The factory is called as
    ``factory(num_classes=, in_channels=, image_size=, **options)`` and returns an
    ``nn.Module`` whose binary layers come from ``benchbnn.core.binary`` so that
    ``benchbnn.split_parameters`` can tell binary weights from real-valued ones.
    """


@hookspec
def benchbnn_datasets() -> list[DatasetSpec]:  # type: ignore[empty-body]  # spec only
    """Return the :class:`benchbnn.DatasetSpec` records this plugin provides.

    Called once when plugins load. ``spec.load(root=, split=)`` returns a torch ``Dataset`` of
    ``(CxHxW tensor, label)`` pairs.
    """


@hookspec
def benchbnn_suites() -> list[SuiteSpec]:  # type: ignore[empty-body]  # spec only
    """Return the :class:`benchbnn.SuiteSpec` records (TOML suite files) this plugin ships.

    Called once when plugins load; ``benchbnn compare NAME`` runs the suite called NAME.
    """


# --- lifecycle (called by the training engine) ------------------------------------------------
#
# The engine calls these through a plugin manager built for each run: every installed plugin,
# the engine's own tracking (MLflow) and progress-display plugins, and the objects passed as
# ``benchbnn.train(..., plugins=[...])``. Their return values are ignored.
#
# ``run`` is the engine's view of the run in progress (:class:`benchbnn.train.engine.Run`,
# whose docstring lists its fields); plugins read it and never replace its members.
# Under torchrun the hooks run on every rank; the built-in tracking and progress plugins
# register on rank 0 only. A plugin that raises stops the run: its MLflow run ends KILLED and
# the exception propagates to the caller of ``benchbnn.train``. To stop a run on purpose (early
# stopping; this is how the tuner prunes a trial) raise ``benchbnn.RunStopped(reason)``: the run
# is tagged with the failure class ``stopped`` and the reason, a result never redone; any other
# exception is a plugin that broke (failure class ``environment``). Under torchrun, raise on
# every rank or on none.


@hookspec
def benchbnn_run_start(run: Run) -> None:
    """Called once per run, after the configuration was validated and the data, model and
    optimizer were built, right before the first training step.

    On ``--resume`` it is called too, with ``run.start_epoch`` > 0, the state restored and
    ``run.run_id`` already set to the run being continued. The tracking plugin creates (or
    reopens) the MLflow run here, first of all implementations, so ``run.run_id`` is set for
    the others.
    """


@hookspec
def benchbnn_epoch_start(run: Run, epoch: int) -> None:
    """Called before the first training step of ``epoch`` (counted from 1)."""


@hookspec
def benchbnn_step_end(run: Run, step: int, logs: dict[str, Any]) -> None:
    """Called after every optimizer step; ``step`` counts steps from 1 over the whole run.

    ``logs`` holds *device tensors* so that nothing forces a host synchronisation:
    ``loss`` (0-d, this batch's mean cross-entropy), ``flip_ratio`` (0-d, F_t/N) and
    ``flip_log_ratio`` (0-d, pi_t = log(F_t/N + e^-9)), both None for an optimizer without flip
    counts; ``totals`` (1-d, running epoch sums: loss x images, top-1 hits, top-5 hits, images
    on this rank), and plain numbers ``epoch``, ``batch`` (1-based index within the epoch),
    ``batches`` (batches per epoch) and ``images`` (this batch's size on this rank).

    This hook is on the hot path: read tensors (``.item()``) only at an interval (every
    ``run.log_every`` steps, or a few times a second), never on every step.
    """


@hookspec
def benchbnn_epoch_end(run: Run, epoch: int, metrics: dict[str, float]) -> None:
    """Called after each epoch's training and evaluation, before its checkpoint is written.

    ``metrics`` maps names from ``benchbnn.core.names.EPOCH_METRICS`` to floats (accuracies in
    percent, reduced over all ranks; val_* only with a validation split). A plugin may *add*
    numeric entries (extra metrics): they are tracked with ``step=epoch`` and kept in the run's
    history. Raising here (``benchbnn.RunStopped`` to stop it on purpose, as the tuner's pruning
    does) stops the run as KILLED; the epoch's metrics are still tracked.
    """


@hookspec
def benchbnn_run_end(run: Run, result: RunResult) -> None:
    """Called once when the run stops, whatever the reason, with the final ``RunResult``.

    ``result.status`` is "FINISHED", "FAILED" (diverged or crashed; ``result.error`` says why)
    or "KILLED" (interrupted, SIGTERM, or a plugin raised; ``result.failure_class`` is
    ``"stopped"`` when a plugin raised ``benchbnn.RunStopped``). Exceptions raised here are
    reported as warnings and do not change the outcome.
    """

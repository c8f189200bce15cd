"""Every hook a benchbnn plugin can implement, in one place.

A plugin is a module (or any object) with functions marked ``@benchbnn.hookimpl`` whose names
match the functions below. Register it through the ``benchbnn`` entry-point group of your
package, with ``benchbnn -p module``, or with ``BENCHBNN_PLUGINS=module``.

Registration hooks take no arguments and return a list of frozen records from
``benchbnn.specs``; the host validates them once, when plugins load. Lifecycle hooks are called
by the training engine while a run progresses; tracking, progress display and extra metrics are
themselves plugins of these hooks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("benchbnn")


# --- registration -----------------------------------------------------------------------------


@hookspec
def benchbnn_optimizers() -> list:
    """Return the :class:`benchbnn.OptimizerSpec` records this plugin provides.

    Called once when plugins load. Each spec names the optimizer (kebab-case, unique across all
    installed plugins), declares its hyperparameters with defaults, valid ranges and search
    ranges, and gives a factory ``factory(binary_params, real_params, **hparams)`` that returns a
    ``torch.optim.Optimizer``.
    """


@hookspec
def benchbnn_architectures() -> list:
    """Return the :class:`benchbnn.ArchitectureSpec` records this plugin provides.

    Called once when plugins load. The factory is called as
    ``factory(num_classes=, in_channels=, image_size=, **options)`` and returns an
    ``nn.Module`` whose binary layers come from ``benchbnn.binary`` so that
    ``benchbnn.split_parameters`` can tell binary weights from real-valued ones.
    """


@hookspec
def benchbnn_datasets() -> list:
    """Return the :class:`benchbnn.DatasetSpec` records this plugin provides.

    Called once when plugins load. ``spec.load(root=, split=)`` returns a torch ``Dataset`` of
    ``(CxHxW tensor, label)`` pairs.
    """


@hookspec
def benchbnn_suites() -> list:
    """Return the :class:`benchbnn.SuiteSpec` records (TOML suite files) this plugin ships.

    Called once when plugins load; ``benchbnn compare NAME`` runs the suite called NAME.
    """


# --- lifecycle (called by the training engine) ------------------------------------------------

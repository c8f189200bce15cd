"""The optimizer conformance kit under pytest, for plugin authors.

One line in a test file checks an optimizer against every property of
:mod:`benchbnn.optim.conformance` (the properties ``benchbnn check`` runs), one test per
property::

    from benchbnn.testing import conformance_tests

    test_my_optimizer = conformance_tests("my-opt")

``"my-opt"`` is a registered optimizer name (installed through the ``benchbnn`` entry point, or
registered with ``benchbnn.register_plugin(module)`` before the tests run); an
:class:`~benchbnn.core.specs.OptimizerSpec` or the ``BinaryOptimizer`` subclass itself works
too, without registering anything: ``conformance_tests(MyOptimizer)``. The returned function is
parametrized over the properties (test ids such as ``test_my_optimizer[state-dict]``): a
failing property fails with its reproducer (seed, shapes, hyperparameters, step, offending
values and a Python snippet), a skipped one (e.g. ``compiled`` where torch.compile is
unavailable) is reported as skipped with the reason. Keyword arguments choose the properties,
the number of steps, the seed and hyperparameters other than the defaults::

    test_my_optimizer = conformance_tests(
        "my-opt", properties=["flip-count", "state-dict"], steps=100, hparams={"gamma": 0.01}
    )

The ``data-parallel`` property starts two processes; it takes a few seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["conformance_tests"]


def conformance_tests(
    optimizer: Any,
    *,
    properties: Sequence[str] | None = None,
    steps: int | None = None,
    seed: int = 0,
    hparams: Mapping[str, Any] | None = None,
) -> Callable[[str], None]:
    """A pytest test function, parametrized with one case per conformance property."""
    import pytest

    from benchbnn.optim.conformance import DEFAULT_STEPS, PROPERTIES, check_property

    chosen = list(properties) if properties is not None else list(PROPERTIES)
    unknown = [p for p in chosen if p not in PROPERTIES]
    if unknown:
        raise ValueError(f"unknown properties {unknown}; known: {', '.join(PROPERTIES)}")

    @pytest.mark.parametrize("conformance_property", chosen)
    def test_conformance(conformance_property: str) -> None:
        result = check_property(
            optimizer,
            conformance_property,
            seed=seed,
            steps=steps if steps is not None else DEFAULT_STEPS,
            hparams=hparams,
        )
        if result.status == "skipped":
            pytest.skip(result.reason)
        if result.status == "failed":
            pytest.fail(result.report(), pytrace=False)

    return test_conformance

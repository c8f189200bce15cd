"""The optimizer conformance kit under pytest, for plugin authors.

One line in a test file checks an optimizer against every property of
:mod:`benchbnn.optim.conformance` (the properties ``benchbnn check`` runs), one test per
property::

    from benchbnn.testing import conformance_tests

    test_my_optimizer = conformance_tests("my-opt")

``"my-opt"`` is a registered optimizer name (installed through the ``benchbnn`` entry point,
loaded with ``BENCHBNN_PLUGINS=module``, or registered with
``benchbnn.register_plugin(module)`` before the tests run); an
:class:`~benchbnn.core.specs.OptimizerSpec` or the ``BinaryOptimizer`` subclass itself works
too, without registering anything: ``conformance_tests(MyOptimizer)``. The name is looked up
when the tests run; an unknown one fails the first test with this advice and skips the
others. The returned function is
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


def _unknown_optimizer_message(name: Any, error: Exception) -> str:
    """What to do when the optimizer ``name`` given to :func:`conformance_tests` is not
    registered in the test process (``error``: the look-up's UnknownNameError)."""
    return (
        f"{error} Under pytest, conformance_tests({name!r}) looks the name up when the tests "
        f"run, and no plugin registered it in this test process. Make it known before the tests: "
        f"benchbnn.register_plugin(module) with the plugin module (in conftest.py or above the "
        f"conformance_tests line), BENCHBNN_PLUGINS=module_name in the environment of pytest, "
        f"or an installed distribution with a 'benchbnn' entry point; or pass the optimizer "
        f"class itself: conformance_tests(MyOptimizer). (Every other property is skipped: "
        f"they would all fail the same way.)"
    )


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

    from benchbnn.core.errors import UnknownNameError
    from benchbnn.optim.conformance import DEFAULT_STEPS, PROPERTIES, check_property, resolve_spec

    chosen = list(properties) if properties is not None else list(PROPERTIES)
    unknown = [p for p in chosen if p not in PROPERTIES]
    if unknown:
        raise ValueError(f"unknown properties {unknown}; known: {', '.join(PROPERTIES)}")

    unknown_reported: list[str] = []  # the first test reports an unknown name, the rest skip

    @pytest.mark.parametrize("conformance_property", chosen)
    def test_conformance(conformance_property: str) -> None:
        try:
            spec = resolve_spec(optimizer)
        except UnknownNameError as exc:
            unknown = _unknown_optimizer_message(optimizer, exc)
        else:
            unknown = ""
        if unknown and unknown_reported:
            pytest.skip(f"{optimizer!r} is unknown: see the failure of {unknown_reported[0]}")
        if unknown:
            unknown_reported.append(f"[{conformance_property}]")
            pytest.fail(unknown, pytrace=False)
        result = check_property(
            spec,
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

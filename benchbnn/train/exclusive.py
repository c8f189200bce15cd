"""Training one configuration while holding its claim: what ``run`` and ``tune`` do.

:func:`exclusively` claims a configuration in the ledger (:mod:`benchbnn.train.ledger`),
waiting while another live process holds it. When it had to wait, the result that process left
in the tracking store (in this process's numerical environment) is handed over
(``Exclusive.done``), so the caller reports it instead of training the configuration a second
time; otherwise (or when the other process left no result) the caller trains, with the claim's
guard among its lifecycle plugins, and ends the claim with :meth:`Exclusive.end`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from benchbnn.core.config import RunConfig
from benchbnn.core.names import DEFAULT_EXPERIMENT, FINISHED, RESULT_FAILURE_CLASSES
from benchbnn.train.identity import current_environment, is_result
from benchbnn.train.ledger import Claim, Holder, claim_key, open_ledger, this_holder
from benchbnn.train.runs import find_config_runs
from benchbnn.train.storage import DEFAULT_HEARTBEAT_S
from benchbnn.train.tracking import check_tracking_location, client_for, resolve_tracking_uri


@dataclass
class Exclusive:
    """A held claim, and the result run found in the store when another process trained the
    configuration while this one waited (None: train it)."""

    claim: Claim
    done: Any = None

    @property
    def waited_for(self) -> Holder | None:
        return self.claim.waited_for

    def end(self, result: Any) -> None:
        """End the claim after training: a result (finished, failed because of itself, or
        stopped on purpose by a plugin) completes it, anything else frees the configuration."""
        status = getattr(result, "status", None)
        own = getattr(result, "failure_class", None) in RESULT_FAILURE_CLASSES
        self.claim.finish(status == FINISHED or own)


def stored_result(
    tracking_uri: str, experiment: str, config: RunConfig, environment: str
) -> Any | None:
    """The MLflow run that is a result of ``config`` in ``environment`` (finished, or failed
    because of itself), the preferred one; None when there is none. Raises what the store
    raises."""
    client = client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = find_config_runs(client, found.experiment_id, config, environment, False)
    best = runs[0] if runs else None
    return best if best is not None and is_result(best.info.status, best.data.tags) else None


@contextlib.contextmanager
def exclusively(
    config: RunConfig,
    *,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    storage: str | None = None,
    command: str = "run",
    heartbeat: int = DEFAULT_HEARTBEAT_S,
    device: Any = None,
    precision: str = "fp32",
    on_wait: Callable[[Holder], None] | None = None,
) -> Iterator[Exclusive]:
    """Hold the claim of ``config`` (tracked at ``tracking_uri`` in ``experiment``) in the
    ledger ``storage`` (default: beside the tracking store) for the ``with`` block.

    Waits while another live process holds it (``on_wait`` is told who). The claim is released
    when the block ends without :meth:`Exclusive.end`. Raises BenchbnnError when the tracking
    location cannot be written or the ledger cannot be opened, KeyboardInterrupt while
    waiting, and what the block raises.
    """
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_location(uri)  # a bad store is named as such, before the ledger beside it
    ledger = open_ledger(storage, uri, heartbeat)
    try:
        key = claim_key(uri, experiment, config.config_hash())
        claim = ledger.hold(key, this_holder(command, ledger.heartbeat_s), on_wait)
        with claim:
            held = Exclusive(claim)
            if claim.waited_for is not None:
                environment = current_environment(device, precision=precision).key()
                held.done = stored_result(uri, experiment, config, environment)
            yield held
    finally:
        ledger.close()

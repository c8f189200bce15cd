"""MLflow tracking, as a plugin of the engine's lifecycle hooks.

One MLflow run per training run, driven through ``mlflow.MlflowClient`` with explicit run ids
(never the fluent API's thread-local active run, so a tuner can nest runs under a parent it
names). What is written, with the names from :mod:`benchbnn.core.config`:

- params: the RunConfig fields (dataset, arch, optimizer, epochs, batch_size, seed, subset,
  val_fraction, l2) and ``hparam.*`` (every hyperparameter, defaults filled in),
  ``schedule.*`` (schedule data as JSON), ``arch_option.*``, ``dataset_option.*``;
- metrics: EPOCH_METRICS (plus extras added by plugins) with ``step=epoch``; the sampled
  per-step ``step_flip_log_ratio`` with ``step=global step``; RUN_METRICS at the end;
- tags: config hash, benchbnn version, git commit, torch version, device, world size, the
  distribution that provided the optimizer / architecture / dataset, caller-provided tags,
  ``mlflow.parentRunId`` when nested, ``benchbnn.failure_reason`` and
  ``benchbnn.failure_class`` when FAILED or KILLED (the engine adds the identity schema, the
  numerical environment and the owner process: :mod:`benchbnn.train.identity`);
- artifacts: ``config.json`` (resolved configuration), ``metrics.json`` (final metrics and
  history), ``curves.png`` (accuracy per epoch and pi_t per step).

Tracking URI: the argument, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
working directory (MLflow's own default). Artifacts of a local SQLite store live beside the
database file, in ``mlartifacts/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from benchbnn.core import names
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.paths import writable_dir
from benchbnn.core.plugins import hookimpl, provenance
from benchbnn.core.urls import check_database_url, redact, scheme_of, with_installed_driver
from benchbnn.train.run_figure import plot_curves

#: flush buffered per-step metrics at least this often (seconds) so live views stay current
FLUSH_SECONDS = 30.0
_BATCH_METRICS = 1000
_BATCH_PARAMS = 100


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Where runs are tracked: ``uri``, else $MLFLOW_TRACKING_URI, else ./mlflow.db (SQLite).

    A bare path ending in ``.db`` is taken as an SQLite file. Compare, leaderboard and tune use
    the same resolution, so they all read what ``benchbnn run`` wrote.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if "://" not in uri and uri.endswith(".db"):
        return f"sqlite:///{Path(uri).resolve()}"
    return with_installed_driver(uri)  # postgresql:// with psycopg2, as Optuna's storages


#: What MLflow can track to, as the message about an unsupported tracking URI lists it.
TRACKING_SCHEMES = (
    "MLflow tracks to a folder (a path or file://), sqlite:///PATH.db, a database "
    "(postgresql://, mysql://, mssql://), an MLflow server (http:// or https://) or databricks"
)
#: Schemes whose stores are SQLAlchemy databases (their drivers are checked).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
#: The other schemes MLflow's tracking stores take.
OTHER_SCHEMES = ("", "file", "http", "https", "databricks", "databricks-uc", "uc")


def check_tracking_uri(uri: str) -> None:
    """Raise BenchbnnError unless MLflow can track to ``uri``: a scheme it has a store for and,
    for a database, an installed driver. Nothing is opened or connected; the message hides a
    password and lists the schemes that work (:data:`TRACKING_SCHEMES`).
    """
    scheme = scheme_of(uri)
    what = f"the tracking URI {redact(uri)}"
    if scheme in DATABASE_SCHEMES:
        check_database_url(uri, what, "--tracking-uri", TRACKING_SCHEMES)
    elif scheme not in OTHER_SCHEMES:
        raise BenchbnnError(
            f"{what}: unsupported scheme {scheme!r}; {TRACKING_SCHEMES}; pass --tracking-uri "
            f"with one of them"
        )


def _local_path(uri: str) -> Path | None:
    """The file or directory a local store lives in (None for servers and databases)."""
    if uri.startswith("sqlite:///"):
        path = unquote(uri[len("sqlite:///") :].split("?", 1)[0])
        return None if path in ("", ":memory:") else Path(path).absolute()
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)).absolute()
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri).absolute()
    return None


def is_new_local_store(uri: str) -> bool:
    """Whether ``uri`` names a local store (an SQLite file or a folder) that does not exist yet:
    the first run tracked there creates it. False for servers and databases."""
    path = _local_path(uri)
    return path is not None and not path.exists()


def check_tracking_location(uri: str) -> None:
    """Raise BenchbnnError if MLflow cannot track to ``uri`` (:func:`check_tracking_uri`) or a
    local store could not be written (before anything starts)."""
    check_tracking_uri(uri)
    path = _local_path(uri)
    if path is None:
        return
    directory = path.parent if uri.startswith("sqlite:") else path
    if uri.startswith("sqlite:") and path.exists() and not os.access(path, os.W_OK):
        raise BenchbnnError(
            f"tracking database {path} is not writable; pass --tracking-uri with a writable "
            f"location or fix its permissions"
        )
    probe = directory
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BenchbnnError(
            f"tracking location {uri} is not writable ({probe} is not a writable directory); "
            f"pass --tracking-uri with a writable location, e.g. sqlite:///mlflow.db"
        )
    writable_dir(directory, "the tracking store", "--tracking-uri")


def artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a local SQLite store go beside the database (not into the cwd)."""
    path = _local_path(uri)
    if path is None or not uri.startswith("sqlite:"):
        return None
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment) or "default"
    return (path.parent / "mlartifacts" / slug).as_uri()


def client_for(uri: str):
    """An ``MlflowClient`` for ``uri`` (MLflow's migration chatter silenced).

    A new local SQLite store is created safely when several processes open it at once
    (:func:`benchbnn.train.store.open_client`). Raises BenchbnnError for a URI MLflow cannot
    track to (:func:`check_tracking_uri`), otherwise what MLflow raises.
    """
    check_tracking_uri(uri)
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from benchbnn.train.store import open_client

    return open_client(uri)


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a local database) if missing."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise BenchbnnError(
                f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
                f"or pass --experiment with another name"
            )
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri, name))
    except MlflowException:  # created meanwhile by a parallel worker
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the benchbnn source tree (with "-dirty" if modified), if it is a checkout."""
    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def _text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def run_params(run: Any) -> dict[str, str]:
    """Everything in the configuration, flattened into MLflow params."""
    cfg = run.config
    params = {
        "dataset": cfg.dataset,
        "arch": cfg.arch,
        "optimizer": cfg.optimizer,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "subset": cfg.subset,
        "val_fraction": cfg.val_fraction,
        "l2": cfg.l2,
    }
    params.update({names.PARAM_HPARAM_PREFIX + k: v for k, v in run.hparams.items()})
    # the schedules as given, then the optimizer's default schedules the run follows as data
    given = {k: v if isinstance(v, str) else dict(v) for k, v in cfg.schedules.items()}
    defaults = {k: s.to_dict() for k, s in run.schedules.items() if k not in given}
    params.update({names.PARAM_SCHEDULE_PREFIX + k: v for k, v in {**given, **defaults}.items()})
    params.update({names.PARAM_ARCH_OPTION_PREFIX + k: v for k, v in run.arch_options.items()})
    params.update(
        {names.PARAM_DATASET_OPTION_PREFIX + k: v for k, v in cfg.dataset_options.items()}
    )
    return {k: _text(v)[:6000] for k, v in params.items()}


def run_tags(run: Any) -> dict[str, str]:
    """Provenance tags: what produced this run and where."""
    import torch

    tags = {
        names.TAG_CONFIG_HASH: run.config_hash,
        names.TAG_VERSION: names.VERSION,
        names.TAG_TORCH_VERSION: torch.__version__,
        names.TAG_DEVICE: str(run.device),
        names.TAG_WORLD_SIZE: str(run.world_size),
    }
    commit = git_commit()
    if commit:
        tags[names.TAG_GIT_COMMIT] = commit
    for kind, name in (
        ("optimizer", run.config.optimizer),
        ("architecture", run.config.arch),
        ("dataset", run.config.dataset),
    ):
        info = provenance(kind, name)
        tags[names.TAG_PLUGIN_PREFIX + kind] = f"{info.distribution}=={info.version}"
    if run.parent_run_id:
        tags["mlflow.parentRunId"] = run.parent_run_id
    tags.update({str(k): str(v) for k, v in (run.tags or {}).items()})
    return tags


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class MlflowTracker:
    """Tracks one training run in MLflow. The engine registers it on rank 0 only."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = names.DEFAULT_EXPERIMENT):
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.client: Any = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._tags: dict[str, str] = {}  # the run's tags as logged (to log later changes)

    # -- before anything starts ----------------------------------------------------------------

    def prepare(self) -> None:
        """Open the store and the experiment now; any problem is a BenchbnnError."""
        check_tracking_location(self.uri)
        try:
            self.client = client_for(self.uri)
            self.experiment_id = ensure_experiment(self.client, self.experiment, self.uri)
        except BenchbnnError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BenchbnnError(
                f"cannot use tracking location {redact(self.uri)}: {first}; pass --tracking-uri "
                f"with a reachable, writable MLflow store"
            ) from None

    # -- lifecycle hooks -----------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def benchbnn_run_start(self, run: Any) -> None:
        run.tracking_uri, run.experiment = self.uri, self.experiment
        self._tags = {str(k): str(v) for k, v in (run.tags or {}).items()}
        if run.run_id and self._reopen(run):
            return
        created = self.client.create_run(
            self.experiment_id, tags=run_tags(run), run_name=run.run_name
        )
        self.run_id = run.run_id = created.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in run_params(run).items()]
        for chunk in _chunks(params, _BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=chunk)
        for entry in run.history:  # resumed from a checkpoint whose run is not in this store
            self._queue_epoch(entry["epoch"], entry)
        self.flush()

    def _reopen(self, run: Any) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            existing = self.client.get_run(run.run_id)
        except MlflowException:
            return False
        if existing.info.experiment_id != self.experiment_id:
            return False
        self.run_id = run.run_id
        self.client.update_run(self.run_id, status="RUNNING")
        self.client.set_tag(self.run_id, names.TAG_RESUMED, str(run.start_epoch))
        return True

    @hookimpl
    def benchbnn_step_end(self, run: Any, step: int, logs: Mapping[str, Any]) -> None:
        if step % run.log_every:
            return
        pi = logs.get("flip_log_ratio")
        if pi is not None:
            from mlflow.entities import Metric

            self._pending.append(
                Metric("step_flip_log_ratio", float(pi), int(time.time() * 1000), step)
            )
        if time.monotonic() - self._last_flush > FLUSH_SECONDS:
            self.flush()

    @hookimpl(wrapper=True)
    def benchbnn_epoch_end(self, run: Any, epoch: int, metrics: dict) -> Any:
        try:
            return (yield)
        finally:  # other plugins have added their metrics (or one of them raised)
            self._queue_epoch(epoch, metrics)
            self.flush()
            self._log_changed_tags(run)

    @hookimpl(trylast=True)
    def benchbnn_run_end(self, run: Any, result: Any) -> None:
        """Log the final metrics and artifacts, then end the MLflow run with the result's status.

        The run is ended whatever fails before (see :meth:`_terminate`); what failed is raised
        afterwards (the engine reports it as a warning).
        """
        if self.run_id is None:
            return
        try:
            self.flush()
            self._log_changed_tags(run)
            self._log_run_metrics(result)
            self._log_artifacts(run, result)
        finally:
            self._terminate(result.status, result.error, getattr(result, "failure_class", None))

    def _terminate(self, status: str, error: str | None, failure_class: str | None = None) -> None:
        """End the MLflow run as ``status``; a run that did not finish gets a failure reason and
        its failure class (``run``, ``environment`` or ``stopped``; a KILLED run is
        ``environment`` unless a plugin stopped it on purpose: ``stopped``).

        ``set_terminated`` is attempted even when the failure tags cannot be written; a status
        MLflow would not end a run with becomes KILLED. Raises what the store raises.
        """
        if status not in (names.FINISHED, names.FAILED, names.KILLED):
            status = names.KILLED
        try:
            if status != names.FINISHED:
                from mlflow.entities import RunTag

                reason = str(error or f"ended {status.lower()}")
                if status == names.KILLED and failure_class != names.FAILURE_STOPPED:
                    failure_class = names.FAILURE_ENVIRONMENT
                tags = [
                    RunTag(names.TAG_FAILURE, reason[:5000]),
                    RunTag(names.TAG_FAILURE_CLASS, failure_class or names.FAILURE_RUN),
                ]
                self.client.log_batch(self.run_id, tags=tags)
        finally:
            self.client.set_terminated(self.run_id, status=status)

    def abandon(self, run_id: str | None, reason: str) -> bool:
        """End run ``run_id`` of this experiment KILLED with ``reason`` as its failure reason,
        because nothing will continue it (its checkpoint cannot be resumed).

        Only a RUNNING run (left so by a killed process) or a KILLED one (whose reason is
        updated) is touched; a finished or failed run stays as it is. Never raises: a store
        error becomes a warning. Returns whether the run was changed.
        """
        if not run_id or self.client is None:
            return False
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_run(run_id)
        except MlflowException:  # not in this store: nothing to end
            return False
        except Exception as exc:
            warnings.warn(f"benchbnn: could not look up run {run_id}: {exc!r}", stacklevel=2)
            return False
        if found.info.experiment_id != self.experiment_id or found.info.status not in (
            names.RUNNING,
            names.KILLED,
        ):
            return False
        try:
            self.client.set_tag(run_id, names.TAG_FAILURE, reason[:5000])
            self.client.set_tag(run_id, names.TAG_FAILURE_CLASS, names.FAILURE_ENVIRONMENT)
            if found.info.status == names.RUNNING:
                self.client.set_terminated(run_id, status=names.KILLED)
        except Exception as exc:
            warnings.warn(f"benchbnn: could not end run {run_id}: {exc!r}", stacklevel=2)
            return False
        return True

    # -- helpers -------------------------------------------------------------------------------

    def _queue_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if key != "epoch" and _finite(value):
                self._pending.append(Metric(key, float(value), now, int(epoch)))

    def flush(self) -> None:
        """Send buffered metrics in as few requests as possible."""
        pending, self._pending = self._pending, []
        for chunk in _chunks(pending, _BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=chunk)
        self._last_flush = time.monotonic()

    def _log_changed_tags(self, run: Any) -> None:
        """Log the run's tags that changed since it started (e.g. the engine's compile tag
        when compilation failed at the first step and the run went on eagerly)."""
        current = {str(k): str(v) for k, v in (run.tags or {}).items()}
        changed = {k: v for k, v in current.items() if self._tags.get(k) != v}
        if not changed:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in changed.items()])
        self._tags.update(changed)

    def _log_run_metrics(self, result: Any) -> None:
        metrics = result.metrics
        self._queue_epoch(0, {k: metrics[k] for k in names.RUN_METRICS if k in metrics})
        self.flush()

    def _log_artifacts(self, run: Any, result: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="benchbnn-artifacts-") as tmp:
            folder = Path(tmp)
            (folder / names.ARTIFACT_CONFIG).write_text(
                json.dumps(resolved_config(run), indent=2, sort_keys=True, default=str)
            )
            final = {
                "status": result.status,
                "error": result.error,
                "run_id": self.run_id,
                "config_hash": result.config_hash,
                "metrics": result.metrics,
                "history": result.history,
            }
            (folder / names.ARTIFACT_METRICS).write_text(
                json.dumps(_json_safe(final), indent=2, sort_keys=True)
            )
            try:
                steps = self.client.get_metric_history(self.run_id, "step_flip_log_ratio")
                plot_curves(
                    result.history,
                    [(m.step, m.value) for m in steps],
                    folder / names.ARTIFACT_CURVES,
                    run.steps_per_epoch,
                )
            except Exception as exc:
                warnings.warn(
                    f"benchbnn: could not draw {names.ARTIFACT_CURVES}: {exc}", stacklevel=2
                )
            self.client.log_artifacts(self.run_id, str(folder))


def _json_safe(value: Any) -> Any:
    """NaN and infinities as strings, so metrics.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def resolved_config(run: Any) -> dict[str, Any]:
    """The configuration as the engine ran it: defaults filled in, plus where and on what."""
    import torch

    data = run.data
    return {
        "config": run.config.to_dict(),
        "config_hash": run.config_hash,
        "hparams": dict(run.hparams),
        "schedules": {k: s.to_dict() for k, s in run.schedules.items()},
        "arch_options": dict(run.arch_options),
        "dataset": {
            "name": run.config.dataset,
            "num_classes": data.num_classes,
            "image_shape": list(data.image_shape),
            "train_samples": data.train.num_samples,
            "val_samples": data.val.num_samples if data.val is not None else 0,
            "test_samples": data.test.num_samples,
        },
        "steps_per_epoch": run.steps_per_epoch,
        "total_steps": run.total_steps,
        "device": str(run.device),
        "world_size": run.world_size,
        "versions": {
            "benchbnn": names.VERSION,
            "torch": torch.__version__,
            "git_commit": git_commit(),
        },
        "plugins": {
            kind: f"{info.distribution}=={info.version}"
            for kind, info in (
                ("optimizer", provenance("optimizer", run.config.optimizer)),
                ("architecture", provenance("architecture", run.config.arch)),
                ("dataset", provenance("dataset", run.config.dataset)),
            )
        },
    }

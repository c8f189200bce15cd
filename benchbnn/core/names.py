"""The names a run is tracked under: MLflow tags, params, metrics, artifacts and run states.

The engine writes them; compare, the leaderboard, tuning and workers read them. This module is
their only home, so that a reader finds every name in one place. Accuracies are percentages
(0-100), as in the papers' tables; times are seconds.
"""

from __future__ import annotations

#: The benchbnn release (also ``benchbnn.__version__``).
VERSION = "0.1.0"
DEFAULT_EXPERIMENT = "benchbnn"
#: The suite commands run when none is named: offline, a few minutes on two CPU cores.
DEFAULT_SUITE = "quick"

# --- run states (MLflow's vocabulary, plus MISSING for a planned run that is not in the store) ---
RUNNING, FINISHED, FAILED, KILLED, MISSING = "RUNNING", "FINISHED", "FAILED", "KILLED", "MISSING"

# --- tags ---
TAG_CONFIG_HASH = "benchbnn.config_hash"
TAG_VERSION = "benchbnn.version"
TAG_SUITE = "benchbnn.suite"
TAG_ENTRY = "benchbnn.entry"
TAG_FAILURE = "benchbnn.failure_reason"
TAG_STUDY = "benchbnn.study"
TAG_TRIAL = "benchbnn.trial"
TAG_GIT_COMMIT = "benchbnn.git_commit"  # commit of the benchbnn source, "-dirty" if modified
TAG_TORCH_VERSION = "benchbnn.torch_version"
TAG_DEVICE = "benchbnn.device"
TAG_WORLD_SIZE = "benchbnn.world_size"
TAG_RESUMED = "benchbnn.resumed_from_epoch"  # set when --resume continued the run
TAG_PLUGIN_PREFIX = "benchbnn.plugin."  # + optimizer / architecture / dataset: "dist==version"
#: Set by compare on every run it trains: CPU model, cores, torch version, device.
TAG_HARDWARE = "benchbnn.hardware"
#: Set by ``compare --data-note``: which copy of the data the run read.
TAG_DATA_NOTE = "benchbnn.data_note"
#: Set by ablate on its runs: the hyperparameter moved and the factor.
TAG_ABLATION = "benchbnn.ablation"
#: Tuning: a run's role (study parent or trial), the study's unique id, the best trial's values.
TAG_ROLE = "benchbnn.role"
TAG_STUDY_UID = "benchbnn.study_uid"
TAG_BEST_PREFIX = "benchbnn.best."
#: The identity scheme of TAG_CONFIG_HASH (absent: schema 1, the configuration as written) and
#: the schema-1 hash of the same configuration, kept on newer runs for reference.
TAG_CONFIG_SCHEMA = "benchbnn.config_schema"
TAG_LEGACY_CONFIG_HASH = "benchbnn.config_hash_v1"
#: The numerical environment of a run: device type (cpu, cuda, mps), CPU threads (torch
#: threads of a CPU run), and TAG_ENVIRONMENT, the one line compare matches runs by (with
#: TAG_TORCH_VERSION and TAG_WORLD_SIZE). Runs without it are of UNKNOWN_ENVIRONMENT.
TAG_DEVICE_TYPE = "benchbnn.device_type"
TAG_CPU_THREADS = "benchbnn.cpu_threads"
#: how the model ran: "compiled", "eager" or "eager (compilation failed: ...)"; and the
#: arithmetic of its forward passes ("fp32" or "bf16"). Recorded, not part of the identity.
TAG_COMPILE = "benchbnn.compile"
TAG_PRECISION = "benchbnn.precision"
#: the choices of --compile and --precision
COMPILE_MODES = ("auto", "on", "off")
PRECISIONS = ("fp32", "bf16")
#: the choices of --binary-kernel (benchbnn.core.int8): the exact integer forward (oneDNN int8,
#: or XNOR-popcount: benchbnn.core.popcount) where it pays ("auto"), wherever it applies,
#: never; and the tag recording which one the binary layers used (not part of a run's
#: identity: the results are bit-identical)
BINARY_KERNELS = ("auto", "int8", "float")
TAG_BINARY_KERNEL = "benchbnn.binary_kernel"
#: how the optimizer's step ran ("reference", "foreach" or "compiled"; benchbnn.optim.base),
#: for optimizers that say (an ``implementation`` attribute). Recorded, not part of the identity.
TAG_OPTIMIZER_IMPLEMENTATION = "benchbnn.optimizer_implementation"
#: what a CPU run's process does with freed host memory (benchbnn.core.host_memory):
#: "retained" (kept in malloc's heap for the next step) or "released (why)". Recorded, not part
#: of the identity.
TAG_HOST_MEMORY = "benchbnn.host_memory"
#: optimizer steps in one epoch of the run (per rank), recorded when its data is built: what
#: steps-to-target columns multiply epochs by. Runs tracked before it have it only in their
#: config.json artifact. Recorded, not part of the identity.
TAG_STEPS_PER_EPOCH = "benchbnn.steps_per_epoch"
TAG_ENVIRONMENT = "benchbnn.environment"
UNKNOWN_ENVIRONMENT = "unknown environment"
#: Why a run that is not FINISHED ended: FAILURE_RUN (the run itself: divergence, an invalid
#: configuration; a result), FAILURE_ENVIRONMENT (killed, out of memory, I/O, a dead
#: worker; never a result, redone by the next compare) or FAILURE_STOPPED (a lifecycle plugin
#: stopped it on purpose before its last epoch by raising benchbnn.core.errors.RunStopped, as
#: the tuner does to prune a hopeless trial; the run ends KILLED and is a result).
TAG_FAILURE_CLASS = "benchbnn.failure_class"
FAILURE_RUN, FAILURE_ENVIRONMENT, FAILURE_STOPPED = "run", "environment", "stopped"
#: The failure classes of runs that are results: such a run is done (compare shows it with its
#: reason instead of training it again, a claim on its configuration completes, a tuner does
#: not retry it); a run of any other class (FAILURE_ENVIRONMENT) is redone.
RESULT_FAILURE_CLASSES = frozenset({FAILURE_RUN, FAILURE_STOPPED})
#: The process that owns a RUNNING run: host name, pid and the process's start time (clock
#: ticks since boot, Linux; empty elsewhere), so that a run whose owner died can be ended.
TAG_HOST = "benchbnn.host"
TAG_PID = "benchbnn.pid"
TAG_PROCESS_START = "benchbnn.process_start"

# --- metrics ---
EPOCH_METRICS = (
    "train_loss",
    "train_top1",
    "train_top5",
    "val_loss",
    "val_top1",
    "val_top5",
    "test_loss",
    "test_top1",
    "test_top5",
    "epoch_time_s",
    "images_per_s",
    # in-process timing of the training steps of the epoch (seconds, summed over its steps):
    # the optimizer's own step (what differs between entries) and the forward and backward
    # passes (the same work for every entry); the 1-minute load average at the epoch's end
    "optimizer_step_s",
    "forward_backward_s",
    "load_average",
    "flip_ratio",
    "flip_log_ratio",
    "lr",
)
STEP_METRICS = ("step_flip_log_ratio",)
STEP_FLIP_METRIC = "step_flip_log_ratio"
RUN_METRICS = (
    "binary_weights",
    "real_parameters",
    "state_bytes_per_binary_weight",
    "peak_memory_mb",
    "compile_time_s",  # seconds spent compiling the model (0 when eager), apart from epochs
)

# --- params and artifacts ---
# MLflow params: the RunConfig fields by name (dataset, arch, optimizer, epochs, batch_size,
# seed, subset, val_fraction, l2), plus one param per entry of these mappings:
PARAM_HPARAM_PREFIX = "hparam."  # every optimizer hyperparameter, defaults filled in
PARAM_SCHEDULE_PREFIX = "schedule."  # schedule data as JSON
PARAM_ARCH_OPTION_PREFIX = "arch_option."  # architecture options, defaults filled in
PARAM_DATASET_OPTION_PREFIX = "dataset_option."
ARTIFACT_CONFIG = "config.json"
ARTIFACT_METRICS = "metrics.json"
ARTIFACT_CURVES = "curves.png"

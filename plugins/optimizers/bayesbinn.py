"""BayesBiNN, the Bayesian learning rule on a Bernoulli posterior (Meng et al. 2020), as a plugin.

Every binary weight has a mean-field Bernoulli posterior ``P(w = +1) = sigmoid(2 lam)`` with
natural parameter ``lam`` and mean ``mu = tanh(lam)``. A step draws relaxed weight samples
(Gumbel-softmax with a temperature), asks the training closure for the gradient at each, and
moves ``lam`` along the resulting estimate of the natural gradient of the variational
objective. The network that is evaluated is the posterior's mode (``+1`` where ``mu > 0``) or
the mean prediction of networks sampled from the posterior.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

import benchbnn
from benchbnn.core.errors import BenchbnnError
from benchbnn.optim import (
    BinaryOptimizer,
    EvaluationSamples,
    adam_hparams,
    counter_uniform,
    restoring,
    tanh32,
)

#: The rule's hyperparameters (group values: schedulable where real-valued).
RULE_HPARAMS = (
    benchbnn.HParam(
        "step_size",
        1e-4,
        low=0.0,
        high=1.0,
        search=(1e-6, 1e-2),
        log=True,
        help="step on the natural parameter lam (upstream's lr; not Adam's lr); the authors "
        "decay it (cosine, 1e-4 to 1e-16 on MNIST): schedule it",
    ),
    benchbnn.HParam(
        "beta",
        0.0,
        low=0.0,
        high=0.9999,
        help="momentum of the natural-gradient average (upstream's betas), bias-corrected",
    ),
    benchbnn.HParam(
        "temperature",
        1e-10,
        low=0.0,
        low_open=True,
        high=1e3,
        search=(1e-10, 1.0),
        log=True,
        help="temperature of the relaxed (Gumbel-softmax) samples; near 0 the samples are +-1",
    ),
    benchbnn.HParam(
        "reweight",
        1.0,
        low=0.0,
        high=1e3,
        help="weight of the prior (KL) term reweight * (lam - lam_prior)",
    ),
)

#: Options: read when the optimizer is built or by run_closure/evaluation_weights, not by the
#: rule's arithmetic (kept out of the groups).
OPTION_HPARAMS = (
    benchbnn.HParam(
        "train_samples",
        1,
        low=0,
        high=64,
        help="Monte Carlo samples (closure calls) per step; 0 uses the mean tanh(lam) once",
    ),
    benchbnn.HParam(
        "lambda_init",
        10.0,
        low=0.0,
        high=1e3,
        static=True,
        help="initial magnitude of lam: +-lambda_init, a fair coin per weight",
    ),
    benchbnn.HParam(
        "lambda_std",
        0.0,
        low=0.0,
        high=1e3,
        static=True,
        help="variance of the Gaussian noise added to the initial lam",
    ),
    benchbnn.HParam(
        "lagged_mu",
        True,
        help="true: mu = tanh(lam before the update), one step behind, as the authors' code; "
        "false: mu = tanh(lam after the update), as the paper",
    ),
    benchbnn.HParam(
        "eval_samples",
        0,
        low=0,
        high=1000,
        help="0: evaluate the mode (+1 where mu > 0, else -1); k > 0: the mean prediction of k "
        "networks sampled from the posterior",
    ),
    benchbnn.HParam(
        "train_size",
        0,
        low=0,
        high=10**12,
        help="N, the number of training examples the gradient is scaled by; 0 takes the run's "
        "training-set size (required outside benchbnn's engine)",
    ),
    benchbnn.HParam(
        "seed",
        -1,
        low=-1,
        high=2**62,
        help="seed of the sampling generator; -1 derives it from the run's seed (or, outside the "
        "engine, draws it from torch's global RNG)",
    ),
)

#: Added to 1 - w^2 and 1 - mu^2 by the authors' code, so that saturated samples and means
#: give a finite ratio.
SCALE_EPS = 1e-10
#: Mixed into the run's seed so that the sampling generator does not replay the stream that
#: initialised the model (torch's global RNG is seeded with the same run seed).
_SEED_SALT = 0x5BA7E5B1


class BayesBiNN(BinaryOptimizer):
    """BayesBiNN: a Bernoulli posterior per binary weight, trained with the Bayesian learning rule.

    State per binary weight (float32): the natural parameter ``lam``, the mean ``mu`` that the
    gradient scale and the evaluated mode use, a ``momentum`` buffer and the prior's natural
    parameter ``prior_lam`` (0; in continual learning upstream sets it to the previous task's
    posterior: write it into ``optimizer.state[p]["prior_lam"]``).

    **Initialisation.** ``lam = +-lambda_init`` (a fair coin per weight) ``+ sqrt(lambda_std) *
    N(0, 1)``, ``mu = tanh(lam)``, ``momentum = 0``; the weight itself is set to ``mu``. The
    draws come from the optimizer's ``torch.Generator`` in this order, tensor by tensor in
    parameter order: ``torch.randint(0, 2, shape)`` (1 means ``+lambda_init``), then
    ``torch.randn(shape)``. Upstream draws a separate normal for each side of the coin; the
    distribution is the same.

    **A step** (``optimizer.step(closure)``, ``S = train_samples``, ``N`` = training-set size,
    ``T = temperature``), in the authors' order of operations::

        S > 0: for each sample s = 1..S (for each tensor in parameter order):
                   key = torch.randint(0, 2**31, ())           the generator's next draw
                   v   = counter_uniform(lam, key)             a multiple of 2^-24 in [0, 1)
                   u   = floor(v * 2^23) * 2^-23 + 2^-24       (2 j + 1) 2^-24, never 0 or 1
                   w_s = tanh((log(u / (1 - u)) / 2 + lam) / T)  written into the weight
               closure()                                       gradient g_s at w_s
               g_hat += g_s * ((1 - w_s^2 + 1e-10) / T / (1 - mu^2 + 1e-10))
               g_hat  = g_hat * (N / S)
        S = 0: w = tanh(lam) written into the weight; closure(); g_hat = N * g
        momentum <- beta * momentum + (1 - beta) * (g_hat + reweight * (lam - prior_lam))
        lam      <- lam - step_size * momentum / (1 - beta^t)
        mu       <- tanh(lam before this update)     lagged_mu = true  (the authors' code)
                    tanh(lam after this update)      lagged_mu = false (the paper)
        w        <- mu

    **The lag.** In the authors' ``step`` the last line binds ``mu`` to ``tanh`` of the tensor
    ``lam`` held before the update (the update creates a new tensor), so ``mu``, which scales
    the next step's gradient and decides the evaluated network, is one step behind ``lam``;
    the paper's algorithm uses the new ``lam``. ``lagged_mu=True`` (the default) reproduces the
    published code, whose numbers the paper reports; ``False`` is the paper's rule.

    Between steps the binary weights hold ``mu`` (in [-1, 1]); :attr:`flip_count` counts the
    weights whose ``sgn0(mu)`` changed. The weights the closure sees are the samples (or
    ``tanh(lam)`` for ``S = 0``), so the layers use the weights as they are (``forward =
    "identity"``). ``w_s`` in the gradient scale is the sample as the weights hold it (for
    float32 weights exactly the float32 sample; for float16/bfloat16 weights the sample
    rounded to them, the weights the closure's gradient was taken at).

    **Random stream and memory passes.** A sample's uniforms come from a counter-based
    generator (:func:`benchbnn.optim.counter_uniform`: a hash of the key and the weight's
    position), one key per tensor and sample from the optimizer's generator, so the compiled
    implementation draws a sample in one fused loop that reads ``lam`` and writes the weight,
    with no noise tensor. Setting the lowest of the 24 bits makes ``u`` and ``1 - u`` exact,
    never 0 (``counter_uniform`` can return 0, whose logarithm is -inf) and symmetric about
    1/2. With ``S = 1`` (the default) the update reads the sample back from the weights,
    scales its gradient, updates the state and writes ``mu`` over the sample in one pass, so a
    step moves exactly the bytes of ``2 * weights + gradients + 2 * state``; nothing is
    cloned (the weights are rewritten from ``mu``; weights without a gradient, which the rule
    skips, get ``mu`` back in :meth:`run_closure`). ``S >= 2`` sums the scaled gradients
    into a flat ``g_hat`` after every closure call (the raw gradients too, for their mean).
    This stream replaced per-sample ``torch.rand`` (mt19937) draws (issue 19): a run with
    the same seed draws other samples than before, from the same distribution. Every ``tanh``
    here is :func:`benchbnn.optim.tanh32` (within 1.5 ulps; the same bits eager and compiled,
    and 1.8x faster compiled than Inductor's ``tanh``, whose two calls made a third of a
    compiled step's time; since 2026-11-30, issue 19). The compiled kernels' ``log`` can still
    differ from eager code in the last bit, so compiled and reference steps agree in signs and
    flips and within a few ulps, not bit for bit.

    **Gradients.** ``N`` is the whole training set's size (``train_size``, else the run
    context's, which counts every data-parallel rank's share): the engine hands the closure's
    caller the gradient of the mean loss over the global batch (averaged over ranks), so
    ``N * g`` estimates the sum over the data on every rank, and every rank draws the same
    samples from the same seed and keeps identical ``lam``. The real-valued parameters follow
    Adam on the mean of their gradients over the ``S`` samples (upstream puts every parameter
    through BayesBiNN; its MLP has no real-valued parameters). A binary parameter's ``.grad``
    is left holding the mean over the samples of its raw gradient; the rule reads ``g_hat``.

    **Evaluation** (:meth:`evaluation_weights`): with ``eval_samples = 0`` the weights are
    ``+1`` where ``mu > 0`` and ``-1`` elsewhere (upstream's ``get_mc_predictions`` without
    noise: ``mu = 0`` gives -1, unlike ``sgn0``); with ``eval_samples = k`` the engine averages
    the softmax outputs of ``k`` networks with ``w = +1`` where ``u < sigmoid(2 lam)`` (a
    Bernoulli draw from the current posterior, as the authors' ``test_model``, which uses
    ``lam`` itself, not the lagged ``mu``), ``u`` from :func:`counter_uniform` keyed by the
    seed, the evaluation's number and the network's index: the same networks on every rank and
    for every batch of one evaluation, new ones at the next evaluation (the authors draw new
    networks for every test batch and average the networks' raw outputs, not their softmax).

    Args:
        step_size: step on ``lam`` (upstream's ``lr``).
        beta: momentum (upstream's ``betas``), with Adam-like bias correction.
        temperature: relaxation temperature of the samples, > 0.
        reweight: weight of the prior term.
        train_samples: samples (closure calls) per step; 0 uses ``tanh(lam)`` once.
        lambda_init, lambda_std: initial ``lam`` (see above).
        lagged_mu: the authors' code (True) or the paper's (False) ``mu``.
        eval_samples: 0 evaluates the mode; k > 0 the mean prediction of k sampled networks.
        train_size: N; 0 (default) takes the run context's training-set size.
        seed: seed of the sampling generator; -1 derives it from the run's seed.
        lr, beta1, beta2, eps: Adam for the real-valued parameters (default lr 1e-3).
        implementation: "reference", "foreach" (runs the reference loop) or "compiled".

    Raises:
        BenchbnnError: when stepped without a closure, or stepped after being built with
            neither ``train_size`` nor a run context (N unknown).

    Defaults: the authors' MNIST settings (``lr`` 1e-4, temperature 1e-10, one sample,
    ``lamda_init`` 10, ``lamda_std`` 0, no momentum, reweight 1), not their class defaults
    (``lr`` 1e-9, temperature 1, five samples), with which nothing moves in a short run. Their
    runs decay ``lr`` by a cosine to 1e-16; schedule ``step_size`` for that.

    Reference: X. Meng, R. Bachmann, M. E. Khan. "Training Binary Neural Networks using the
    Bayesian Learning Rule", ICML 2020, arXiv:2002.10778. Code:
    https://github.com/team-approx-bayes/BayesBiNN, ``optimizers/BayesBiNN.py`` (``step``,
    ``get_mc_predictions``).
    """

    name = "bayesbinn"
    description = (
        "BayesBiNN: a Bernoulli posterior per binary weight, trained with the Bayesian learning "
        "rule on relaxed weight samples"
    )
    reference = (
        "Meng, Bachmann, Khan, Training Binary Neural Networks using the Bayesian Learning Rule, "
        "ICML 2020, arXiv:2002.10778"
    )
    rule_hparams = RULE_HPARAMS
    option_hparams = OPTION_HPARAMS
    real_hparams = adam_hparams(lr=1e-3)
    state_buffers = ("lam", "mu", "momentum", "prior_lam")
    tensor_keys = ("g_hat",)
    derived_keys = ("bias_correction", "lagged_mu", "natural_scale", "one_sample")
    #: 2: counter-based logistic noise (2026-11-30) instead of torch.rand; 3: benchbnn's float32
    #: tanh (benchbnn.optim.tanh32) instead of torch.tanh (2026-11-30)
    rule_version = 3
    forward = "identity"
    needs_closure = True
    divergence_advice = (
        "lower step_size (bayesbinn's step on lam) or lr (Adam on the real-valued parameters), "
        "raise temperature, or schedule step_size down (the authors decay it to 1e-16)"
    )

    # -- building ------------------------------------------------------------------------------

    def setup(self) -> None:
        """Seed the generator, find N and draw the initial ``lam`` of every binary weight."""
        self.seed = self._seed()
        self.generator = torch.Generator(device=self._device)
        self.generator.manual_seed(self.seed)
        #: N, or None until known (built without train_size and context: a step refuses).
        self.train_size = self._train_size()
        #: Evaluations entered so far (keys the sampled evaluation networks).
        self.evaluations = 0
        self._g_hat: list[torch.Tensor] = []
        #: N / max(S, 1), the factor of the summed scaled gradients (set by run_closure).
        self._natural_scale = 1.0
        #: The key argument of the mean's fill (S = 0), which draws nothing, and g_hat of a
        #: tensor without a gradient (which the rule skips).
        self._no_key = torch.zeros((), dtype=torch.int64, device=self._device)
        init, std = self.options["lambda_init"], math.sqrt(self.options["lambda_std"])
        self._initial: dict[int, torch.Tensor] = {}
        for p in self.binary_params:
            coin = torch.randint(0, 2, p.shape, generator=self.generator, device=p.device)
            noise = torch.randn(p.shape, generator=self.generator, device=p.device)
            lam = torch.where(coin == 1, init, -init) + std * noise
            self._initial[id(p)] = lam.to(torch.float32)

    def _seed(self) -> int:
        seed = int(self.options["seed"])
        if seed >= 0:
            return seed
        if self.context is not None:
            return (int(self.context.seed) * 2654435761 + _SEED_SALT) % 2**62
        return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())

    def _train_size(self) -> int | None:
        size = int(self.options["train_size"])
        if size > 0:
            return size
        if self.context is not None and int(self.context.train_size) > 0:
            return int(self.context.train_size)
        return None

    def _n(self) -> int:
        if self.train_size is None:
            raise BenchbnnError(
                "optimizer bayesbinn needs N, the number of training examples (its gradient is "
                "N times the mean loss's): pass train_size=N, or build it with context= "
                "(benchbnn's engine does)"
            )
        return self.train_size

    def init_weight(self, param: torch.Tensor) -> torch.Tensor:
        """The weight starts at the posterior mean ``tanh(lam)``."""
        return tanh32(self._initial[id(param)]).to(param.dtype)

    def init_state(self, name: str, param: torch.Tensor) -> torch.Tensor:
        lam = self._initial[id(param)]
        if name == self.state_buffers[-1]:  # the last buffer of this weight: drop the draw
            del self._initial[id(param)]
        if name == "lam":
            return lam.clone()
        if name == "mu":
            return tanh32(lam)
        return torch.zeros_like(lam)

    def extra_state(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "generator": self.generator.get_state(),
            "evaluations": self.evaluations,
        }

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.seed = int(state["seed"])
            self.generator.set_state(state["generator"])
            self.evaluations = int(state.get("evaluations", 0))

    # -- the step ------------------------------------------------------------------------------

    def run_closure(self, closure: Callable[[], Any]) -> Any:
        """Call the closure at ``max(S, 1)`` weight draws and prepare the rule's inputs.

        Each draw writes the sample (or ``tanh(lam)`` for ``S = 0``) into the binary weights;
        :meth:`update` then reads the last sample from the weights and overwrites them with
        ``mu``, so nothing is copied to put the weights back. Binary weights without a gradient
        (the rule skips them) get ``mu`` back here. Leaves each binary ``.grad`` holding the
        mean raw gradient over the samples (None where no sample produced one) and each
        real-valued ``.grad`` the mean over the samples: for ``S <= 1`` the closure's own
        gradients, untouched. For ``S >= 2`` the scaled gradients are summed into ``g_hat``
        after every call. Returns the first call's result.
        """
        binary = self.binary_params
        real = list(self.param_groups[1]["params"])
        self._natural_scale = float(self._n()) / max(self.samples, 1)
        temperature = float(self.param_groups[0]["temperature"])
        keys = [[self._next_key() for _ in binary] for _ in range(self.samples)]
        many = self.samples >= 2
        # flat (not views): the compiled rule would recompile for the shape of a view's base
        self._g_hat = (
            [torch.zeros(p.numel(), dtype=torch.float32, device=p.device) for p in binary]
            if many
            else []
        )
        raw: list[torch.Tensor | None] = [None] * len(binary)
        real_sums: list[torch.Tensor | None] = [None] * len(real)
        first = None
        for s in range(max(self.samples, 1)):
            for j, p in enumerate(binary):
                self.kernel(_fill_mean if self.samples == 0 else _fill_sample)(
                    p, self.state[p]["lam"], keys[s][j] if keys else self._no_key, temperature
                )
            result = closure()
            first = result if first is None else first
            if not many:
                continue
            for j, p in enumerate(binary):
                if p.grad is not None:
                    state = self.state[p]
                    self.kernel(_add_scaled)(self._g_hat[j], p.grad, p, state["mu"], temperature)
                    raw[j] = _accumulate(raw[j], p.grad)
            for i, p in enumerate(real):
                real_sums[i] = _accumulate(real_sums[i], p.grad)
        if many:
            for p, total in zip(binary, raw):
                p.grad = None if total is None else total / self.samples
            for p, total in zip(real, real_sums):
                p.grad = None if total is None else total / self.samples
        for p in binary:
            if p.grad is None:
                p.copy_(self.state[p]["mu"])
        return first

    @property
    def samples(self) -> int:
        """``S``, the number of Monte Carlo samples per step (``train_samples``)."""
        return int(self.options["train_samples"])

    def _next_key(self) -> torch.Tensor:
        """The next key of the sample stream: an int64 below 2**31 from the generator."""
        return torch.randint(
            0, 2**31, (), generator=self.generator, device=self.generator.device, dtype=torch.int64
        )

    def tensor_kwargs(self, group: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        # What the rule scales by N / max(S, 1): for S >= 2 the flat sum of the scaled
        # gradients (the compiled path flattens the weights and buffers but passes tensor
        # keywords as they are, so the rule views it as the weight); for S = 0 the gradient
        # itself; for S = 1 too, unused (the rule scales it by the sample), so that one
        # compiled rule serves every S without a copy.
        if group["kind"] != "binary":
            return None
        if self.samples >= 2:
            return [{"g_hat": g} for g in self._g_hat]
        return [{"g_hat": p.grad if p.grad is not None else self._no_key} for p in group["params"]]

    def rule_kwargs(self, group: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = super().rule_kwargs(group)
        kwargs["bias_correction"] = 1 - group["beta"] ** group["step"]
        # a 0-d tensor, not a Python bool: the compiled rule serves both conventions
        kwargs["lagged_mu"] = torch.tensor(bool(self.options["lagged_mu"]), device=self._device)
        kwargs["natural_scale"] = self._natural_scale
        kwargs["one_sample"] = torch.tensor(self.samples == 1, device=self._device)
        return kwargs

    @staticmethod
    def update(
        w,
        g,
        lam,
        mu,
        momentum,
        prior_lam,
        *,
        g_hat,
        step_size,
        beta,
        temperature,
        reweight,
        bias_correction,
        natural_scale,
        one_sample,
        lagged_mu,
    ):
        # w holds the closure's last sample (tanh(lam) for S = 0); between steps it holds mu,
        # so the flips are the sign changes of mu.
        before = mu >= 0
        # S = 1: the one sample's scaled gradient, from the sample in w; S = 0: g_hat is the
        # gradient at tanh(lam); S >= 2: the scaled gradients summed by run_closure
        given = g_hat.view_as(w).to(w.dtype)
        natural = torch.where(one_sample, _scaled(g, w, mu, temperature), given) * natural_scale
        momentum.copy_(beta * momentum + (1 - beta) * (natural + reweight * (lam - prior_lam)))
        updated = lam - step_size * momentum / bias_correction
        mu.copy_(tanh32(torch.where(lagged_mu, lam, updated)))  # lam before or after
        lam.copy_(updated)
        w.copy_(mu)
        return (before != (w >= 0)).sum()

    # -- evaluation ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[EvaluationSamples | None]:
        """The mode (+1 where mu > 0, else -1), or ``eval_samples`` networks sampled from the
        posterior; the training weights are put back on exit."""
        params = self.binary_params
        count = int(self.options["eval_samples"])
        self.evaluations += 1
        with restoring(params), torch.no_grad():
            if count == 0:
                for p in params:
                    p.copy_(_plus_where(self.state[p]["mu"] > 0).to(p.dtype))
                yield None
            else:
                yield EvaluationSamples(count, self._sampler(params, self.evaluations))

    def _sampler(self, params: list[torch.Tensor], evaluation: int) -> Callable[[int], None]:
        def draw(index: int) -> None:
            for j, p in enumerate(params):
                lam = self.state[p]["lam"]
                u = counter_uniform(lam, _key(self.seed, evaluation, index, j, lam.device))
                p.copy_(_plus_where(u < torch.sigmoid(2 * lam)).to(p.dtype))

        return draw


def relaxed_sample(lam: torch.Tensor, key: torch.Tensor, temperature: Any) -> torch.Tensor:
    """The relaxed weight sample ``tanh((log(u / (1 - u)) / 2 + lam) / T)`` (float32).

    ``u`` comes from :func:`benchbnn.optim.counter_uniform` (a pure function of ``key`` and
    the position, so the compiled kernel makes it without reading a noise tensor) with its
    lowest bit set: ``u = (2 j + 1) 2^-24``, ``j`` uniform in [0, 2^23). Then ``u`` and
    ``1 - u`` are exact, never 0, and the values are symmetric about 1/2, so the logistic
    noise ``log(u / (1 - u))`` is finite (at most 16.6 in magnitude) and symmetric about 0.
    (``counter_uniform`` alone can return 0, where the logarithm is -inf.)

    Args:
        lam: float32 natural parameters, any shape.
        key: 0-d int64 tensor below 2**31.
        temperature: T > 0 (a float, or a 0-d tensor in compiled code).

    Returns:
        float32 tensor of ``lam``'s shape, in [-1, 1].
    """
    u = torch.floor(counter_uniform(lam, key) * 2.0**23) * 2.0**-23 + 2.0**-24
    # * 0.5 is the authors' / 2 (both exact), without a division's cost
    return tanh32((torch.log(u / (1 - u)) * 0.5 + lam) / temperature)


def _scaled(g: torch.Tensor, w: torch.Tensor, mu: torch.Tensor, temperature: Any) -> torch.Tensor:
    """``((1 - w^2 + 1e-10) / T / (1 - mu^2 + 1e-10)) * g`` (the authors' order), float32."""
    return (1 - w * w + SCALE_EPS) / temperature / (1 - mu * mu + SCALE_EPS) * g


def _fill_sample(p: torch.Tensor, lam: torch.Tensor, key: torch.Tensor, temperature: Any) -> None:
    """Write :func:`relaxed_sample` into the weight ``p`` (rounded to its dtype)."""
    p.copy_(relaxed_sample(lam, key, temperature))


def _fill_mean(p: torch.Tensor, lam: torch.Tensor, key: torch.Tensor, temperature: Any) -> None:
    """Write the posterior mean ``tanh(lam)`` into the weight ``p`` (``S = 0``)."""
    p.copy_(tanh32(lam))


def _add_scaled(
    g_hat: torch.Tensor, g: torch.Tensor, w: torch.Tensor, mu: torch.Tensor, temperature: Any
) -> None:
    """``g_hat += scaled gradient`` of one sample ``w`` (``g_hat`` flat, float32)."""
    g_hat.add_(_scaled(g.to(torch.float32), w.to(torch.float32), mu, temperature).reshape(-1))


def _accumulate(total: torch.Tensor | None, grad: torch.Tensor | None) -> torch.Tensor | None:
    if grad is None:
        return total
    return grad.detach().clone() if total is None else total.add_(grad)


def _plus_where(mask: torch.Tensor) -> torch.Tensor:
    """+1 where ``mask`` holds, -1 elsewhere (float32)."""
    one = torch.ones((), dtype=torch.float32, device=mask.device)
    return torch.where(mask, one, -one)


def _key(seed: int, evaluation: int, index: int, tensor: int, device: torch.device) -> torch.Tensor:
    """A key below 2**31 for :func:`counter_uniform`, distinct per (evaluation, network,
    tensor) for practical purposes and the same on every rank."""
    mixed = (seed * 1_000_003 + evaluation * 7_919 + index * 104_729 + tensor * 31) % (2**31 - 1)
    return torch.tensor(mixed, dtype=torch.int64, device=device)


#: Every hyperparameter BayesBiNN accepts (the rule's, the options, then Adam's).
HPARAMS = BayesBiNN.hparams


@benchbnn.hookimpl
def benchbnn_optimizers() -> list[benchbnn.OptimizerSpec]:
    return [benchbnn.optimizer_spec(BayesBiNN)]

"""The built-in architectures: exact sizes, shapes, timm parity, binary forward, training."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import benchbnn
from benchbnn.cli import main as cli_main
from benchbnn.core.binary import (
    BinaryLayer,
    parameter_breakdown,
    set_latent_mode,
    sgn0,
    split_parameters,
)
from benchbnn.core.errors import BenchbnnError, HyperparameterError, UnsupportedInputError

ARCHS = ("binarynet", "bnn-mlp", "xnornet", "birealnet18")
TIMM_NAMES = {
    "binarynet": "binarynet",
    "bnn-mlp": "bnn_mlp",
    "xnornet": "xnornet",
    "birealnet18": "birealnet18",
}

#: Small versions that run in milliseconds on a CPU, at each network's small input size.
SMALL = {
    "binarynet": dict(num_classes=10, in_channels=3, image_size=32, width=0.125),
    "bnn-mlp": dict(num_classes=10, in_channels=1, image_size=28, hidden=(64, 64, 64)),
    "xnornet": dict(num_classes=10, in_channels=3, image_size=32, width=0.0625),
    "birealnet18": dict(num_classes=10, in_channels=3, image_size=32, width=0.125),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a shared CPU makes OpenMP's thread team spin
    (20x slower here with other jobs running); restore the setting for the next module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return benchbnn.get_architecture(arch).build(**{**SMALL[arch], **kwargs})


def batch(model: nn.Module, n: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *model.input_size), generator=generator)


def counts(model: nn.Module) -> tuple[int, int]:
    binary, real = split_parameters(model)
    n_binary = sum(p.numel() for p in binary)
    return n_binary, n_binary + sum(p.numel() for p in real)


# --- full-size models, built once per module -------------------------------------------------


@pytest.fixture(scope="module")
def xnornet224():
    torch.manual_seed(0)
    return benchbnn.get_architecture("xnornet").build(
        num_classes=1000, in_channels=3, image_size=224
    )


@pytest.fixture(scope="module")
def birealnet224():
    torch.manual_seed(0)
    return benchbnn.get_architecture("birealnet18").build(
        num_classes=1000, in_channels=3, image_size=224
    )


@pytest.fixture(scope="module")
def birealnet32():
    torch.manual_seed(0)
    return benchbnn.get_architecture("birealnet18").build(
        num_classes=10, in_channels=3, image_size=32
    )


@pytest.fixture(scope="module")
def binarynet32():
    torch.manual_seed(0)
    return benchbnn.get_architecture("binarynet").build(
        num_classes=10, in_channels=3, image_size=32
    )


@pytest.fixture(scope="module")
def mlp784():
    torch.manual_seed(0)
    return benchbnn.get_architecture("bnn-mlp").build(num_classes=10, in_channels=1, image_size=28)


# --- exact sizes (docs/architectures.md) -----------------------------------------------------


def test_binarynet_has_10352000_binary_weights_and_bn_offsets_only(binarynet32):
    binary, trainable = counts(binarynet32)
    assert binary == 10_352_000
    # batch norm learns no scale: one offset per channel / unit of every normalization
    assert trainable - binary == 2 * 128 + 2 * 256 + 2 * 512 + 2 * 1024 + 10
    assert not any(
        m.weight is not None
        for m in binarynet32.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )


def test_bnn_mlp_has_36806656_binary_weights(mlp784):
    assert counts(mlp784)[0] == 36_806_656
    assert [b.fc.input_quantizer is None for b in mlp784.blocks] == [True, False, False]


def test_xnornet_at_224_has_exact_binary_and_trainable_counts(xnornet224):
    assert counts(xnornet224) == (58_236_928, 62_387_104)


def test_xnornet_cifar_variant_changes_only_the_stem():
    with torch.device("meta"):
        model = benchbnn.get_architecture("xnornet").build(num_classes=10, image_size=32)
    assert model.stem_type == "cifar"
    assert counts(model)[0] == 58_236_928
    assert model.stem.conv.kernel_size == (5, 5) and model.stem.conv.stride == (1, 1)
    assert isinstance(model.stem.pool, nn.Identity)


def test_birealnet18_at_224_matches_resnet18_size(birealnet224):
    assert birealnet224.stem_type == "imagenet"
    assert counts(birealnet224) == (10_985_472, 11_689_512)


def test_birealnet18_cifar_stem_size(birealnet32):
    assert birealnet32.stem_type == "cifar"
    assert counts(birealnet32) == (10_985_472, 11_173_962)
    assert birealnet32.stem.conv.kernel_size == (3, 3) and birealnet32.stem.conv.stride == (1, 1)


def test_binarynet_width_multiplies_every_layer():
    with torch.device("meta"):
        model = benchbnn.get_architecture("binarynet").build(width=0.5)
    c1, c2, c3, units = 64, 128, 256, 512
    expected = (
        (3 * c1 + c1 * c1 + c1 * c2 + c2 * c2 + c2 * c3 + c3 * c3) * 9
        + 9 * c3 * units
        + units * units
        + units * 10
    )
    assert counts(model)[0] == expected


def test_binarynet_layer_norm_option_keeps_the_binary_layers():
    with torch.device("meta"):
        model = benchbnn.get_architecture("binarynet").build(norm="layer")
    assert counts(model)[0] == 10_352_000
    kinds = {type(m).__name__ for m in model.modules()}
    assert "ChannelLayerNorm" in kinds and not any("BatchNorm" in k for k in kinds)
    small = build("binarynet", norm="layer")
    assert small(batch(small)).shape == (4, 10)


# --- normalization settings: the authors' by default (docs/architectures.md) ------------------


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_settings(model: nn.Module) -> list[tuple[float, float, bool]]:
    """(momentum, eps, learns a scale) of every batch norm, in module order."""
    return [(m.momentum, m.eps, m.weight is not None) for m in batch_norms(model)]


def test_binarynet_batch_norm_is_the_authors_keras_setting():
    # Bop2ndOrder binarynet_batch.py: BatchNormalization(scale=False), Keras momentum 0.99
    model = build("binarynet")
    assert bn_settings(model) == [(0.01, 1e-3, False)] * 9
    assert all(m.bias is not None and m.bias.shape == (m.num_features,) for m in batch_norms(model))


def test_binarynet_batch_norm_options_give_pytorchs_defaults():
    with torch.device("meta"):
        model = benchbnn.get_architecture("binarynet").build(
            bn_momentum="0.1", bn_eps="1e-5", bn_scale="true"
        )
    assert bn_settings(model) == [(0.1, 1e-5, True)] * 9
    assert all(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in batch_norms(model))
    # a scale and an offset per channel or unit of the nine normalizations
    features = [m.num_features for m in batch_norms(model)]
    assert features == [128, 128, 256, 256, 512, 512, 1024, 1024, 10]
    binary, trainable = counts(model)
    assert (binary, trainable - binary) == (10_352_000, 2 * sum(features))


def test_binarynet_layer_norm_epsilon_is_keras_default():
    model = build("binarynet", norm="layer")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 9 and {m.eps for m in norms} == {1e-3}
    assert {
        m.eps
        for m in build("binarynet", norm="layer", bn_eps=1e-5).modules()
        if isinstance(m, nn.LayerNorm)
    } == {1e-5}


def test_birealnet_batch_norm_is_the_authors_keras_setting(birealnet224):
    # Bop2ndOrder birealnet_batch.py: BatchNormalization(momentum=0.8), Keras eps 1e-3, scale
    assert bn_settings(birealnet224) == [(0.2, 1e-3, True)] * 20  # stem, 16 blocks, 3 shortcuts
    model = build("birealnet18", bn_momentum=0.1, bn_eps=1e-5)
    assert bn_settings(model) == [(0.1, 1e-5, True)] * 20


def test_xnornet_batch_norm_epsilon_follows_the_layer(xnornet224):
    # Bop2ndOrder xnor_batch.py: momentum 0.9 (PyTorch 0.1), scale=True; eps 1e-5 after the
    # stem, 1e-4 in front of each binary convolution, 1e-3 last
    want = [(0.1, 1e-5, True)] + [(0.1, 1e-4, True)] * 6 + [(0.1, 1e-3, True)]
    assert bn_settings(xnornet224) == want
    assert xnornet224.stem.bn.eps == 1e-5 and xnornet224.norm.eps == 1e-3
    assert {m.eps for m in batch_norms(build("xnornet", bn_eps="1e-5"))} == {1e-5}


def test_xnornet_without_scale_is_larq_zoos_and_keeps_its_classifier_interface():
    model = build("xnornet", bn_scale=False)
    assert [s for _, _, s in bn_settings(model)] == [False] * 8
    full, centred = counts(build("xnornet")), counts(model)
    assert full[1] - centred[1] == sum(m.num_features for m in batch_norms(model))
    model.reset_classifier(5)
    assert model(batch(model)).shape == (4, 5)


@pytest.mark.parametrize(
    ("arch", "options", "message"),
    [
        ("binarynet", {"bn_momentum": 0}, r"'bn_momentum' = 0.0 is outside .* \(0.0, 1.0\]"),
        ("birealnet18", {"bn_momentum": 1.5}, "'bn_momentum'"),
        ("xnornet", {"bn_eps": -1e-3}, "'bn_eps' must be"),
        ("xnornet", {"bn_eps": "1e-5,1e-4"}, "one epsilon for every batch norm or three"),
        ("binarynet", {"bn_scale": "sometimes"}, "'bn_scale' must be true or false"),
    ],
)
def test_bad_batch_norm_options_are_clear_errors(arch, options, message):
    with pytest.raises(HyperparameterError, match=message):
        benchbnn.get_architecture(arch).build(**options)


def test_bnn_mlp_keeps_pytorchs_batch_norm():
    # no authors' code in the Bop line: Courbariaux et al.'s Theano MLP is the reference
    assert set(bn_settings(build("bnn-mlp"))) == {(0.1, 1e-5, True)}
    assert "bn_momentum" not in benchbnn.get_architecture("bnn-mlp").options


def test_parameter_breakdown_of_birealnet_packs_binary_weights_at_one_bit(birealnet224):
    info = parameter_breakdown(birealnet224)
    assert info["binary_weights"] == 10_985_472
    assert info["real_parameters"] == 11_689_512 - 10_985_472
    assert info["binary_layers"] == 16
    packed = 10_985_472 // 8 + 4 * (info["real_parameters"] + info["state"])
    assert info["size_mb"] == packed / 2**20


# --- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_small_models_map_a_batch_to_logits(arch):
    model = build(arch)
    assert model(batch(model)).shape == (4, 10)


def test_full_binarynet_and_mlp_output_shapes(binarynet32, mlp784):
    assert binarynet32(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert mlp784(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert mlp784(torch.randn(2, 784)).shape == (2, 10)  # flat inputs work too


@pytest.mark.parametrize("fixture", ["xnornet224", "birealnet224"])
def test_imagenet_models_take_one_224_image(fixture, request):
    model = request.getfixturevalue(fixture)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_birealnet_stem_follows_the_input_size():
    stems = {}
    for size in (16, 64, 112, 160):
        with torch.device("meta"):
            stems[size] = benchbnn.get_architecture("birealnet18").build(image_size=size).stem_type
    assert stems == {16: "cifar", 64: "cifar", 112: "imagenet", 160: "imagenet"}
    with torch.device("meta"):
        forced = benchbnn.get_architecture("birealnet18").build(image_size=64, stem="imagenet")
    assert forced.stem_type == "imagenet"


def test_mlp_accepts_flat_data_and_other_image_sizes():
    flat = build("bnn-mlp", in_channels=64, image_size=1)
    assert flat(torch.randn(3, 64)).shape == (3, 10)
    digits = build("bnn-mlp", in_channels=1, image_size=8, hidden="32,16")
    assert digits.hidden_sizes == (32, 16)
    assert digits(torch.randn(3, 1, 8, 8)).shape == (3, 10)


# --- timm ------------------------------------------------------------------------------------


def _same_model(a: nn.Module, b: nn.Module) -> None:
    assert type(a) is type(b)
    assert str(a) == str(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


TIMM_CASES = [
    *[(arch, SMALL[arch]) for arch in ARCHS],
    ("xnornet", dict(num_classes=1000, in_channels=3, image_size=224, width=0.0625)),
    ("birealnet18", dict(num_classes=1000, in_channels=3, image_size=224)),
    ("birealnet18", dict(num_classes=10, in_channels=1, image_size=32)),
    ("binarynet", dict(num_classes=10, in_channels=3, image_size=32)),
]


@pytest.mark.parametrize(
    ("arch", "kwargs"), TIMM_CASES, ids=[f"{a}-{k['image_size']}" for a, k in TIMM_CASES]
)
def test_timm_and_benchbnn_build_the_same_network(arch, kwargs):
    options = dict(kwargs)
    timm_kwargs = dict(
        num_classes=options.pop("num_classes"),
        in_chans=options.pop("in_channels"),
        img_size=options.pop("image_size"),
        **options,
    )
    torch.manual_seed(3)
    ours = benchbnn.get_architecture(arch).build(**kwargs)
    torch.manual_seed(3)
    theirs = timm.create_model(TIMM_NAMES[arch], **timm_kwargs)
    _same_model(ours, theirs)
    assert ours.pretrained_cfg == theirs.pretrained_cfg


def test_timm_defaults_and_tags_pick_the_papers_inputs():
    benchbnn.list_architectures()  # loading the plugins registers the timm entrypoints
    assert {"binarynet", "bnn_mlp", "xnornet", "birealnet18"} <= set(timm.list_models())
    with torch.device("meta"):
        imagenet = timm.create_model("birealnet18")
        cifar = timm.create_model("birealnet18.cifar10")
        mnist = timm.create_model("bnn_mlp", num_classes=10, in_chans=1)
        xnor = timm.create_model("xnornet.cifar10")
    assert (imagenet.stem_type, imagenet.num_classes, imagenet.input_size) == (
        "imagenet",
        1000,
        (3, 224, 224),
    )
    assert (cifar.stem_type, cifar.num_classes, cifar.input_size) == ("cifar", 10, (3, 32, 32))
    assert mnist.input_size == (1, 28, 28) and counts(mnist)[0] == 36_806_656
    assert (
        xnor.stem_type == "cifar" and xnor.pretrained_cfg["mean"] != imagenet.pretrained_cfg["mean"]
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_timm_model_interface(arch):
    model = build(arch)
    cfg = model.pretrained_cfg
    assert model.default_cfg == cfg
    assert tuple(cfg["input_size"]) == model.input_size and cfg["num_classes"] == model.num_classes
    assert len(cfg["mean"]) == len(cfg["std"]) == model.input_size[0]
    model.get_submodule(cfg["first_conv"])
    assert model.get_submodule(cfg["classifier"]) is not None

    x = batch(model)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (4, model.num_features)
    assert torch.equal(model.forward_head(features), model(x))

    set_latent_mode(model, False, clip=1.25)
    model.reset_classifier(5)
    assert model.num_classes == 5 and model(x).shape == (4, 5)
    assert all(
        not layer.latent and layer.clip == 1.25
        for layer in model.modules()
        if isinstance(layer, BinaryLayer)
    )
    model.reset_classifier(0)
    assert model(x).shape == (4, model.num_features)


# --- binary forward and gradients -------------------------------------------------------------


class WatchBinaryWeights(TorchFunctionMode):
    """Records, for each binary layer's forward, whether its conv/linear weights were all +-1."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.current: str | None = None
        self.calls: dict[str, list[bool]] = {}
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, BinaryLayer):
                self.handles.append(module.register_forward_pre_hook(self._enter(name)))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(_module, _inputs):
            self.current = name

        return hook

    def _leave(self, _module, _inputs, _output):
        self.current = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.current is not None and func in (F.conv2d, F.linear):
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            plus_minus_one = bool(torch.all(weight.detach().abs() == 1))
            self.calls.setdefault(self.current, []).append(plus_minus_one)
        return func(*args, **kwargs)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def assert_binary_forward(model: nn.Module, x: torch.Tensor) -> None:
    watcher = WatchBinaryWeights(model)
    try:
        with watcher:
            model(x)
    finally:
        watcher.close()
    layers = [name for name, m in model.named_modules() if isinstance(m, BinaryLayer)]
    assert layers and sorted(watcher.calls) == sorted(layers)
    assert all(calls == [True] for calls in watcher.calls.values()), watcher.calls


@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_model_is_in_latent_mode_with_real_latent_weights(arch):
    model = build(arch)
    layers = [m for m in model.modules() if isinstance(m, BinaryLayer)]
    assert layers and all(layer.latent and layer.clip == 1.0 for layer in layers)
    binary, _ = split_parameters(model)
    assert [id(p) for p in binary] == [id(layer.weight) for layer in layers]
    assert any(not torch.all(p.abs() == 1) for p in binary)  # latent values, not yet +-1
    assert_binary_forward(model, batch(model))


@pytest.mark.parametrize("arch", ARCHS)
def test_binary_mode_forward_sees_only_plus_minus_one(arch):
    model = build(arch)
    binary, _ = split_parameters(model)
    with torch.no_grad():
        for p in binary:
            p.copy_(sgn0(p))
    set_latent_mode(model, False)
    assert_binary_forward(model, batch(model))


@pytest.mark.parametrize("latent", [True, False], ids=["latent", "binary"])
@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_every_trainable_parameter(arch, latent):
    model = build(arch)
    if not latent:
        with torch.no_grad():
            for p in split_parameters(model)[0]:
                p.copy_(sgn0(p))
    set_latent_mode(model, latent)
    x = batch(model, n=8)
    y = torch.arange(8) % 10
    F.cross_entropy(model(x), y).backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
    ]
    assert not missing


# --- bad input -------------------------------------------------------------------------------


def test_binarynet_rejects_too_small_images_naming_supported_inputs():
    with pytest.raises(UnsupportedInputError, match=r"8x8.*at least 10.*bnn-mlp"):
        benchbnn.get_architecture("binarynet").build(image_size=8)


def test_xnornet_rejects_other_sizes_on_both_paths():
    with pytest.raises(BenchbnnError, match=r"xnornet.*64x64.*32, 224"):
        benchbnn.get_architecture("xnornet").build(image_size=64)
    with pytest.raises(UnsupportedInputError, match=r"224x224.*32x32"):
        timm.create_model("xnornet", img_size=64)


def test_birealnet_rejects_images_too_small_for_the_stem():
    with pytest.raises(UnsupportedInputError, match=r"16x16.*imagenet stem.*>= 32"):
        benchbnn.get_architecture("birealnet18").build(image_size=16, stem="imagenet")
    with pytest.raises(UnsupportedInputError, match="sides >= 8"):
        benchbnn.get_architecture("birealnet18").build(image_size=4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels", [0, -3])
def test_bad_channel_count_is_a_clear_error(arch, channels):
    with pytest.raises(UnsupportedInputError, match=rf"{arch}.*input channel.*any channel count"):
        benchbnn.get_architecture(arch).build(in_channels=channels)


@pytest.mark.parametrize(
    ("arch", "options", "message"),
    [
        ("binarynet", {"width": -1}, "'width' must be a positive number"),
        ("binarynet", {"width": "wide"}, "'width' must be a positive number"),
        ("binarynet", {"norm": "group"}, "'norm' must be one of batch, layer"),
        ("bnn-mlp", {"hidden": "a,b"}, "'hidden' must be one or more positive whole numbers"),
        ("bnn-mlp", {"hidden": ()}, "'hidden' must be one or more positive whole numbers"),
        ("birealnet18", {"stem": "tiny"}, "'stem' must be one of auto, imagenet, cifar"),
        ("xnornet", {"depth": 3}, "has no option 'depth'"),
    ],
)
def test_bad_options_are_clear_errors(arch, options, message):
    with pytest.raises(HyperparameterError, match=message):
        benchbnn.get_architecture(arch).build(**options)


def test_option_values_given_as_text_are_converted():
    model = build("binarynet", width="0.125", norm="LAYER")
    assert model.width == 0.125 and model.norm == "layer"


# --- describe --------------------------------------------------------------------------------


def test_describe_json_reports_exact_counts(capsys):
    code = cli_main(
        ["describe", "birealnet18", "--image-size", "224", "--num-classes", "1000", "--json"]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["binary_weights"] == 10_985_472
    assert data["trainable_parameters"] == 11_689_512
    assert data["input"] == [3, 224, 224]
    first = data["layers"][0]
    assert first["name"] == "stem.conv" and first["output"] == [64, 112, 112]


def test_describe_table_with_options(capsys):
    assert cli_main(["describe", "binarynet", "--set", "width=0.25", "--set", "norm=layer"]) == 0
    out = capsys.readouterr().out
    assert "options: width=0.25, norm=layer" in out
    assert "binary weights" in out and "MB" in out
    assert "stages.0.conv" in out and "BinaryConv2d" in out


def test_describe_bad_input_exits_2_with_one_line(capsys):
    assert cli_main(["describe", "xnornet", "--image-size", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "32, 224" in err[0]
    assert cli_main(["describe", "binarynet", "--set", "width"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


# --- a short real training run with every optimizer plugin -----------------------------------

#: Hyperparameters for 20 steps on one fixed batch: rates far above the papers' (which are set
#: for hundreds of epochs) so that weights flip within the run. Other optimizers use defaults.
TRAIN_HPARAMS = {
    "bop": dict(gamma=1e-2, threshold=1e-6),
    "bop2ndorder": dict(gamma=1e-2, sigma=1e-2, threshold=1e-2),
    "pbop": dict(gamma=1e-2, sigma=1e-2, threshold=1e-2, scaler=10.0, seed=0),
    "adam-latent": dict(lr=1e-2),
    "bayesbinn": dict(train_size=32, seed=0),
    "md-tanh": dict(step_size=1e-2, beta_scale=2.0, beta_interval=5),
}
TRAIN_STEPS = 20


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", benchbnn.list_optimizers())
@pytest.mark.parametrize("arch", ARCHS)
def test_short_training_run_lowers_the_loss(arch, optimizer):
    spec = benchbnn.get_optimizer(optimizer)
    hparams = TRAIN_HPARAMS.get(optimizer, {})
    model = build(arch, **({"hidden": (64, 64, 64)} if arch == "bnn-mlp" else {"width": 0.0625}))
    set_latent_mode(model, spec.latent_weights, clip=hparams.get("clip", 1.0))
    binary, real = split_parameters(model)
    opt = spec.build(binary, real, **hparams)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((32, *model.input_size), generator=generator)
    y = torch.randint(0, 10, (32,), generator=generator)

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    with torch.no_grad():
        before = loss().item()
    flips = 0

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value.detach()

    for _ in range(TRAIN_STEPS):
        if spec.needs_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
        flips += int(opt.flip_count)
    with torch.no_grad():
        after = loss().item()
    assert after < 0.9 * before, (before, after)
    assert flips > 0
    if spec.forward == "sign":
        assert all(torch.all(p.abs() == 1) for p in binary)
    with opt.evaluation_weights():  # the weights evaluated (their signs for forward="identity")
        assert_binary_forward(model, x)

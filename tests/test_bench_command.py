"""``benchbnn bench``: optimizer step times against the memory-bandwidth floor.

Only the shape of the results is checked (rows, positive times, the bytes model), never how fast
anything ran: the machines the tests run on are shared and noisy.
"""

from __future__ import annotations

import contextlib
import json
import types

import pytest
import torch

import benchbnn
from benchbnn.bench.step_times import render_markdown
from benchbnn.cli import bench as bench_command
from benchbnn.cli import main as cli_main
from benchbnn.optim import IMPLEMENTATIONS, BinaryOptimizer, ema_, flip_, timing
from benchbnn.optim.timing import (
    BINARYNET_SHAPES,
    BINARYNET_WEIGHTS,
    DEFAULT_LLC_BYTES,
    SMALL_SHAPES,
    Cache,
    default_floor_bytes,
    last_level_cache,
    state_bytes,
    step_bytes,
)

SMALL = ["--weights", "small", "--floor-mib", "64"]


def _bench(tmp_path, capsys, *args):
    code = cli_main(["bench", *args, *SMALL, "--out", str(tmp_path)])
    out = capsys.readouterr()
    return code, out


def _table_rows(markdown: str, name: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith(f"| {name} |")
    ]


def test_bench_bop_writes_one_row_per_implementation(tmp_path, capsys):
    code, out = _bench(tmp_path, capsys, "bop", "--repeats", "2")
    assert code == 0, out.err
    data = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    markdown = (tmp_path / "bench.md").read_text(encoding="utf-8")

    (bop,) = data["optimizers"]
    assert bop["name"] == "bop"
    assert [c["implementation"] for c in bop["implementations"]] == list(IMPLEMENTATIONS)
    assert len(_table_rows(markdown, "bop")) == len(IMPLEMENTATIONS)
    assert sum(c["default"] for c in bop["implementations"]) == 1
    for case in bop["implementations"]:
        if not case["available"]:  # only compiled may be, and then it says why
            assert case["implementation"] == "compiled" and case["reason"]
            continue
        assert len(case["samples_ms"]) == 2
        assert all(s > 0 for s in case["samples_ms"])
        assert case["median_ms"] > 0 and case["floor_ms"] > 0 and case["ratio"] > 0
    assert bop["state_bytes_per_weight"] == 4.0
    assert bop["moved_bytes_per_weight"] == 20.0
    assert data["num_weights"] == sum(torch.Size(s).numel() for s in SMALL_SHAPES)
    assert data["floor"]["array_bytes"] == 64 * 2**20
    assert data["floor"]["bandwidth_bytes_per_s"] > 0
    assert data["machine"]["threads"] == torch.get_num_threads()
    assert len(data["load_before"]) == 3 and len(data["load_after"]) == 3
    # The table is printed too, and the Markdown regenerates from the JSON alone.
    assert "| bop | reference |" in out.out
    assert render_markdown(data) == markdown


def test_an_unavailable_implementation_says_why(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    code, out = _bench(tmp_path, capsys, "bop", "--repeats", "1", "--warmup", "0")
    assert code == 0, out.err
    markdown = (tmp_path / "bench.md").read_text(encoding="utf-8")
    (compiled,) = [r for r in _table_rows(markdown, "bop") if r[1] == "compiled"]
    assert compiled[2] == "unavailable"
    assert "bop compiled: unavailable (TORCHDYNAMO_DISABLE is set)" in markdown


def test_unknown_optimizer_exits_2_with_a_suggestion(tmp_path, capsys):
    out_dir = tmp_path / "never"
    code = cli_main(["bench", "bopp", *SMALL, "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown optimizer 'bopp'" in err and "Did you mean 'bop'" in err
    assert not out_dir.exists()  # nothing started


@pytest.mark.parametrize("bad", [["--repeats", "0"], ["--implementations", "fast"]])
def test_bad_options_exit_2(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", "bop", *bad, "--out", str(tmp_path)])
    assert info.value.code == 2


# --- the bytes model ----------------------------------------------------------------------------


def _one_step(name: str, shape=(3, 5)):
    p = torch.nn.Parameter(torch.randn(shape))
    p.grad = torch.randn(shape)
    optimizer = benchbnn.get_optimizer(name).build([p], [])
    optimizer.implementation = "reference"
    optimizer.step()
    return optimizer, p


def test_bop_moves_weights_gradients_and_m():
    optimizer, p = _one_step("bop")
    n = 4 * 15  # bytes of one float32 (3, 5) tensor
    assert state_bytes(optimizer, [p]) == n  # m
    assert step_bytes(optimizer, [p]) == 2 * n + n + 2 * n  # w read+write, g read, m read+write


def test_bop2ndorder_moves_weights_gradients_m_and_v():
    optimizer, p = _one_step("bop2ndorder")
    n = 4 * 15
    assert state_bytes(optimizer, [p]) == 2 * n  # m and v
    assert step_bytes(optimizer, [p]) == 2 * n + n + 2 * (2 * n)


def _timing(step_ms, bandwidths, moved_bytes=10**9):
    case = timing.Case("compiled", samples_ms=list(step_ms))
    return timing.OptimizerTiming(
        name="x",
        plugin="-",
        num_weights=1,
        state_bytes=0,
        moved_bytes=moved_bytes,
        default_implementation="compiled",
        cases=[case],
        bandwidth_samples=list(bandwidths),
    ), case


def test_the_ratio_pairs_each_step_with_the_floor_of_its_round():
    # the memory system halves its speed after round 2 and the memory-bound step slows with it:
    # paired, every round says 1.2; the quotient of the medians would mix the two halves
    fast, slow = 100e9, 50e9  # bytes per second
    bandwidths = [fast, fast, slow, slow, slow]
    steps = [1.2 * 1e9 / b * 1e3 for b in bandwidths]  # ms: 1.2x the floor of each round
    result, case = _timing(steps, bandwidths)
    assert result.ratio(case) == pytest.approx(1.2)
    assert result.floor_ms == pytest.approx(20.0)  # 1 GB at the median bandwidth, 50 GB/s
    assert case.median_ms / result.floor_ms == pytest.approx(1.2)
    result, case = _timing(steps[:4], bandwidths[:4])  # medians mix: 18 ms over 13.3 ms
    assert result.ratio(case) == pytest.approx(1.2)
    assert case.median_ms / result.floor_ms == pytest.approx(18 / (40 / 3))


def test_the_ratio_falls_back_to_the_medians_without_a_floor_per_round():
    result, case = _timing([2.0, 4.0, 6.0], [100e9])
    assert result.ratio(case) == pytest.approx(4.0 / 10.0)
    result, case = _timing([], [100e9])
    assert result.ratio(case) is None


def test_the_small_weights_get_a_small_floor_by_default(monkeypatch):
    sizes = []

    class Recording(timing.StreamFloor):
        def __init__(self, nbytes):
            sizes.append(nbytes)
            super().__init__(nbytes)

    monkeypatch.setattr(timing, "StreamFloor", Recording)
    result = timing.bench_optimizers(["bop"], weights="small", repeats=1, warmup=0)
    assert sizes == [timing.SMALL_FLOOR_BYTES] == [result.floor_array_bytes]


def test_the_shapes_are_binarynets():
    assert sum(torch.Size(s).numel() for s in BINARYNET_SHAPES) == BINARYNET_WEIGHTS
    assert len(SMALL_SHAPES) == len(BINARYNET_SHAPES)


def test_the_command_lists_the_same_implementations_without_torch():
    assert bench_command.IMPLEMENTATIONS == IMPLEMENTATIONS
    assert set(bench_command.WEIGHTS) == set(timing.WEIGHT_SETS)


# --- the cache and the floor's size -------------------------------------------------------------


def _fake_cache(root, cpu, index, level, kind, size, shared):
    folder = root / f"cpu{cpu}" / "cache" / f"index{index}"
    folder.mkdir(parents=True)
    for name, value in (("level", level), ("type", kind), ("size", size)):
        (folder / name).write_text(f"{value}\n")
    (folder / "shared_cpu_list").write_text(f"{shared}\n")


def test_last_level_cache_counts_each_shared_instance_once(tmp_path):
    for cpu in range(4):
        _fake_cache(tmp_path, cpu, 0, 1, "Data", "32K", str(cpu))
        _fake_cache(tmp_path, cpu, 1, 1, "Instruction", "32K", str(cpu))
        _fake_cache(tmp_path, cpu, 3, 3, "Unified", "32768K", "0-1" if cpu < 2 else "2-3")
    cache = last_level_cache(tmp_path)
    assert (cache.bytes, cache.level) == (64 * 2**20, 3)
    assert "2 x 32 MiB" in cache.source


def test_last_level_cache_falls_back_to_the_documented_default(tmp_path, monkeypatch):
    monkeypatch.setattr(timing, "_cache_from_lscpu", lambda: None)
    cache = last_level_cache(tmp_path / "missing")
    assert cache.bytes == DEFAULT_LLC_BYTES and cache.level is None


def test_the_default_floor_is_2_gib_or_4_times_the_cache():
    assert default_floor_bytes(Cache(32 * 2**20, 3, "test")) == 2 * 2**30
    assert default_floor_bytes(Cache(768 * 2**20, 3, "test")) == 3 * 2**30


# --- third-party optimizers ---------------------------------------------------------------------


def _sgd(binary_params, real_params, lr=0.1):
    return torch.optim.SGD([*binary_params, *real_params], lr=lr, momentum=0.9)


class _ToyBop(BinaryOptimizer):
    hparams = (benchbnn.HParam("threshold", 1e-8, low=0.0, high=1.0),)
    state_buffers = ("m",)
    rule_keys = ("threshold",)

    def __init__(self, binary_params, real_params=(), *, threshold=1e-8, implementation=None):
        super().__init__(
            binary_params,
            real_params,
            binary={"threshold": threshold},
            real={},
            implementation=implementation,
        )

    @staticmethod
    def update(w, g, m, *, threshold):
        ema_(m, g, 1e-4)
        return flip_(w, w * m > threshold)


def _plugin():
    module = types.ModuleType("toy-bench-plugin")
    lr = benchbnn.HParam("lr", 0.1, low=0.0, high=10.0)
    threshold = _ToyBop.hparams[0]

    @benchbnn.hookimpl
    def benchbnn_optimizers():
        return [
            benchbnn.OptimizerSpec(name="toy-sgd", factory=_sgd, hparams=(lr,)),
            benchbnn.OptimizerSpec(name="toy-bop", factory=_ToyBop, hparams=(threshold,)),
        ]

    module.benchbnn_optimizers = benchbnn_optimizers
    return module


@pytest.mark.usefixtures("clean_registry")
def test_a_third_party_optimizer_is_timed_like_a_built_in(tmp_path, capsys):
    benchbnn.register_plugin(_plugin(), name="toy-bench-plugin")
    code, out = _bench(
        tmp_path,
        capsys,
        "toy-bop",
        "toy-sgd",
        "--repeats",
        "1",
        "--implementations",
        "reference,foreach",
    )
    assert code == 0, out.err
    data = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    toy_bop, toy_sgd = data["optimizers"]
    assert [c["implementation"] for c in toy_bop["implementations"]] == ["reference", "foreach"]
    assert toy_bop["moved_bytes_per_weight"] == 20.0
    assert "no update_foreach" in " ".join(toy_bop["implementations"][1]["notes"])
    # A plain torch optimizer has no implementations to choose: one row, its momentum counted.
    (only,) = toy_sgd["implementations"]
    assert only["implementation"] == "default" and only["median_ms"] > 0
    assert toy_sgd["state_bytes_per_weight"] == 4.0
    assert toy_sgd["moved_bytes_per_weight"] == 20.0
    markdown = (tmp_path / "bench.md").read_text(encoding="utf-8")
    assert len(_table_rows(markdown, "toy-bop")) == 2
    assert len(_table_rows(markdown, "toy-sgd")) == 1


# --- optimizers that need a closure, or train real-valued weights --------------------------------


class _ClosureToy(BinaryOptimizer):
    """Steps with a closure (two calls, like a two-sample estimator) on real-valued weights."""

    name = "toy-closure"
    rule_hparams = (benchbnn.HParam("rate", 0.1, low=0.0, high=1.0),)
    real_hparams = ()
    state_buffers = ("m",)
    forward = "identity"
    needs_closure = True
    calls = 0

    def run_closure(self, closure):
        first = closure()
        closure()
        type(self).calls += 2
        return first

    @contextlib.contextmanager
    def evaluation_weights(self):
        yield None

    @staticmethod
    def update(w, g, m, *, rate):
        ema_(m, g, rate)
        w.sub_(m)
        return None


def _closure_plugin():
    module = types.ModuleType("toy-closure-plugin")

    @benchbnn.hookimpl
    def benchbnn_optimizers():
        return [benchbnn.optimizer_spec(_ClosureToy)]

    module.benchbnn_optimizers = benchbnn_optimizers
    return module


@pytest.mark.usefixtures("clean_registry")
def test_an_optimizer_that_needs_a_closure_is_timed_with_one(tmp_path, capsys):
    benchbnn.register_plugin(_closure_plugin(), name="toy-closure-plugin")
    _ClosureToy.calls = 0
    code, out = _bench(
        tmp_path,
        capsys,
        "toy-closure",
        "--repeats",
        "3",
        "--warmup",
        "1",
        "--implementations",
        "reference,foreach",
    )
    assert code == 0, out.err
    # One warm-up step and three timed ones per implementation, two closure calls each.
    assert _ClosureToy.calls == 2 * (1 + 3) * 2
    data = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    (toy,) = data["optimizers"]
    assert toy["needs_closure"] is True and toy["forward"] == "identity"
    assert [c["median_ms"] > 0 for c in toy["implementations"]] == [True, True]
    assert toy["moved_bytes_per_weight"] == 20.0  # w, g and m: the closure adds no state
    markdown = (tmp_path / "bench.md").read_text(encoding="utf-8")
    rows = _table_rows(markdown, "toy-closure")
    assert len(rows) == 2
    assert all("step(closure) without forward/backward" in row[1] for row in rows)
    assert "forward and backward passes it runs in training" in markdown
    assert "trains real-valued weights (forward='identity')" in markdown


def test_sign_optimizers_are_not_marked_as_closure_or_real_valued(tmp_path, capsys):
    code, out = _bench(tmp_path, capsys, "bop", "--repeats", "1", "--implementations", "reference")
    assert code == 0, out.err
    data = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    (bop,) = data["optimizers"]
    assert bop["needs_closure"] is False and bop["forward"] == "sign"
    assert "closure" not in (tmp_path / "bench.md").read_text(encoding="utf-8")

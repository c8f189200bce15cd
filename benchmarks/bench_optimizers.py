"""How fast is one optimizer step over BinaryNet's 10,352,000 binary weights?

Times every implementation (reference, foreach, compiled) of the built-in optimizers and
compares each with a memory-bandwidth floor: the bytes a step must read and write (weights,
gradients, per-weight state) divided by the bandwidth of a large in-place ``a += b`` on the same
device, which has the same access pattern (read two arrays, write one back in place).

    python benchmarks/bench_optimizers.py                      # all optimizers, CPU
    python benchmarks/bench_optimizers.py --optimizers bop2ndorder --repeat 20 --device cuda

Timings on a shared machine are noisy: compare ratios measured in the same run.

The floor here is measured on arrays the size of the step's own (about 166 MB), which a large
last-level cache may hold, so it can be an in-cache floor. ``benchbnn bench`` measures the
floor on arrays several times the last-level cache, counts the bytes from each optimizer's
state after a step, interleaves floor and steps, and writes leaderboards/bench/.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

import benchbnn
from benchbnn.optim.timing import BINARYNET_SHAPES, BINARYNET_WEIGHTS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def inplace_bandwidth(device: torch.device, numel: int, repeat: int) -> float:
    """Bytes per second of ``a += b`` over ``numel`` float32 values (12 bytes per value)."""
    a = torch.zeros(numel, device=device)
    b = torch.ones(numel, device=device)
    a.add_(b)
    ms = min(_median_ms(lambda: a.add_(b), device, 3) for _ in range(max(repeat // 3, 2)))
    return 12 * numel / (ms / 1e3)


def bytes_per_step(num_weights: int, num_buffers: int) -> int:
    """Read weights, gradients and every buffer; write weights and every buffer back."""
    return 4 * num_weights * ((2 + num_buffers) + (1 + num_buffers))


def time_step(
    name: str, implementation: str, device: torch.device, repeat: int
) -> tuple[float, int]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, device=device)) for shape in BINARYNET_SHAPES]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = benchbnn.get_optimizer(name).build(params, [])
    optimizer.implementation = implementation
    used = optimizer.implementation
    for _ in range(2):  # warm up (compiles the compiled path)
        optimizer.step()
    ms = _median_ms(optimizer.step, device, repeat)
    buffers = len(optimizer.state_buffers)
    del optimizer, params
    gc.collect()
    return (ms if used == implementation else float("nan")), buffers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=["bop", "bop2ndorder", "pbop", "adam-latent", "cema", "sgdat"],
    )
    parser.add_argument(
        "--implementations", nargs="+", default=["reference", "foreach", "compiled"]
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--repeat", type=int, default=10, help="timed steps of the compiled path (median reported)"
    )
    parser.add_argument(
        "--repeat-slow", type=int, default=3, help="timed steps of the reference and foreach paths"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    assert sum(torch.Size(s).numel() for s in BINARYNET_SHAPES) == BINARYNET_WEIGHTS

    bandwidth = inplace_bandwidth(device, BINARYNET_WEIGHTS * 4, args.repeat)
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"in-place a += b bandwidth: {bandwidth / 1e9:.1f} GB/s "
        f"(over {BINARYNET_WEIGHTS * 4 * 4 / 1e6:.0f} MB arrays)"
    )
    print(
        f"{BINARYNET_WEIGHTS:,} binary weights; median of {args.repeat} steps "
        f"({args.repeat_slow} for reference and foreach)\n"
    )
    print(f"{'optimizer':<12} {'implementation':<15} {'ms/step':>9} {'floor ms':>9} {'x floor':>8}")
    for name in args.optimizers:
        for implementation in args.implementations:
            repeat = args.repeat if implementation == "compiled" else args.repeat_slow
            ms, buffers = time_step(name, implementation, device, repeat)
            floor = bytes_per_step(BINARYNET_WEIGHTS, buffers) / bandwidth * 1e3
            shown = "unavailable" if ms != ms else f"{ms:9.1f}"
            ratio = "" if ms != ms else f"{ms / floor:8.2f}"
            print(f"{name:<12} {implementation:<15} {shown:>9} {floor:9.1f} {ratio:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

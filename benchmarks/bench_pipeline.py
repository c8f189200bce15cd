"""Does feeding CIFAR-10 cost a small fraction of training? (target: under 2% of an epoch)

Measures, on the CIFAR-10 copy (the JPEG tarball in ../shared/datasets, extracted once into
``--extract-to``; or any copy given with ``--data-dir``):

1. the first (cold) load, which decodes every image into the uint8 cache, and a warm load;
2. the pipeline alone: images per second over full training epochs (shuffle, shard, gather,
   pad-4 crop + flip, normalize) at each ``--batch-sizes``, cache warm;
3. BinaryNet width 0.25 training throughput (forward, backward, a plain Adam step) over
   ``--model-images`` images of the same loader, timing the loader's share inside that loop too;

and reports ``pipeline time / model time`` for an epoch, both ways.

    python benchmarks/bench_pipeline.py --extract-to /tmp/cifar10-bench
    python benchmarks/bench_pipeline.py --data-dir ~/data --device cuda --model-images 20000

Timings on a shared machine are noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tarfile
import time
from pathlib import Path

import torch

import benchbnn
from benchbnn.data.pipeline import build_loaders

TARBALL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(args: argparse.Namespace) -> Path:
    """The data directory: ``--data-dir`` as given, or the tarball extracted once."""
    if args.data_dir:
        return Path(args.data_dir)
    target = Path(args.extract_to)
    if not (target / "cifar10-jpeg" / "train").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if shutil.which("tar"):
            subprocess.run(["tar", "xzf", str(args.tarball), "-C", str(target)], check=True)
        else:
            with tarfile.open(args.tarball) as archive:
                archive.extractall(target, filter="data")
        print(f"extracted {args.tarball} into {target} in {time.perf_counter() - start:.1f} s")
    return target


def time_loads(root: Path) -> dict[str, float]:
    benchbnn.get_dataset("cifar10")  # plugin discovery is not the pipeline's cost
    start = time.perf_counter()
    build_loaders("cifar10", data_dir=root, batch_size=50, seed=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    build_loaders("cifar10", data_dir=root, batch_size=50, seed=0)
    return {"first_load_s": first, "warm_load_s": time.perf_counter() - start}


def pipeline_throughput(
    root: Path, batch_size: int, epochs: int, device: torch.device
) -> dict[str, float]:
    """Images per second over whole training epochs (best and median over ``epochs``)."""
    bundle = build_loaders("cifar10", data_dir=root, batch_size=batch_size, seed=0, device=device)
    rates = []
    for epoch in range(epochs + 1):  # epoch 0 warms the page cache and the allocator
        bundle.train.set_epoch(epoch)
        _sync(device)
        start = time.perf_counter()
        images = 0
        for x, _ in bundle.train:
            images += len(x)
        _sync(device)
        if epoch:
            rates.append(images / (time.perf_counter() - start))
    return {
        "images_per_s_best": max(rates),
        "images_per_s_median": statistics.median(rates),
        "images_per_epoch": bundle.train.num_samples,
    }


def model_throughput(
    root: Path, batch_size: int, steps: int, device: torch.device
) -> dict[str, float]:
    """BinaryNet 0.25 + Adam images per second, and the loader's share of the same loop."""
    bundle = build_loaders("cifar10", data_dir=root, batch_size=batch_size, seed=0, device=device)
    model = benchbnn.get_architecture("binarynet").build(num_classes=10, width=0.25).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    load_time = model_time = 0.0
    images = done = 0
    warmup = 3
    while done < steps + warmup:
        bundle.train.set_epoch(done)
        batches = iter(bundle.train)
        while done < steps + warmup:
            _sync(device)
            t0 = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                break
            _sync(device)
            t1 = time.perf_counter()
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _sync(device)
            t2 = time.perf_counter()
            done += 1
            if done > warmup:
                load_time += t1 - t0
                model_time += t2 - t1
                images += len(y)
    return {
        "images_per_s": images / model_time,
        "loader_share_in_loop": load_time / (load_time + model_time),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--extract-to", help="directory to extract the CIFAR-10 JPEG tarball into (reused)"
    )
    where.add_argument("--data-dir", help="an existing CIFAR-10 copy (any layout cifar10 reads)")
    parser.add_argument("--tarball", type=Path, default=TARBALL)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[50, 256])
    parser.add_argument(
        "--epochs", type=int, default=3, help="timed pipeline epochs per batch size"
    )
    parser.add_argument(
        "--model-images",
        type=int,
        default=10_000,
        help="images trained on per batch size (10,000 = 200 steps at batch 50)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)

    root = prepare(args)
    results: dict = {"device": str(device), "threads": torch.get_num_threads(), **time_loads(root)}
    print(
        f"device {device}, {results['threads']} threads; "
        f"first load {results['first_load_s']:.2f} s, "
        f"warm load {results['warm_load_s']:.2f} s"
    )
    print(
        f"{'batch':>6} {'pipeline img/s':>15} {'model img/s':>12} {'epoch: pipeline/model':>22} "
        f"{'loader share in loop':>21}"
    )
    for batch_size in args.batch_sizes:
        pipe = pipeline_throughput(root, batch_size, args.epochs, device)
        model = model_throughput(root, batch_size, -(-args.model_images // batch_size), device)
        ratio = model["images_per_s"] / pipe["images_per_s_median"]
        results[f"batch_{batch_size}"] = {
            "pipeline": pipe,
            "model": model,
            "epoch_time_ratio": ratio,
        }
        print(
            f"{batch_size:>6} {pipe['images_per_s_median']:>15,.0f} "
            f"{model['images_per_s']:>12,.1f} "
            f"{ratio:>21.3%} {model['loader_share_in_loop']:>21.3%}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

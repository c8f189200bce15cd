"""``benchbnn describe ARCH``: an architecture's binary weights, real parameters and size.

The network is built on PyTorch's ``meta`` device, so describing XNOR-Net's 62 M parameters
allocates nothing and takes well under a second; a forward pass on meta tensors gives each
layer's output shape.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from benchbnn.cli.run import read_assignments
from benchbnn.core import limits
from benchbnn.core.errors import BenchbnnError

NAME = "describe"
HELP = "show an architecture's parameter breakdown: binary weights, real parameters, size in MB"
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", metavar="ARCH", help="architecture name (see 'benchbnn plugins')")
    parser.add_argument(
        "--image-size",
        type=limits.argument(limits.IMAGE_SIDE, "--image-size"),
        default=32,
        metavar="N",
        help="input height and width (default 32; 224 for ImageNet layouts)",
    )
    parser.add_argument(
        "--in-channels",
        type=limits.argument(limits.CHANNELS, "--in-channels"),
        default=3,
        metavar="C",
        help="input channels (default 3)",
    )
    parser.add_argument(
        "--num-classes",
        type=limits.argument(limits.CLASSES, "--num-classes"),
        default=10,
        metavar="K",
        help="number of classes (default 10)",
    )
    parser.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture option, e.g. width=0.5 (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the breakdown as JSON")


def parse_options(arch: str, assignments: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` texts as ``arch``'s options, each read by its declared type.

    Raises BenchbnnError for an unknown architecture, text without ``=``, an unknown option or
    a value that does not fit (naming the option and the accepted form).
    """
    from benchbnn.core.plugins import get_architecture

    return read_assignments(assignments, "--set", get_architecture(arch).coerce_options)


def _output_shapes(model: torch.nn.Module, input_size: tuple[int, ...]) -> dict[str, list[int]]:
    """Each module's output shape for one image, from a forward pass on meta tensors."""
    import torch  # here, so that `benchbnn describe --help` does not load torch

    shapes: dict[str, list[int]] = {}
    handles = []
    for name, module in model.named_modules():

        def record(_module: Any, _inputs: Any, output: Any, name: str = name) -> None:
            if isinstance(output, torch.Tensor):
                shapes[name or "(model)"] = list(output.shape[1:])

        handles.append(module.register_forward_hook(record))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device="meta"))
    except Exception:
        shapes.clear()
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def describe(
    arch: str,
    image_size: int = 32,
    in_channels: int = 3,
    num_classes: int = 10,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The breakdown ``benchbnn describe`` prints, as data."""
    import torch

    from benchbnn.core.binary import parameter_breakdown
    from benchbnn.core.plugins import get_architecture

    spec = get_architecture(arch)
    options = dict(options or {})
    build = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    try:
        with torch.device("meta"):
            model = spec.build(**build, **options)
    except BenchbnnError:
        raise
    except Exception:
        model = spec.build(**build, **options)
    breakdown = parameter_breakdown(model)
    shapes = _output_shapes(model, (in_channels, image_size, image_size))
    for row in breakdown["layers"]:
        row["output"] = shapes.get(row["name"])
    return {
        "arch": spec.name,
        "input": [in_channels, image_size, image_size],
        "num_classes": num_classes,
        "options": spec.resolve_options(options),
        **breakdown,
    }


def _format_options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "none"


def _print_table(data: dict[str, Any]) -> None:
    c, h, w = data["input"]
    print(
        f"{data['arch']}: {c}x{h}x{w} input, {data['num_classes']} classes, "
        f"options: {_format_options(data['options'])}"
    )
    print(f"  binary weights          {data['binary_weights']:>14,}  (1 bit each)")
    print(f"  real-valued parameters  {data['real_parameters']:>14,}  (trainable, 32 bits)")
    if data["frozen_parameters"]:
        print(f"  frozen parameters       {data['frozen_parameters']:>14,}  (32 bits)")
    print(f"  real-valued state       {data['state']:>14,}  (batch-norm statistics, 32 bits)")
    print(f"  trainable parameters    {data['trainable_parameters']:>14,}")
    print(
        f"  size                    {data['size_mb']:>14.2f}  MB (2^20 bytes; "
        f"{data['float32_size_mb']:.2f} MB in float32, {data['compression']:.1f}x smaller)"
    )
    print()
    rows = [("layer", "type", "output", "binary", "real")]
    for row in data["layers"]:
        output = "x".join(map(str, row["output"])) if row.get("output") else "-"
        rows.append(
            (
                row["name"],
                row["type"],
                output,
                f"{row['binary_weights']:,}",
                f"{row['real_parameters'] + row['frozen_parameters']:,}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print(
            "  "
            + "  ".join(
                cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i])
                for i, cell in enumerate(r)
            )
        )


def main(args: argparse.Namespace) -> int:
    options = parse_options(args.arch, args.options)
    data = describe(
        args.arch,
        image_size=args.image_size,
        in_channels=args.in_channels,
        num_classes=args.num_classes,
        options=options,
    )
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        _print_table(data)
    return 0

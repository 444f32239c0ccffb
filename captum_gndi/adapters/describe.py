"""``describe_layers``: a table of a model's intervention points and what intervening means."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..interventions import InterventionError, LayerCall, intervene, module_of
from .generic import Point, kind_argument
from .registry import find_points

__all__ = ["describe_layers"]


def _run(model: nn.Module, example_inputs: Any) -> None:
    if isinstance(example_inputs, Mapping):
        model(**example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        model(*example_inputs)
    else:
        model(example_inputs)


def _output_shapes(
    model: nn.Module, points: Sequence[Point], example_inputs: Any
) -> tuple[list[tuple[int, ...] | None], list[int]]:
    """Each point's output shape and how often it ran, from one forward pass without grad."""
    shapes: list[tuple[int, ...] | None] = [None] * len(points)
    calls = [0] * len(points)

    def record(position: int, h: Tensor) -> None:
        shapes[position] = tuple(h.shape)
        calls[position] += 1

    layers = [p.layer for p in points]
    modes = {module: module.training for module in model.modules()}
    model.eval()  # no BatchNorm statistics updates, no dropout
    try:
        with torch.no_grad(), intervene(layers, record, labels=[p.name for p in points]):
            _run(model, example_inputs)
    except InterventionError:
        pass  # reported per point in the table: "not called" or "runs N times"
    finally:
        for module, training in modes.items():
            module.training = training
    return shapes, calls


def _shape_text(row: dict[str, Any]) -> str:
    shape, calls = row["output_shape"], row["calls"]
    if calls == 0:
        return "not called"
    text = "(" + ", ".join(map(str, shape)) + ")"
    if calls > 1 and not isinstance(row["layer"], LayerCall):
        text += f" x{calls} calls: use LayerCall"
    return text


def describe_layers(
    model: nn.Module,
    kind: str = "auto",
    example_inputs: Any = None,
    print_table: bool = True,
    *,
    granularity: str | None = None,
) -> list[dict[str, Any]]:
    """List a model's intervention points with their type, output shape and meaning.

    Args:
        model: The model (see :func:`~captum_gndi.find_layers`).
        kind: Which points, as in :func:`~captum_gndi.find_layers`.
        example_inputs: Optional inputs for one forward pass (in eval mode, without gradients;
            the modules' modes are restored afterwards) that records each point's output
            shape: a tensor, a tuple/list of positional inputs, or a dict of keyword inputs
            (e.g. a Hugging Face tokenizer's output).
        print_table: Print an aligned table.
        granularity: Deprecated name of ``kind`` (kept for one release; warns).

    Returns:
        One dict per point, in forward order, with ``name``, ``type`` (the module class),
        ``output_shape`` (a tuple, or ``None`` without example inputs or for a point that did
        not run), ``calls`` (how often the module ran in the example forward pass, ``None``
        without example inputs), ``meaning`` (what zeroing the activation does) and ``layer``
        (the module or ``LayerCall``, ready for ``LayerGNDI``).

    Examples:
        >>> rows = describe_layers(resnet18, "branch", torch.randn(1, 3, 64, 64))
        name          type         output shape     meaning
        layer1.0.bn2  BatchNorm2d  (1, 64, 16, 16)  zeroing this skips block layer1.0 (...)
        ...
    """
    points = find_points(model, kind_argument(kind, granularity, "describe_layers"))
    shapes: list[tuple[int, ...] | None] = [None] * len(points)
    calls: list[int | None] = [None] * len(points)
    if example_inputs is not None:
        shapes, counts = _output_shapes(model, points, example_inputs)
        calls = list(counts)
    rows = [
        {
            "name": point.name,
            "type": type(module_of(point.layer)).__name__,
            "output_shape": shape,
            "calls": count,
            "meaning": point.meaning,
            "layer": point.layer,
        }
        for point, shape, count in zip(points, shapes, calls)
    ]
    if print_table:
        print(_table(rows, with_shapes=example_inputs is not None))
    return rows


def _table(rows: list[dict[str, Any]], with_shapes: bool) -> str:
    header = ["name", "type"] + (["output shape"] if with_shapes else []) + ["meaning"]
    lines = [header]
    for row in rows:
        shape = [_shape_text(row)] if with_shapes else []
        lines.append([row["name"], row["type"], *shape, row["meaning"]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
        for line in lines
    )

"""A TFLite graph as a PyTorch module: the network runs op by op in torch (NCHW inside).

:func:`compile_graph` turns a parsed :class:`~.tflite.Graph` into a *program* (a JSON-able
list of operations from a closed set, with their options) and its constants (float32
weights already in torch layout: convolutions ``[O,I,kH,kW]``, depthwise ``[C*M,1,kH,kW]``);
float16 weights are dequantised and sparse ones densified once, here. :class:`GraphModule`
runs a program: plain ``torch.nn.functional`` calls, so it batches, runs on CPU and CUDA and
adds no runtime. Nothing in a program is executed as code: unknown operations are refused.

Semantics follow TFLite's reference kernels: ``SAME`` padding puts the odd pixel after
(bottom/right), ``PAD`` pads with zeros, ``DEPTH_TO_SPACE`` reads depth as (row, column,
channel), ``RESIZE_BILINEAR`` without ``half_pixel_centers`` samples at ``dst * in/out``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .tflite import Graph, TFLiteError

# NHWC axis -> NCHW axis, for 4-D activations.
_AXIS_4D = {0: 0, 1: 2, 2: 3, 3: 1}
OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MUL", "SUB", "PAD", "PRELU", "RELU", "RELU6", "LOGISTIC",
       "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "CONCATENATION", "RESIZE_BILINEAR", "DEPTH_TO_SPACE")


def compile_graph(graph: Graph) -> tuple[dict, dict[str, np.ndarray]]:
    """(program, constants) for :class:`GraphModule`; raises TFLiteError for an unsupported op."""
    const: dict[int, np.ndarray] = {}
    for i, t in enumerate(graph.tensors):
        if t.data is not None:
            const[i] = _dequantised(t.data, t.scale, t.zero_point) if t.data.dtype != np.int32 else t.data
    rank = {i: len(t.shape) for i, t in enumerate(graph.tensors)}
    constants: dict[str, np.ndarray] = {}
    program = []

    def keep(index: int, array: np.ndarray) -> str:
        name = f"c{index}"
        constants[name] = np.ascontiguousarray(array, dtype=np.float32)
        return name

    for o in graph.operators:
        ins, out = o.inputs, o.outputs[0]
        if o.op in ("DEQUANTIZE", "DENSIFY") and ins[0] in const:
            const[out] = const[ins[0]]  # already dense and float32 (see above)
            continue
        if o.op not in OPS:
            raise TFLiteError(f"operator {o.op} is not supported by morph's TFLite port")
        step = {"op": o.op, "out": out, "act": o.options.get("activation")}
        if o.op == "CONV_2D":
            step["in"] = [ins[0], keep(ins[1], const[ins[1]].transpose(0, 3, 1, 2)),
                          keep(ins[2], const[ins[2]]) if len(ins) > 2 and ins[2] >= 0 else None]
            step.update(stride=o.options["stride"], dilation=o.options["dilation"], padding=o.options["padding"])
        elif o.op == "DEPTHWISE_CONV_2D":
            step["in"] = [ins[0], keep(ins[1], const[ins[1]].transpose(3, 0, 1, 2)),
                          keep(ins[2], const[ins[2]]) if len(ins) > 2 and ins[2] >= 0 else None]
            step.update(stride=o.options["stride"], dilation=o.options["dilation"], padding=o.options["padding"],
                        groups=graph.tensors[ins[0]].shape[3])
        elif o.op in ("ADD", "MUL", "SUB"):
            step["in"] = [keep(i, _broadcastable(const[i], rank[ins[1 - k]])) if i in const else i
                          for k, i in enumerate(ins)]
        elif o.op == "PRELU":
            alpha = const[ins[1]]
            step["in"] = [ins[0], keep(ins[1], _broadcastable(alpha, rank[ins[0]]))]
        elif o.op == "PAD":
            pairs = const[ins[1]].reshape(-1, 2).tolist()
            if rank[ins[0]] == 4:  # F.pad wants the last dimension first: W, H, C, N of an NCHW tensor
                pairs = [pairs[2], pairs[1], pairs[3], pairs[0]]
            else:
                pairs = pairs[::-1]
            step.update({"in": [ins[0]], "pad": [p for pair in pairs for p in pair]})
        elif o.op == "RESHAPE":
            shape = const[ins[1]].tolist() if len(ins) > 1 and ins[1] in const else o.options["new_shape"]
            step.update({"in": [ins[0]], "shape": [int(s) for s in shape], "rank_in": rank[ins[0]]})
        elif o.op == "CONCATENATION":
            axis = o.options["axis"] % rank[out]
            step.update({"in": list(ins), "axis": _AXIS_4D[axis] if rank[out] == 4 else axis})
        elif o.op in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            step.update({"in": [ins[0]], "filter": o.options["filter"], "stride": o.options["stride"],
                         "padding": o.options["padding"]})
        elif o.op == "RESIZE_BILINEAR":
            step.update({"in": [ins[0]], "size": const[ins[1]].tolist(), "align_corners": o.options["align_corners"],
                         "half_pixel_centers": o.options["half_pixel_centers"]})
        elif o.op == "DEPTH_TO_SPACE":
            step.update({"in": [ins[0]], "block": o.options["block_size"]})
        else:  # element-wise activations
            step["in"] = [ins[0]]
        program.append(step)
    outputs = [{"id": i, "rank": rank[i]} for i in graph.outputs]
    return {"ops": program, "inputs": graph.inputs, "outputs": outputs}, constants


def _dequantised(data: np.ndarray, scale, zero_point) -> np.ndarray:
    if data.dtype in (np.int8, np.uint8, np.int16) and scale is not None and scale.size:
        axis_shape = (-1,) + (1,) * (data.ndim - 1) if scale.size > 1 else ()
        return ((data.astype(np.float32) - zero_point.reshape(axis_shape)) * scale.reshape(axis_shape)).astype(np.float32)
    return data.astype(np.float32)


def _broadcastable(array: np.ndarray, other_rank: int) -> np.ndarray:
    """A constant operand in TFLite's NHWC broadcasting, laid out for an NCHW activation of ``other_rank``."""
    if other_rank != 4:
        return array
    array = array.reshape((1,) * (4 - array.ndim) + array.shape)
    return array.transpose(0, 3, 1, 2)


def _same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite SAME padding (before, after): the odd pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _activation(x: torch.Tensor, name: str | None) -> torch.Tensor:
    if name is None:
        return x
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return x.clamp(0, 6)
    if name == "relu_n1_to_1":
        return x.clamp(-1, 1)
    return torch.tanh(x)


def _conv(module, step, x, weight, bias):
    (sh, sw), (dh, dw) = step["stride"], step["dilation"]
    groups = step.get("groups", 1)
    padding = 0
    if step["padding"] == "same":
        kh, kw = weight.shape[2:]
        top, bottom = _same_padding(x.shape[2], kh, sh, dh)
        left, right = _same_padding(x.shape[3], kw, sw, dw)
        if top == bottom and left == right:
            padding = (top, left)
        else:
            x = F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, weight, bias, (sh, sw), padding, (dh, dw), groups)


def _pool(step, x):
    (fh, fw), (sh, sw) = step["filter"], step["stride"]
    if step["padding"] == "same":
        top, bottom = _same_padding(x.shape[2], fh, sh)
        left, right = _same_padding(x.shape[3], fw, sw)
        if top or bottom or left or right:
            # TFLite excludes padding from both max and average: -inf for max, a count mask for average.
            if step["op"] == "MAX_POOL_2D":
                x = F.pad(x, (left, right, top, bottom), value=-math.inf)
            else:
                ones = F.pad(torch.ones_like(x[:1, :1]), (left, right, top, bottom))
                x = F.pad(x, (left, right, top, bottom))
                return F.avg_pool2d(x, (fh, fw), (sh, sw)) / F.avg_pool2d(ones, (fh, fw), (sh, sw))
    if step["op"] == "MAX_POOL_2D":
        return F.max_pool2d(x, (fh, fw), (sh, sw))
    return F.avg_pool2d(x, (fh, fw), (sh, sw))


def _resize_bilinear(step, x):
    out_h, out_w = step["size"]
    if step["half_pixel_centers"] and not step["align_corners"]:
        return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    if step["align_corners"]:
        return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=True)
    # TFLite's legacy mapping: source = destination * in / out (no half-pixel shift), clamped.
    rows = _legacy_coords(x.shape[2], out_h, x.device)
    cols = _legacy_coords(x.shape[3], out_w, x.device)
    (r0, r1, fr), (c0, c1, fc) = rows, cols
    top = x[:, :, r0] * (1 - fr)[:, None] + x[:, :, r1] * fr[:, None]
    return top[..., c0] * (1 - fc) + top[..., c1] * fc


def _legacy_coords(size_in: int, size_out: int, device):
    src = torch.arange(size_out, device=device, dtype=torch.float32) * (size_in / size_out)
    lo = src.floor().long().clamp(max=size_in - 1)
    return lo, (lo + 1).clamp(max=size_in - 1), src - lo


def _depth_to_space(step, x):
    b, c, h, w = x.shape
    k = step["block"]
    # TFLite (NHWC) reads depth as (row offset, column offset, channel).
    x = x.view(b, k, k, c // (k * k), h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c // (k * k), h * k, w * k)


def _reshape(step, x):
    if step["rank_in"] == 4:
        x = x.permute(0, 2, 3, 1)  # back to TFLite's NHWC element order
    shape = [x.shape[0]] + list(step["shape"][1:])
    y = x.reshape(shape)
    return y.permute(0, 3, 1, 2) if len(shape) == 4 else y


class GraphModule(torch.nn.Module):
    """Runs a compiled TFLite program. ``forward(x [B,C,H,W]) -> list of outputs`` in TFLite's layout
    (4-D outputs as ``[B,H,W,C]``), batch first; constants are buffers (``.to(device)`` moves them)."""

    def __init__(self, program: dict, constants: dict[str, torch.Tensor]):
        super().__init__()
        for step in program["ops"]:
            if step["op"] not in OPS:
                raise TFLiteError(f"operator {step['op']} is not supported by morph's TFLite port")
        for name, value in constants.items():
            self.register_buffer(name, value.float(), persistent=True)
        self.program = program

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        values: dict[int, torch.Tensor] = {self.program["inputs"][0]: x}

        def arg(ref):
            if ref is None:
                return None
            return getattr(self, ref) if isinstance(ref, str) else values[ref]

        for step in self.program["ops"]:
            op, ins = step["op"], [arg(r) for r in step["in"]]
            if op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                y = _conv(self, step, *ins)
            elif op == "ADD":
                y = ins[0] + ins[1]
            elif op == "MUL":
                y = ins[0] * ins[1]
            elif op == "SUB":
                y = ins[0] - ins[1]
            elif op == "PAD":
                y = F.pad(ins[0], step["pad"])
            elif op == "PRELU":
                x, alpha = ins
                y = F.prelu(x, alpha.reshape(-1)) if alpha.numel() == x.shape[1] else torch.where(x >= 0, x, x * alpha)
            elif op == "RELU":
                y = F.relu(ins[0])
            elif op == "RELU6":
                y = ins[0].clamp(0, 6)
            elif op == "LOGISTIC":
                y = torch.sigmoid(ins[0])
            elif op in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                y = _pool(step, ins[0])
            elif op == "RESHAPE":
                y = _reshape(step, ins[0])
            elif op == "CONCATENATION":
                y = torch.cat(ins, dim=step["axis"])
            elif op == "RESIZE_BILINEAR":
                y = _resize_bilinear(step, ins[0])
            else:  # DEPTH_TO_SPACE
                y = _depth_to_space(step, ins[0])
            values[step["out"]] = _activation(y, step.get("act"))
        outputs = []
        for out in self.program["outputs"]:
            y = values[out["id"]]
            outputs.append(y.permute(0, 2, 3, 1) if out["rank"] == 4 else y)
        return outputs

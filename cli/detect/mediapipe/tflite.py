"""A small reader for the subset of the TFLite flatbuffer schema that MediaPipe's face models use.

No ``flatbuffers``/``tflite``/``tensorflow`` package: a ``.tflite`` file is a flatbuffer
(root table ``Model``, file identifier ``TFL3``) and we follow its offsets by hand. Field
ids are those of TensorFlow's ``tensorflow/lite/schema/schema.fbs``:

- Model: version 0, operator_codes 1, subgraphs 2, description 3, buffers 4
- SubGraph: tensors 0, inputs 1, outputs 2, operators 3, name 4
- Tensor: shape 0, type 1, buffer 2, name 3, quantization 4, is_variable 5, sparsity 6
- Buffer: data 0
- OperatorCode: deprecated_builtin_code 0 (int8), custom_code 1, version 2, builtin_code 3 (int32)
- Operator: opcode_index 0, inputs 1, outputs 2, builtin_options_type 3, builtin_options 4,
  custom_options 5
- QuantizationParameters: min 0, max 1, scale 2, zero_point 3, details 4, quantized_dimension 6
- SparsityParameters: traversal_order 0, block_map 1, dim_metadata 2; DimensionMetadata: format 0
  (DENSE 0, SPARSE_CSR 1), dense_size 1, array_segments_type 2, array_segments 3,
  array_indices_type 4, array_indices 5; the index vectors are the union SparseIndexVector
  (Int32Vector 1, Uint16Vector 2, Uint8Vector 3), each a table whose field 0 is ``values``.

Flatbuffer layout: a table starts with an int32 offset back to its vtable; the vtable holds
uint16 (vtable size, table size, field offsets...); a field absent from the vtable (or with
offset 0) takes its default. References (tables, vectors, strings) are uint32 offsets
relative to where they are stored; a vector is a uint32 length followed by its elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

# TensorType enum -> numpy dtype (schema.fbs).
TENSOR_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
                7: np.int16, 9: np.int8}

# BuiltinOperator enum (schema.fbs), the operators these models use.
BUILTIN_OPS = {0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
               5: "DEPTH_TO_SPACE", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL",
               19: "RELU", 21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 28: "TANH",
               34: "PAD", 39: "TRANSPOSE", 40: "MEAN", 41: "SUB", 45: "STRIDED_SLICE",
               54: "PRELU", 124: "DENSIFY"}
CUSTOM = 32  # BuiltinOperator.CUSTOM: the name is in OperatorCode.custom_code

# ActivationFunctionType enum.
ACTIVATIONS = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh"}
# Padding enum.
PADDINGS = {0: "same", 1: "valid"}


class TFLiteError(ValueError):
    """The bytes are not a TFLite model this reader understands."""


class _Table:
    """A flatbuffer table at ``pos`` in ``buf``."""

    def __init__(self, buf: memoryview, pos: int):
        self.buf, self.pos = buf, pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        vsize = struct.unpack_from("<H", buf, vtable)[0]
        count = (vsize - 4) // 2
        self.offsets = struct.unpack_from(f"<{count}H", buf, vtable + 4) if count > 0 else ()

    def _field(self, index: int) -> int:
        """Absolute position of field ``index``, or 0 if absent."""
        if index < len(self.offsets) and self.offsets[index]:
            return self.pos + self.offsets[index]
        return 0

    def has(self, index: int) -> bool:
        return self._field(index) != 0

    def scalar(self, index: int, fmt: str, default=0):
        at = self._field(index)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def _deref(self, index: int) -> int:
        at = self._field(index)
        return at + struct.unpack_from("<I", self.buf, at)[0] if at else 0

    def table(self, index: int) -> _Table | None:
        at = self._deref(index)
        return _Table(self.buf, at) if at else None

    def tables(self, index: int) -> list[_Table]:
        at = self._deref(index)
        if not at:
            return []
        n = struct.unpack_from("<I", self.buf, at)[0]
        out = []
        for i in range(n):
            slot = at + 4 + 4 * i
            out.append(_Table(self.buf, slot + struct.unpack_from("<I", self.buf, slot)[0]))
        return out

    def array(self, index: int, dtype) -> np.ndarray:
        """A vector of scalars as a numpy array (a copy; empty if absent)."""
        at = self._deref(index)
        if not at:
            return np.zeros(0, dtype)
        n = struct.unpack_from("<I", self.buf, at)[0]
        return np.frombuffer(self.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=n, offset=at + 4).copy()

    def string(self, index: int) -> str | None:
        data = self.array(index, np.uint8)
        return bytes(data).decode("utf-8", "replace") if self.has(index) else None


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: type
    data: np.ndarray | None  # constant tensors (weights), reshaped; None for activations
    scale: np.ndarray | None = None  # quantisation, if any
    zero_point: np.ndarray | None = None
    sparse: bool = False


@dataclass
class Operator:
    op: str  # builtin name, or the custom op's name
    inputs: list[int]
    outputs: list[int]
    options: dict = field(default_factory=dict)
    custom_options: bytes | None = None


@dataclass
class Graph:
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]

    def constant(self, index: int) -> np.ndarray:
        """The data of constant tensor ``index`` (float16 widened to float32)."""
        tensor = self.tensors[index]
        if tensor.data is None:
            raise TFLiteError(f"tensor {index} ({tensor.name}) is not a constant")
        return tensor.data.astype(np.float32) if tensor.data.dtype == np.float16 else tensor.data


def _options(op: str, table: _Table | None) -> dict:
    """Builtin options for the operators the face models use (field ids from schema.fbs)."""
    if table is None:
        return {}
    if op == "CONV_2D":  # Conv2DOptions: padding, stride_w, stride_h, fused_activation, dilation_w, dilation_h
        return {"padding": PADDINGS[table.scalar(0, "b")], "stride": (table.scalar(2, "i"), table.scalar(1, "i")),
                "activation": ACTIVATIONS[table.scalar(3, "b")],
                "dilation": (table.scalar(5, "i", 1), table.scalar(4, "i", 1))}
    if op == "DEPTHWISE_CONV_2D":  # padding, stride_w, stride_h, depth_multiplier, fused_activation, dil_w, dil_h
        return {"padding": PADDINGS[table.scalar(0, "b")], "stride": (table.scalar(2, "i"), table.scalar(1, "i")),
                "depth_multiplier": table.scalar(3, "i"), "activation": ACTIVATIONS[table.scalar(4, "b")],
                "dilation": (table.scalar(6, "i", 1), table.scalar(5, "i", 1))}
    if op in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):  # Pool2DOptions: padding, stride_w, stride_h, fw, fh, act
        return {"padding": PADDINGS[table.scalar(0, "b")], "stride": (table.scalar(2, "i"), table.scalar(1, "i")),
                "filter": (table.scalar(4, "i"), table.scalar(3, "i")), "activation": ACTIVATIONS[table.scalar(5, "b")]}
    if op in ("ADD", "MUL", "SUB"):  # AddOptions/MulOptions/SubOptions: fused_activation_function
        return {"activation": ACTIVATIONS[table.scalar(0, "b")]}
    if op == "CONCATENATION":  # axis, fused_activation_function
        return {"axis": table.scalar(0, "i"), "activation": ACTIVATIONS[table.scalar(1, "b")]}
    if op == "RESHAPE":  # new_shape
        return {"new_shape": table.array(0, np.int32).tolist()}
    if op == "FULLY_CONNECTED":  # fused_activation_function, weights_format, keep_num_dims
        return {"activation": ACTIVATIONS[table.scalar(0, "b")], "keep_num_dims": bool(table.scalar(2, "B"))}
    if op == "DEPTH_TO_SPACE":  # block_size
        return {"block_size": table.scalar(0, "i")}
    if op == "RESIZE_BILINEAR":  # new_height 0, new_width 1 (both deprecated), align_corners 2, half_pixel_centers 3
        return {"align_corners": bool(table.scalar(2, "B")), "half_pixel_centers": bool(table.scalar(3, "B"))}
    return {}


_INDEX_VECTORS = {1: np.int32, 2: np.uint16, 3: np.uint8}


def _densify(values: np.ndarray, shape: tuple[int, ...], sparsity: _Table) -> np.ndarray:
    """A sparse constant as a dense array: the layout MediaPipe's sparse models use.

    Supported: traversal order = the tensor's own dimension order, no block map, leading
    dimensions DENSE and the last one SPARSE_CSR (row ``r`` of the flattened leading
    dimensions holds ``values[segments[r]:segments[r+1]]`` at columns ``indices[...]``).
    """
    order = sparsity.array(0, np.int32)
    dims = sparsity.tables(2)
    if sparsity.array(1, np.int32).size or order.tolist() != list(range(len(shape))) or len(dims) != len(shape):
        raise TFLiteError("sparse tensor layout not supported (block map or reordered traversal)")
    formats = [d.scalar(0, "b") for d in dims]
    if any(formats[:-1]) or formats[-1] != 1:
        raise TFLiteError("sparse tensor layout not supported (only a CSR last dimension)")
    last = dims[-1]
    segments = last.table(3).array(0, _INDEX_VECTORS[last.scalar(2, "B")]).astype(np.int64)
    indices = last.table(5).array(0, _INDEX_VECTORS[last.scalar(4, "B")]).astype(np.int64)
    rows = int(np.prod(shape[:-1]))
    if segments.size != rows + 1 or indices.size != values.size or segments[-1] != values.size:
        raise TFLiteError("sparse tensor: segments, indices and values disagree")
    dense = np.zeros((rows, shape[-1]), values.dtype)
    row_of = np.repeat(np.arange(rows), np.diff(segments))
    dense[row_of, indices] = values
    return dense.reshape(shape)


def read_model(data: bytes, subgraph: int = 0) -> Graph:
    """Parse a ``.tflite`` model's subgraph: tensors (constants with their data), operators, inputs, outputs."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteError("not a TFLite model (no 'TFL3' identifier)")
    buf = memoryview(data)
    try:
        model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
        codes = []
        for code in model.tables(1):
            builtin = max(code.scalar(0, "b"), code.scalar(3, "i"))  # deprecated int8 code caps at 127
            codes.append(code.string(1) if builtin == CUSTOM else BUILTIN_OPS.get(builtin, f"BUILTIN_{builtin}"))
        buffers = [b.array(0, np.uint8) for b in model.tables(4)]
        graph = model.tables(2)[subgraph]
        tensors = []
        for t in graph.tables(0):
            shape = tuple(int(s) for s in t.array(0, np.int32))
            type_id = t.scalar(1, "b")
            if type_id not in TENSOR_TYPES:
                raise TFLiteError(f"tensor type {type_id} is not supported")
            dtype = TENSOR_TYPES[type_id]
            raw = buffers[t.scalar(2, "I")] if t.scalar(2, "I") < len(buffers) else np.zeros(0, np.uint8)
            sparse = t.has(6)
            array = None
            if raw.size:
                array = raw.view(np.dtype(dtype).newbyteorder("<")).astype(dtype)
                array = _densify(array, shape, t.table(6)) if sparse else array.reshape(shape)
            quant = t.table(4)
            scale = zero = None
            if quant is not None and quant.has(2):
                scale, zero = quant.array(2, np.float32), quant.array(3, np.int64)
            tensors.append(Tensor(t.string(3) or "", shape, dtype, array, scale, zero, sparse))
        operators = []
        for o in graph.tables(3):
            name = codes[o.scalar(0, "I")]
            options = _options(name, o.table(4)) if o.has(4) else {}
            custom = bytes(o.array(5, np.uint8)) if o.has(5) else None
            operators.append(Operator(name, o.array(1, np.int32).tolist(), o.array(2, np.int32).tolist(),
                                      options, custom))
        return Graph(tensors, operators, graph.array(1, np.int32).tolist(), graph.array(2, np.int32).tolist())
    except (struct.error, IndexError, KeyError, ValueError) as exc:
        if isinstance(exc, TFLiteError):
            raise
        raise TFLiteError(f"malformed TFLite model ({type(exc).__name__}: {exc})") from None

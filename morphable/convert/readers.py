"""Readers for the container formats the sources use, none of which executes code from a file.

- :func:`load_pickle`: a restricted unpickler that builds numpy arrays and inert stand-ins for
  the few classes FLAME's pickles name (``chumpy.ch.Ch``, ``scipy.sparse`` matrices); any other
  global (``os.system``, ``builtins.eval``, ...) stops the load before anything runs.
- :func:`load_npy`: ``.npy`` files; object arrays (pickled dicts) go through :func:`load_pickle`.
- :class:`CerealReader`: cereal's BinaryArchive as eos writes it (little-endian; container sizes
  uint64; Eigen matrices as int32 rows, int32 cols, then column-major data).
- :func:`read_landmark_mapping`: 68-point mappings (eos TOML or its older format, JSON, text, npy).
- :func:`read_obj`: OBJ vertices, texture coordinates and faces (polygons fanned into triangles).
"""

from __future__ import annotations

import copyreg
import io
import json
import pickle
import re
import struct
import tomllib
from pathlib import Path

import numpy as np

from ..schema import NUM_LANDMARKS
from .common import ConvertError

_MULTIARRAY = getattr(np, "_core", None) or np.core  # numpy >= 2 moved it; pickles name both


class Stub:
    """An inert stand-in for a pickled class morph does not import: keeps the pickled state."""

    pickled_class = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def array(self) -> np.ndarray:
        """The array a chumpy ``Ch`` wraps (its ``x``)."""
        if isinstance(self.state, dict) and isinstance(self.state.get("x"), np.ndarray):
            return self.state["x"]
        raise ValueError(f"a pickled {self.pickled_class} without array data")


def _stub(qualname: str) -> type:
    return type("Stub", (Stub,), {"pickled_class": qualname})


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _MULTIARRAY.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _MULTIARRAY.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _MULTIARRAY.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _MULTIARRAY.multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("__builtin__", "object"): object, ("builtins", "object"): object,
    ("__builtin__", "set"): set, ("builtins", "set"): set,
    ("__builtin__", "bytes"): bytes, ("builtins", "bytes"): bytes,  # empty bytes in Python 3's protocol 2
    ("chumpy.ch", "Ch"): _stub("chumpy.ch.Ch"),
}
for _module in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr"):
    _name = _module.rsplit(".", 1)[1].strip("_") + "_matrix"
    _ALLOWED[(_module, _name)] = _stub(f"scipy.sparse.{_name}")


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes into protocol-2 pickles; only Latin-1 and UTF-8."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode(encoding)


_ALLOWED[("_codecs", "encode")] = _encode


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load '{module}.{name}' (only numpy arrays, chumpy and "
                                         "scipy.sparse containers are allowed; nothing was executed)") from None


def load_pickle(path, data: bytes | None = None):
    """Unpickle ``path`` (or ``data``) allowing only numpy arrays and inert stand-ins; Python 2 pickles too."""
    try:
        stream = io.BytesIO(data) if data is not None else open(path, "rb")
    except OSError as exc:
        raise ConvertError(path, f"cannot open ({exc.strerror})") from None
    with stream:
        try:
            return _RestrictedUnpickler(stream, encoding="latin1").load()
        except pickle.UnpicklingError as exc:
            raise ConvertError(path, f"not a readable model pickle: {exc}") from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, struct.error,
                MemoryError, OverflowError, RecursionError) as exc:
            raise ConvertError(path, f"not a readable pickle (corrupt or truncated: {type(exc).__name__})") from None


def as_array(value, path, key: str, dtype=None) -> np.ndarray:
    """A pickled value (array, chumpy stand-in, list) as an ndarray, or a one-line error naming the key."""
    try:
        if isinstance(value, Stub):
            value = value.array()
        out = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise ConvertError(path, f"'{key}' is not an array ({exc})") from None
    if out.dtype == object:
        raise ConvertError(path, f"'{key}' is not a numeric array")
    return out


def load_npy(path):
    """A ``.npy`` file: numeric arrays directly, object arrays (pickled dicts) via :func:`load_pickle`."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"npy format version {version} is not supported")
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                value = load_pickle(path, f.read())
                return value.item() if isinstance(value, np.ndarray) and value.shape == () else value
        return np.load(path, allow_pickle=False)
    except OSError as exc:
        raise ConvertError(path, f"cannot open ({exc.strerror})") from None
    except (ValueError, EOFError) as exc:
        raise ConvertError(path, f"not a readable .npy file ({str(exc).splitlines()[0]})") from None


class CerealReader:
    """Sequential reads from a cereal BinaryArchive; every read is bounds-checked."""

    def __init__(self, data: bytes, path):
        self.data, self.pos, self.path = memoryview(data), 0, path

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ConvertError(self.path, f"truncated or corrupt: needs {n} bytes at offset {self.pos}, "
                                          f"the file has {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str):
        return struct.unpack("<" + fmt, self._take(struct.calcsize(fmt)))[0]

    def size(self, item_bytes: int = 1) -> int:
        """A container size (uint64), checked against the bytes left."""
        n = self.scalar("Q")
        if n * item_bytes > len(self.data) - self.pos:
            raise ConvertError(self.path, f"corrupt: a container of {n} items at offset {self.pos - 8} "
                                          "is larger than the file")
        return n

    def string(self) -> str:
        return bytes(self._take(self.size())).decode("utf-8", errors="replace")

    def array(self, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype).newbyteorder("<")
        return np.frombuffer(self._take(count * dtype.itemsize), dtype=dtype).copy()

    def eigen(self) -> np.ndarray:
        """An Eigen float matrix: int32 rows, int32 cols, column-major float32 -> ``[rows, cols]``."""
        rows, cols = self.scalar("i"), self.scalar("i")
        if rows < 0 or cols < 0:
            raise ConvertError(self.path, f"corrupt: a matrix of {rows} x {cols} at offset {self.pos - 8}")
        return self.array(np.float32, rows * cols).reshape(cols, rows).T

    def int_triples(self) -> np.ndarray:
        n = self.size(12)
        return self.array(np.int32, 3 * n).reshape(n, 3).astype(np.int64)

    def double_pairs(self) -> np.ndarray:
        n = self.size(16)
        return self.array(np.float64, 2 * n).reshape(n, 2)

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def read_landmark_mapping(path, n_vertices: int) -> np.ndarray:
    """68 vertex indices (-1 where a file has none) from a mapping file.

    Formats: eos's TOML (``[landmark_mappings]``, ``ibug = vertex``, iBUG numbers 1-based,
    vertices 0-based) or its older ``landmarkMappings { ibug vertex }`` form; JSON (a list of
    68 indices or nulls, or an object with ``landmarks`` or ICT's ``idx_to_landmark_verts``);
    ``.npy`` or whitespace-separated text of 68 integers (0-based, -1 for none).
    """
    path = Path(path)
    out = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    try:
        if path.suffix == ".npy":
            values = np.asarray(load_npy(path)).reshape(-1)
            pairs = list(enumerate(values.tolist()))
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
            pairs = _parse_mapping_text(text, path)
    except OSError as exc:
        raise ConvertError(path, f"cannot read ({exc.strerror})") from None
    for ibug, vertex in pairs:
        if vertex is None or vertex == -1:
            continue
        if not 0 <= ibug < NUM_LANDMARKS or int(vertex) != vertex or not 0 <= vertex < n_vertices:
            raise ConvertError(path, f"landmark {ibug} -> vertex {vertex}: outside 68 points / [0, {n_vertices})")
        out[ibug] = int(vertex)
    return out


def _parse_mapping_text(text: str, path) -> list[tuple[int, object]]:
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")) and not stripped.startswith("[landmark_mappings]"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConvertError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict):
            data = data.get("landmarks", data.get("idx_to_landmark_verts"))
        if not isinstance(data, list) or len(data) != NUM_LANDMARKS:
            raise ConvertError(path, "expected a JSON list of 68 vertex indices")
        return list(enumerate(data))
    if "[landmark_mappings]" in text:
        try:
            table = tomllib.loads(text)["landmark_mappings"]
        except (tomllib.TOMLDecodeError, KeyError) as exc:
            raise ConvertError(path, f"not a readable eos mapping file ({exc})") from None
        return [(int(k) - 1, v) for k, v in table.items() if k.isdigit() and isinstance(v, int)]
    block = re.search(r"landmarkMappings[^{]*\{(.*?)\}", text, re.S)
    if block:  # eos's older boost property-tree format: "ibug vertex ; comment"
        pairs = []
        for line in block.group(1).splitlines():
            fields = line.split(";")[0].split()
            if len(fields) == 2 and all(f.isdigit() for f in fields):
                pairs.append((int(fields[0]) - 1, int(fields[1])))
        return pairs
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        raise ConvertError(path, "not a landmark mapping (eos TOML, JSON or 68 integers)") from None
    if len(values) != NUM_LANDMARKS:
        raise ConvertError(path, f"{len(values)} integers, expected 68")
    return list(enumerate(values))


def read_obj_vertices(path) -> np.ndarray:
    """Only the ``v`` lines of an OBJ file: ``[N,3]`` float64 (fast path for morph targets)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConvertError(path, f"cannot read ({exc.strerror})") from None
    lines = re.findall(rb"^v[ \t]+([^\r\n]*)", data, re.M)
    try:
        values = np.array(b" ".join(lines).split(), dtype=np.float64)
    except ValueError:
        raise ConvertError(path, "an unreadable vertex line") from None
    if values.size % 3 and len(lines) and values.size % len(lines) == 0:  # "v x y z r g b"
        values = values.reshape(len(lines), -1)[:, :3].reshape(-1)
    if values.size != 3 * len(lines) or not len(lines):
        raise ConvertError(path, "no vertices, or vertex lines without three coordinates")
    return values.reshape(-1, 3)


def read_obj(path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """``(vertices [N,3], uv [U,2] or None, triangles [F,3], uv_triangles [F,3] or None)``; 0-based."""
    vertices = read_obj_vertices(path)
    data = Path(path).read_bytes()
    vt_lines = re.findall(rb"^vt[ \t]+([^\r\n]*)", data, re.M)
    uv = None
    if vt_lines:
        try:
            uv = np.array([line.split()[:2] for line in vt_lines], dtype=np.float64)
        except ValueError:
            raise ConvertError(path, "an unreadable vt line") from None
    tris, uv_tris = [], []
    for line in re.findall(rb"^f[ \t]+([^\r\n]*)", data, re.M):
        corners = [c.split(b"/") for c in line.split()]
        try:
            v = [int(c[0]) for c in corners]
            t = [int(c[1]) if len(c) > 1 and c[1] else 0 for c in corners]
        except ValueError:
            raise ConvertError(path, "an unreadable face line") from None
        for k in range(1, len(v) - 1):  # fan: polygons are convex in these meshes
            tris.append((v[0], v[k], v[k + 1]))
            uv_tris.append((t[0], t[k], t[k + 1]))
    if not tris:
        raise ConvertError(path, "no faces")
    triangles = np.array(tris, dtype=np.int64)
    triangles = np.where(triangles < 0, triangles + len(vertices), triangles - 1)  # OBJ: 1-based or negative
    uv_triangles = None
    if uv is not None:
        uvt = np.array(uv_tris, dtype=np.int64)
        if (uvt != 0).all():
            uv_triangles = np.where(uvt < 0, uvt + len(uv), uvt - 1)
    if triangles.min() < 0 or triangles.max() >= len(vertices):
        raise ConvertError(path, "a face refers to a vertex that does not exist")
    if uv_triangles is not None and (uv_triangles.min() < 0 or uv_triangles.max() >= len(uv)):
        raise ConvertError(path, "a face refers to a texture coordinate that does not exist")
    return vertices, uv, triangles, uv_triangles

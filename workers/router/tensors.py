"""One check for every KServe v2 JSON tensor the router touches: a client's inputs and a model's outputs.

The router cuts requests into row subsets and stitches models' answers back together row by row, so a
tensor that does not hold what it claims -- ``data`` that does not fill ``shape``, ragged nesting,
strings in an ``FP32`` tensor, a model answering fewer rows than it was sent -- would either crash the
router (a 500) or, worse, be stitched into a well-formed but wrong 200. :func:`check_tensor` is the one
definition of a well-formed tensor; :mod:`.protocol` turns its complaint into a 400 when the tensor came
from the client and a 502 ``upstream_error`` when it came from a model.

``data`` may be flat (row-major) or nested along the leading dimensions as KServe v2 allows; nesting
must follow ``shape`` exactly. Values must match the datatype: booleans for ``BOOL``, integers for the
integer types, numbers for the floating-point types, strings for ``BYTES``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

MAX_DIMS = 32
MAX_NAME = 256
_INTEGER = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_FLOAT = ("FP16", "BF16", "FP32", "FP64")
_BOOL, _INT, _NUMBER, _STR = frozenset({bool}), frozenset({int}), frozenset({int, float}), frozenset({str})
VALUE_TYPES: Mapping[str, frozenset[type]] = {
    "BOOL": _BOOL,
    **{name: _INT for name in _INTEGER},
    **{name: _NUMBER for name in _FLOAT},
    "BYTES": _STR,
}
"""The Python types (exact, so ``True`` is no integer) a JSON value of each datatype may have."""
NUMERIC = frozenset((*_INTEGER, *_FLOAT))
_WORDS = {_BOOL: "true or false", _INT: "an integer", _NUMBER: "a number", _STR: "a string"}


class TensorError(ValueError):
    """What is wrong with a tensor: ``field`` (``""``, ``shape``, ``data``...) and ``problem``.

    It does not say where the tensor came from: the caller knows (``inputs[0]``, a model's output).
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem

    def at(self, where: str) -> str:
        """The complaint located at ``where`` (``inputs[0].data: ...``)."""
        return f"{where}.{self.field}: {self.problem}" if self.field else f"{where}: {self.problem}"


class Tensor(NamedTuple):
    """A checked tensor: ``data`` is flat and holds exactly ``prod(shape)`` values of ``datatype``."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        """Values per row."""
        return math.prod(self.shape[1:])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape, "data": self.data}


class _Ragged(Exception):
    pass


def _flatten(data: list[Any], shape: list[int]) -> list[Any]:
    """``data`` flat: unchanged when flat already, else its nesting checked against ``shape``."""
    if not data or type(data[0]) is not list:
        return data
    flat: list[Any] = []

    def walk(node: list[Any], depth: int) -> None:
        if node and type(node[0]) is list:
            if depth >= len(shape) or len(node) != shape[depth]:
                raise _Ragged
            for child in node:
                if type(child) is not list:
                    raise _Ragged
                walk(child, depth + 1)
        elif depth >= len(shape) or len(node) != math.prod(shape[depth:]):
            raise _Ragged
        else:
            flat.extend(node)

    try:
        walk(data, 0)
    except (_Ragged, RecursionError):
        raise TensorError("data", f"nesting does not follow shape {shape}") from None
    return flat


def check_tensor(raw: object, *, rows: int | None = None) -> Tensor:
    """``raw`` as a :class:`Tensor`, or :class:`TensorError`; ``rows``: the batch dimension it must have."""
    if type(raw) is not dict:
        raise TensorError("", "must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise TensorError("name", f"must be a string of 1 to {MAX_NAME} characters")
    datatype = raw.get("datatype")
    allowed = VALUE_TYPES.get(datatype) if isinstance(datatype, str) else None
    if allowed is None or not isinstance(datatype, str):
        raise TensorError("datatype", f"must be one of {', '.join(VALUE_TYPES)}, got {str(datatype)[:40]!r}")
    shape = raw.get("shape")
    if (type(shape) is not list or not shape or len(shape) > MAX_DIMS
            or not set(map(type, shape)) <= _INT or min(shape) < 0):
        raise TensorError("shape", f"must be a list of 1 to {MAX_DIMS} non-negative integers, got {str(shape)[:80]}")
    if rows is not None and shape[0] != rows:
        raise TensorError("shape", f"{shape[0]} rows where {rows} were sent")
    data = raw.get("data")
    if type(data) is not list:
        raise TensorError("data", "must be a list (binary tensor data only via /v2/models/.../infer)")
    flat = _flatten(data, shape)
    expected = math.prod(shape)
    if len(flat) != expected:
        raise TensorError("data", f"{len(flat)} values do not fill shape {shape}")
    if not set(map(type, flat)) <= allowed:  # C speed: the hot path checks every input value
        raise TensorError("data", f"every value of a {datatype} tensor must be {_WORDS[allowed]}")
    return Tensor(name, datatype, shape, flat)

"""A KServe v2 body as clients send it: binary tensor data and compressed bodies, in and out.

The router's pipeline works on JSON tensors (:mod:`.protocol`), but the clients users already have do not
always send JSON: `tritonclient` sends inputs as binary tensor data by default (the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors, each input naming its
``binary_data_size``) and asks for binary outputs (``binary_data_output`` or an output's ``binary_data``),
and may compress a request (``Content-Encoding: gzip``/``deflate``) or accept a compressed answer
(``Accept-Encoding``). This module turns such a body into the JSON request the pipeline runs, and the
pipeline's JSON answer into what the client asked for, so every client gets the same routing.

The client's wish for binary outputs is taken off the request before the pipeline forwards it: a model
server asked for binary outputs would answer a body the router cannot stitch. Decompression is bounded
by the same body limit as an uncompressed request (a small gzip bomb is a 413, not memory).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from paretoserve.workers.router.errors import BadRequest, PayloadTooLarge
from paretoserve.workers.router.protocol import Message, decode_object

HEADER_LENGTH = "inference-header-content-length"
"""The request and response header that marks a binary-data body (its JSON header's length)."""
ENCODINGS = ("gzip", "deflate")
"""Content encodings accepted on requests and offered on answers, as Triton does."""

DTYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
"""Binary tensor layouts (little-endian, row-major); ``BYTES`` is length-prefixed, ``BF16`` is refused."""


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """``body`` decoded from ``Content-Encoding`` (none, gzip or deflate), at most ``limit`` bytes."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    name = encoding.strip().lower()
    if name not in ENCODINGS:
        raise BadRequest(f"Content-Encoding: {encoding[:40]!r} is not supported (use {' or '.join(ENCODINGS)})",
                         status=415)
    decoder = zlib.decompressobj(wbits=31 if name == "gzip" else 15)  # deflate is the zlib format, as Triton
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid {name} data: {exc}") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed body exceeds {limit} bytes")
    if not decoder.eof:
        raise BadRequest(f"the body is truncated {name} data")
    if decoder.unused_data:
        raise BadRequest(f"the body has {len(decoder.unused_data)} bytes after the end of its {name} data")
    return out


def compress(body: bytes, accept: str | None) -> tuple[bytes, str | None]:
    """``body`` in the first encoding of ``Accept-Encoding`` the router offers (with q > 0), and its name."""
    for name in _accepted(accept):
        if name == "gzip":
            encoder = zlib.compressobj(6, zlib.DEFLATED, 31)
        elif name == "deflate":
            encoder = zlib.compressobj(6, zlib.DEFLATED, 15)
        else:
            continue
        return encoder.compress(body) + encoder.flush(), name
    return body, None


def _accepted(accept: str | None) -> list[str]:
    names: list[str] = []
    for part in (accept or "").split(","):
        name, _, params = part.strip().partition(";")
        q = params.strip()
        if q.startswith("q=") and _is_zero(q[2:]):
            continue
        if name.strip().lower():
            names.append(name.strip().lower())
    return names


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0.0
    except ValueError:
        return False


@dataclass(frozen=True)
class OutputWishes:
    """How the client wants its outputs: binary for all (``default``) or per name (``names``)."""

    default: bool = False
    names: Mapping[str, bool] | None = None

    def binary(self, name: str) -> bool:
        return (self.names or {}).get(name, self.default)

    @property
    def any(self) -> bool:
        return self.default or any((self.names or {}).values())


def _flag(parameters: object, key: str, where: str) -> bool | None:
    if not isinstance(parameters, dict) or key not in parameters:
        return None
    value = parameters.pop(key)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}.parameters.{key}: must be true or false")
    return value


def take_output_wishes(message: Message) -> OutputWishes | None:
    """Remove the binary-output parameters from ``message`` (in place) and return them; None when it had none
    (``message`` is then unchanged)."""
    default = _flag(message.get("parameters"), "binary_data_output", "request")
    names: dict[str, bool] = {}
    taken = default is not None
    outputs = message.get("outputs")
    if isinstance(outputs, list):
        for i, output in enumerate(outputs):
            if isinstance(output, dict):
                flag = _flag(output.get("parameters"), "binary_data", f"outputs[{i}]")
                taken = taken or flag is not None
                if flag is not None and isinstance(output.get("name"), str):
                    names[output["name"]] = flag
    return OutputWishes(bool(default), names or None) if taken else None


def _header_length(value: str, body: bytes) -> int:
    if not value.isdigit() or int(value) > len(body):
        raise BadRequest(f"Inference-Header-Content-Length: must be a byte count within the body's {len(body)}, "
                         f"got {value[:20]!r}")
    return int(value)


def _binary_values(raw: bytes, datatype: str, shape: list[int], where: str) -> list[Any]:
    if datatype == "BYTES":
        values: list[Any] = []
        at = 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise BadRequest(f"{where}: BYTES element {len(values)} has a truncated length prefix")
            size = int.from_bytes(raw[at:at + 4], "little")
            element = raw[at + 4:at + 4 + size]
            if len(element) != size:
                raise BadRequest(f"{where}: BYTES element {len(values)} is shorter than its length prefix")
            try:
                values.append(element.decode())
            except UnicodeDecodeError:
                raise BadRequest(f"{where}: BYTES element {len(values)} is not UTF-8 text") from None
            at += 4 + size
        return values
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise BadRequest(f"{where}: binary data of datatype {datatype[:20]!r} is not supported (send it as JSON)")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(f"{where}: {len(raw)} bytes do not fill shape {shape} of {datatype} ({expected} bytes)")
    return np.frombuffer(raw, dtype=dtype).tolist()  # type: ignore[no-any-return]


def binary_request_to_json(body: bytes, header_length: str) -> bytes:
    """A binary-data request body as the equivalent JSON request (inputs' ``data`` filled from the bytes)."""
    length = _header_length(header_length, body)
    message = decode_object(body[:length], "the request's JSON header")
    data = memoryview(body)[length:]
    at = 0
    inputs = message.get("inputs")
    for i, tensor in enumerate(inputs if isinstance(inputs, list) else ()):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        size = parameters.pop("binary_data_size")
        if type(size) is not int or size < 0 or at + size > len(data):
            raise BadRequest(f"inputs[{i}].parameters.binary_data_size: must be a byte count within the "
                             f"{len(data) - at} bytes left, got {str(size)[:20]}")
        shape, datatype = tensor.get("shape"), tensor.get("datatype")
        if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape) or not isinstance(
                datatype, str):
            raise BadRequest(f"inputs[{i}]: binary data needs a shape of non-negative integers and a datatype")
        tensor["data"] = _binary_values(bytes(data[at:at + size]), datatype, shape, f"inputs[{i}]")
        if not parameters:
            del tensor["parameters"]
        at += size
    if at != len(data):
        raise BadRequest(f"the body has {len(data) - at} bytes of binary data no input claims")
    return orjson.dumps(message)


def _binary_bytes(output: Message) -> bytes:
    datatype, values = output["datatype"], output["data"]
    if datatype == "BYTES":
        encoded = [str(v).encode() for v in values]
        return b"".join(len(e).to_bytes(4, "little") + e for e in encoded)
    return np.asarray(values, dtype=DTYPES[datatype]).tobytes()


def binary_response(response: Message, wishes: OutputWishes) -> tuple[bytes, int | None]:
    """The JSON ``response`` with the outputs the client wants binary moved after the JSON header; the
    header's length, or ``None`` when nothing is binary (then the body is plain JSON)."""
    if not wishes.any:
        return orjson.dumps(response), None
    tail: list[bytes] = []
    outputs: list[Message] = []
    for output in response.get("outputs", []):
        if wishes.binary(output["name"]) and (output["datatype"] in DTYPES or output["datatype"] == "BYTES"):
            raw = _binary_bytes(output)
            tail.append(raw)
            head = {k: v for k, v in output.items() if k != "data"}
            head["parameters"] = {**head.get("parameters", {}), "binary_data_size": len(raw)}
            outputs.append(head)
        else:
            outputs.append(output)
    if not tail:
        return orjson.dumps(response), None
    header = orjson.dumps({**response, "outputs": outputs})
    return header + b"".join(tail), len(header)

"""KServe v2 (Triton HTTP/JSON) inference messages: the few operations a cascade needs on them.

A cascade answers different rows of one batched request with different models, so the router
must cut a request into row subsets (the rows deferred to the heavy model), read the light model's
per-row scores, and stitch the models' per-row outputs back into one response in the request's
row order. Requests are validated once here (every input's ``data`` must hold ``prod(shape)``
values, all inputs must share the batch dimension) so malformed input is a 400 at the router and
never reaches -- or is blamed on -- a model server. JSON goes through ``orjson``; when a request can
be forwarded unchanged its original bytes are sent, not a re-encoding.

Tensor names are those of ParetoServe's Triton models (``IMAGE`` in; ``PROBS``, ``CONFIDENCE``,
``LABEL`` out; see :mod:`paretoserve.workers.triton.repository`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from paretoserve.workers.router.errors import BadRequest, UpstreamError
from paretoserve.workers.triton.repository import INPUT_NAME, OUTPUT_CONFIDENCE, OUTPUT_PROBS

Message = dict[str, Any]


@dataclass(slots=True)
class InferRequest:
    """A validated request: its decoded JSON, original bytes and batch size (rows)."""

    message: Message
    raw: bytes
    batch: int

    @property
    def requested_outputs(self) -> list[str] | None:
        outputs = self.message.get("outputs")
        if not isinstance(outputs, list):
            return None
        return [str(output.get("name")) for output in outputs if isinstance(output, dict)]

    def request_id(self) -> str | None:
        value = self.message.get("id")
        return str(value) if value is not None else None

    def all_outputs_body(self) -> bytes:
        """The request asking for every output (the cascade needs the scores whatever the client asked)."""
        if "outputs" not in self.message:
            return self.raw
        return orjson.dumps({key: value for key, value in self.message.items() if key != "outputs"})


def decode_object(body: bytes, what: str) -> Message:
    """``body`` as a JSON object, or :class:`BadRequest` naming ``what``."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(decoded).__name__}")
    return decoded


def _flatten(data: list[Any]) -> list[Any]:
    while data and isinstance(data[0], list):
        data = [value for row in data for value in row]
    return data


def parse_infer_request(body: bytes) -> InferRequest:
    """Decode and validate a KServe v2 JSON request (binary tensor data is not accepted here)."""
    message = decode_object(body, "the request body")
    inputs = message.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("inputs: must be a non-empty list of tensors")
    batch: int | None = None
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest(f"inputs[{i}]: must be an object with a string 'name'")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise BadRequest(f"inputs[{i}].shape: must be a non-empty list of non-negative integers, got {shape!r}")
        data = tensor.get("data")
        if not isinstance(data, list):
            raise BadRequest(f"inputs[{i}].data: must be a list (binary tensor data only via /v2/models/.../infer)")
        flat = _flatten(data)
        if flat is not data:
            tensor["data"] = flat
        if len(flat) != math.prod(shape):
            raise BadRequest(f"inputs[{i}].data: {len(flat)} values do not fill shape {shape}")
        if batch is not None and shape[0] != batch:
            raise BadRequest(f"inputs[{i}].shape: batch dimension {shape[0]} differs from inputs[0]'s {batch}")
        batch = shape[0]
    if batch is None or batch < 1:
        raise BadRequest("inputs[0].shape: the batch dimension must be >= 1")
    return InferRequest(message, body, batch)


def select_rows(request: InferRequest, rows: Sequence[int]) -> bytes:
    """A request holding only ``rows`` of every input (in that order), asking for every output."""
    if len(rows) == request.batch and all(row == i for i, row in enumerate(rows)):
        return request.all_outputs_body()
    inputs = []
    for tensor in request.message["inputs"]:
        data = tensor["data"]
        width = len(data) // request.batch
        subset = [value for row in rows for value in data[row * width : (row + 1) * width]]
        inputs.append({**tensor, "shape": [len(rows), *tensor["shape"][1:]], "data": subset})
    message = {key: value for key, value in request.message.items() if key not in ("inputs", "outputs")}
    message["inputs"] = inputs
    return orjson.dumps(message)


def image_rows(request: InferRequest, name: str = INPUT_NAME) -> list[list[float]]:
    """The rows of input ``name`` (flattened per row), for request-feature routing."""
    tensor = next((t for t in request.message["inputs"] if t["name"] == name), None)
    if tensor is None:
        raise BadRequest(f"inputs: the pre-router needs an input named {name!r}")
    data = tensor["data"]
    width = len(data) // request.batch
    return [data[row * width : (row + 1) * width] for row in range(request.batch)]


def _tensor(response: Message, name: str, model: str) -> Message:
    for tensor in response.get("outputs") or ():
        if isinstance(tensor, dict) and tensor.get("name") == name:
            return tensor
    raise UpstreamError(f"model {model!r} returned no output {name!r}", model=model)


def column(response: Message, name: str, col: int, model: str) -> list[float]:
    """Column ``col`` of every row of output ``name`` (e.g. P(light wrong) = ``PROBS[:, 1]``)."""
    tensor = _tensor(response, name, model)
    data = _flatten(tensor["data"])
    rows = tensor["shape"][0] if tensor.get("shape") else len(data)
    width = len(data) // rows if rows else 0
    if col >= width:
        raise UpstreamError(f"model {model!r} output {name!r} has {width} columns, needs {col + 1}", model=model)
    return [float(data[row * width + col]) for row in range(rows)]


def confidence(response: Message, model: str) -> list[float]:
    """The light model's per-row confidence: ``CONFIDENCE``, else the max of each ``PROBS`` row."""
    names = {t.get("name") for t in response.get("outputs") or () if isinstance(t, dict)}
    if OUTPUT_CONFIDENCE in names:
        return column(response, OUTPUT_CONFIDENCE, 0, model)
    tensor = _tensor(response, OUTPUT_PROBS, model)
    data = _flatten(tensor["data"])
    rows = tensor["shape"][0]
    width = len(data) // rows
    return [float(max(data[row * width : (row + 1) * width])) for row in range(rows)]


def assemble(batch: int, parts: Sequence[tuple[Message, Sequence[int], str]]) -> Message:
    """One response for ``batch`` rows from ``(response, rows it answers, model)`` parts.

    Row ``j`` of a part's response answers request row ``rows[j]``; every request row must be
    answered exactly once. Outputs are those of the first part, in its order.
    """
    first, first_rows, first_model = parts[0]
    if len(parts) == 1 and len(first_rows) == batch and all(row == i for i, row in enumerate(first_rows)):
        return first
    outputs = []
    for template in first.get("outputs") or ():
        name = template["name"]
        width = math.prod(template["shape"][1:])
        data: list[Any] = [None] * (batch * width)
        for response, rows, model in parts:
            values = _flatten(_tensor(response, name, model)["data"])
            for j, row in enumerate(rows):
                data[row * width : (row + 1) * width] = values[j * width : (j + 1) * width]
        outputs.append({**template, "shape": [batch, *template["shape"][1:]], "data": data})
    merged = {key: value for key, value in first.items() if key != "outputs"}
    merged["outputs"] = outputs
    return merged


def keep_outputs(response: Message, requested: Sequence[str] | None) -> Message:
    """``response`` with only the outputs the client asked for (all of them when it asked for none)."""
    if not requested:
        return response
    wanted = set(requested)
    kept = [tensor for tensor in response.get("outputs") or () if tensor.get("name") in wanted]
    return {**response, "outputs": kept}

"""KServe v2 (Triton HTTP/JSON) inference messages: the few operations a cascade needs on them.

A cascade answers different rows of one batched request with different models, so the router
must cut a request into row subsets (the rows deferred to the heavy model), read the light model's
per-row scores, and stitch the models' per-row outputs back into one response in the request's
row order. Every tensor is checked once where it enters (:func:`~.tensors.check_tensor`): a client's
inputs in :func:`parse_infer_request` (a malformed one is a 400 at the router, never reaching -- or
blamed on -- a model server), a model's outputs in :func:`parse_infer_response` (a malformed or
short answer is a 502 ``upstream_error``, never stitched into a wrong 200). Only the checked outputs
of an answer go on: whatever else a model server sends (``parameters``, padding) is dropped. JSON
goes through ``orjson``; when a request can be forwarded unchanged its original bytes are sent, not a
re-encoding.

Tensor names are those of ParetoServe's Triton models (``IMAGE`` in; ``PROBS``, ``CONFIDENCE``,
``LABEL`` out; see :mod:`paretoserve.workers.triton.repository`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from paretoserve.workers.router.errors import BadRequest, UpstreamError
from paretoserve.workers.router.tensors import MAX_NAME, NUMERIC, TensorError, check_tensor
from paretoserve.workers.triton.repository import INPUT_NAME, OUTPUT_CONFIDENCE, OUTPUT_PROBS

Message = dict[str, Any]
JSON = "application/json"


def json_response(payload: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``payload`` as a JSON response (every answer of the router, errors included, is JSON)."""
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


@dataclass(slots=True)
class InferRequest:
    """A validated request: its decoded JSON (every input's ``data`` flat), original bytes and batch size."""

    message: Message
    raw: bytes
    batch: int
    requested_outputs: list[str] | None = None
    """The output names the client asked for (``None``: all of them)."""

    def request_id(self) -> str | None:
        value = self.message.get("id")
        return value if isinstance(value, str) else None

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


def _requested(message: Message) -> list[str] | None:
    outputs = message.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) and 0 < len(o["name"]) <= MAX_NAME for o in outputs
    ):
        raise BadRequest("outputs: must be a list of objects with a string 'name'")
    return [o["name"] for o in outputs] or None


def parse_infer_request(body: bytes) -> InferRequest:
    """Decode and validate a KServe v2 JSON request (binary tensor data is not accepted here)."""
    message = decode_object(body, "the request body")
    inputs = message.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("inputs: must be a non-empty list of tensors")
    if "id" in message and not isinstance(message["id"], str):
        raise BadRequest("id: must be a string")
    batch: int | None = None
    for i, raw in enumerate(inputs):
        try:
            tensor = check_tensor(raw)
        except TensorError as exc:
            raise BadRequest(exc.at(f"inputs[{i}]")) from None
        if batch is not None and tensor.rows != batch:
            raise BadRequest(f"inputs[{i}].shape: batch dimension {tensor.rows} differs from inputs[0]'s {batch}")
        raw["data"] = tensor.data
        batch = tensor.rows
    if batch is None or batch < 1:
        raise BadRequest("inputs[0].shape: the batch dimension must be >= 1")
    return InferRequest(message, body, batch, _requested(message))


def parse_infer_response(body: bytes, model: str, rows: int) -> Message:
    """A model's answer for ``rows`` rows, reduced to its checked outputs; :class:`UpstreamError` if malformed."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"model {model!r} answered something that is not JSON", model=model) from None
    outputs = message.get("outputs") if isinstance(message, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise UpstreamError(f"model {model!r} answered no outputs", model=model)
    checked: list[Message] = []
    names: set[str] = set()
    for i, raw in enumerate(outputs):
        try:
            tensor = check_tensor(raw, rows=rows)
        except TensorError as exc:
            where = exc.at(f"outputs[{i}]")
            raise UpstreamError(f"model {model!r} answered a malformed {where}", model=model) from None
        if tensor.name in names:
            raise UpstreamError(f"model {model!r} answered output {tensor.name!r} twice", model=model)
        names.add(tensor.name)
        checked.append(tensor.to_json())
    return {"outputs": checked}


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
    """The rows of numeric input ``name`` (flattened per row), for request-feature routing."""
    tensor = next((t for t in request.message["inputs"] if t["name"] == name), None)
    if tensor is None:
        raise BadRequest(f"inputs: the pre-router needs an input named {name!r}")
    if tensor["datatype"] not in NUMERIC:
        raise BadRequest(f"inputs: the pre-router needs a numeric {name!r}, got {tensor['datatype']}")
    data = tensor["data"]
    width = len(data) // request.batch
    return [data[row * width : (row + 1) * width] for row in range(request.batch)]


def _tensor(response: Message, name: str, model: str) -> Message:
    for tensor in response.get("outputs") or ():
        if isinstance(tensor, dict) and tensor.get("name") == name:
            return tensor
    raise UpstreamError(f"model {model!r} returned no output {name!r}", model=model)


def numeric_rows(response: Message, name: str, model: str) -> tuple[list[Any], int, int]:
    """A checked numeric output's flat data, rows and values per row (:class:`UpstreamError` if the answer has
    no such output, or it is not numeric)."""
    tensor = _tensor(response, name, model)
    if tensor["datatype"] not in NUMERIC:
        raise UpstreamError(f"model {model!r} output {name!r} is {tensor['datatype']}, not numeric", model=model)
    shape = tensor["shape"]
    rows = shape[0]
    width = len(tensor["data"]) // rows if rows else 0
    return tensor["data"], rows, width


def column(response: Message, name: str, col: int, model: str) -> list[float]:
    """Column ``col`` of every row of output ``name`` (e.g. P(light wrong) = ``PROBS[:, 1]``)."""
    data, rows, width = numeric_rows(response, name, model)
    if col >= width:
        raise UpstreamError(f"model {model!r} output {name!r} has {width} columns, needs {col + 1}", model=model)
    return [float(data[row * width + col]) for row in range(rows)]


def confidence(response: Message, model: str) -> list[float]:
    """The light model's per-row confidence: ``CONFIDENCE``, else the max of each ``PROBS`` row."""
    names = {t.get("name") for t in response.get("outputs") or () if isinstance(t, dict)}
    if OUTPUT_CONFIDENCE in names:
        return column(response, OUTPUT_CONFIDENCE, 0, model)
    data, rows, width = numeric_rows(response, OUTPUT_PROBS, model)
    if rows and not width:
        raise UpstreamError(f"model {model!r} output {OUTPUT_PROBS!r} has no columns", model=model)
    return [float(max(data[row * width : (row + 1) * width])) for row in range(rows)]


def assemble(batch: int, parts: Sequence[tuple[Message, Sequence[int], str]]) -> Message:
    """One response for ``batch`` rows from ``(checked response, rows it answers, model)`` parts.

    Row ``j`` of a part's response answers request row ``rows[j]``; every request row must be
    answered exactly once. Outputs are those of the first part, in its order; every other part must
    have them with the same datatype and row shape (else :class:`UpstreamError`).
    """
    first, first_rows, _ = parts[0]
    if len(parts) == 1 and len(first_rows) == batch and all(row == i for i, row in enumerate(first_rows)):
        return first
    outputs = []
    for template in first["outputs"]:
        name, datatype, row_shape = template["name"], template["datatype"], template["shape"][1:]
        width = len(template["data"]) // len(first_rows) if first_rows else 0
        data: list[Any] = [None] * (batch * width)
        for response, rows, model in parts:
            tensor = _tensor(response, name, model)
            if tensor["datatype"] != datatype or tensor["shape"][1:] != row_shape:
                raise UpstreamError(f"model {model!r} output {name!r} is {tensor['datatype']} {tensor['shape']}, "
                                    f"other rows have {datatype} {row_shape}", model=model)
            values = tensor["data"]
            for j, row in enumerate(rows):
                data[row * width : (row + 1) * width] = values[j * width : (j + 1) * width]
        outputs.append({"name": name, "datatype": datatype, "shape": [batch, *row_shape], "data": data})
    return {"outputs": outputs}


def keep_outputs(response: Message, requested: Sequence[str] | None) -> Message:
    """``response`` with only the outputs the client asked for (all of them when it asked for none).

    Asking for an output the model does not have is the client's error (400), as Triton itself says.
    """
    if not requested:
        return response
    outputs = response["outputs"]
    have = {tensor["name"] for tensor in outputs}
    missing = [name for name in requested if name not in have]
    if missing:
        raise BadRequest(f"outputs: the model has no output {missing[0]!r} (it has {', '.join(sorted(have))})")
    wanted = set(requested)
    return {**response, "outputs": [tensor for tensor in outputs if tensor["name"] in wanted]}

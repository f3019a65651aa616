"""An agent workflow's data flow: what each stage's model reads, and when each upstream call may go.

Most pipelines are classification chains whose every stage reads the request's own input; an agent
workflow's nodes read their parents' answers (a judge reads its proposers' class probabilities, a refiner
the image and a draft). A stage declares ``inputs`` (see :mod:`.config`); :func:`stage_request` builds the
request its model gets: one ``IMAGE`` tensor, FP32, ``[batch, Σ widths]``, each piece (the request's input
or a parent's output tensor) flattened per row and concatenated in the declared order. A stage that reads
exactly the request gets the client's request unchanged (its original bytes go upstream).

:func:`queue_key` says where an upstream call waits when every slot is taken (``queue.order``): by the
latest moment the call can start and still let the request finish in time -- the request's deadline minus
the planned latency ahead of the stage (``slack``, least slack first), by the deadline alone
(``deadline``), or by arrival (``fifo``: no key, the queueing time orders it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import orjson

from paretoserve.workers.router.config import RouterConfig, StageConfig
from paretoserve.workers.router.errors import BadRequest, UpstreamError
from paretoserve.workers.router.protocol import InferRequest, Message, numeric_rows
from paretoserve.workers.router.tensors import NUMERIC
from paretoserve.workers.triton.repository import INPUT_NAME


def _request_piece(request: InferRequest) -> tuple[list[float], int]:
    """The request's input a stage reads as ``$request``: ``IMAGE``, or its only input; numeric."""
    inputs = request.message["inputs"]
    tensor = next((t for t in inputs if t["name"] == INPUT_NAME), inputs[0] if len(inputs) == 1 else None)
    if tensor is None:
        raise BadRequest(f"inputs: a stage reads $request, which needs an input named {INPUT_NAME!r} "
                         f"(or exactly one input)")
    if tensor["datatype"] not in NUMERIC:
        raise BadRequest(f"inputs: {tensor['name']!r} is {tensor['datatype']}; a stage's input must be numeric")
    data = tensor["data"]
    return data, len(data) // request.batch


def stage_request(stage: StageConfig, request: InferRequest, answers: Mapping[str, Message],
                  models: Mapping[str, str]) -> InferRequest:
    """The request ``stage``'s model gets; ``answers`` are the parents' responses, ``models`` who gave them."""
    if stage.reads_request_only:
        return request
    pieces: list[tuple[list[float], int]] = []
    for piece in stage.inputs:
        if piece.stage is None:
            pieces.append(_request_piece(request))
            continue
        data, rows, width = numeric_rows(answers[piece.stage], piece.output, models[piece.stage])
        if rows != request.batch:  # parse_infer_response checked the rows; a stitched answer keeps them
            raise UpstreamError(f"stage {piece.stage!r} answered {rows} rows for {request.batch}",
                                model=models[piece.stage])
        pieces.append((data, width))
    total = sum(width for _, width in pieces)
    flat: list[float] = []
    for row in range(request.batch):
        for data, width in pieces:
            flat.extend(data[row * width:(row + 1) * width])
    message: Message = {"inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [request.batch, total],
                                    "data": flat}]}
    return InferRequest(message, orjson.dumps(message), request.batch)


def queue_key(config: RouterConfig, stage: str, deadline: float, started: float) -> float | None:
    """The order key of ``stage``'s upstream calls for a request that arrived at ``started`` (seconds) with
    ``deadline``; None for FIFO. Without a finite deadline the SLO (or nothing) after arrival stands in."""
    order = config.queue.order
    if order == "fifo":
        return None
    base = deadline if not math.isinf(deadline) else started + (config.slo_ms or 0.0) / 1000.0
    if order == "deadline":
        return base
    return base - config.ahead_ms.get(stage, 0.0) / 1000.0

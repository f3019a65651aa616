"""Triton Python-backend model of the prompt scorer (copied as ``<model>/1/model.py``; wire format in :mod:`.scorer`).

``execute`` answers each request of a dynamic batch on its own: the ``SCORE`` of each row of its inputs
(``PROMPT``; ``IMAGE`` and ``PROMPT`` for a multimodal score, :func:`~.scorer.scorer_inputs`), or an error response
for that request alone when a row is no prompt (or no image) the score can read (the router then sends the request
to the heavy model, or answers the client's bad image with a 400 before asking). The weights are ``scorer.json``
beside this file, in the version directory; their ``features`` say which score it is.

No torch (the worker image has none); ``triton_python_backend_utils`` exists only inside the stub, so it is
imported in :meth:`TritonPythonModel.initialize` and this module stays importable and type-checkable outside.
"""

from __future__ import annotations

import gc
import importlib
from pathlib import Path
from typing import Any

from paretoserve.workers.llm.scorer import OUTPUT_SCORE, SCORER_FILE, load_served_score, score_inputs, scorer_inputs


class TritonPythonModel:
    """The interface the Triton Python backend calls: ``initialize`` and ``execute``."""

    def initialize(self, args: dict[str, str]) -> None:
        self._pb: Any = importlib.import_module("triton_python_backend_utils")
        self._name = args.get("model_name", "scorer")
        self._score = load_served_score(Path(args["model_repository"]) / str(args["model_version"]) / SCORER_FILE)
        self._inputs = scorer_inputs(self._score)
        gc.collect()  # the stub's imports, out of the cyclic collector's walks while it serves (as the classifiers'
        gc.freeze()  # stub does: a full collection of them takes milliseconds, inside some request's execute)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        responses = []
        for request in requests:
            try:
                tensors = {name: pb.get_input_tensor_by_name(request, name) for name in self._inputs}
                scores = score_inputs(self._score, {name: tensor.as_numpy() for name, tensor in tensors.items()
                                                    if tensor is not None})
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(OUTPUT_SCORE, scores)]))
            except Exception as error:  # a row the score cannot read fails its own request, as the client's 400
                message = f"{self._name}: {type(error).__name__}: {error}"
                code = pb.TritonError.INVALID_ARG if isinstance(error, ValueError) else pb.TritonError.INTERNAL
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, code)))
        return responses

"""Triton Python-backend model of the prompt scorer (copied as ``<model>/1/model.py``; wire format in :mod:`.scorer`).

``execute`` answers each request of a dynamic batch on its own: the ``SCORE`` of each row of its ``PROMPT``, or
an error response for that request alone when a row is no prompt the score can read (the router then sends the
prompt to the heavy model). The weights are ``scorer.json`` beside this file, in the version directory.

No torch (the worker image has none); ``triton_python_backend_utils`` exists only inside the stub, so it is
imported in :meth:`TritonPythonModel.initialize` and this module stays importable and type-checkable outside.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from paretoserve.workers.llm.scorer import OUTPUT_SCORE, SCORER_FILE, load_scorer, score_rows
from paretoserve.workers.llm.serving import INPUT_PROMPT


class TritonPythonModel:
    """The interface the Triton Python backend calls: ``initialize`` and ``execute``."""

    def initialize(self, args: dict[str, str]) -> None:
        self._pb: Any = importlib.import_module("triton_python_backend_utils")
        self._name = args.get("model_name", "scorer")
        self._score = load_scorer(Path(args["model_repository"]) / str(args["model_version"]) / SCORER_FILE)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        responses = []
        for request in requests:
            try:
                prompts = pb.get_input_tensor_by_name(request, INPUT_PROMPT).as_numpy().reshape(-1)
                scores = score_rows(self._score, prompts)
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(OUTPUT_SCORE, scores)]))
            except Exception as error:  # a prompt the score cannot read fails its own request, as the client's 400
                message = f"{self._name}: {type(error).__name__}: {error}"
                code = pb.TritonError.INVALID_ARG if isinstance(error, ValueError) else pb.TritonError.INTERNAL
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, code)))
        return responses

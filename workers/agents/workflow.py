"""The example agent workflow as data, and how a workflow runs offline: node inputs, fan-out and fan-in.

An agent workflow is a ServingPipeline whose stages form a DAG of model calls; each stage declares its
``inputs``: ``$request`` (the request's 8x8 image, flattened to 64 features) or ``<stage>`` / ``<stage>.<OUTPUT>``
(a parent's served output, ``PROBS`` by default). The router builds the node's input tensor by flattening every
piece per row and concatenating them in the declared order; :func:`node_features` builds exactly that, so the
aggregators are trained, measured and evaluated (:func:`run_workflow`) on the tensors the router will send.

:data:`WORKFLOW` is the example of ``paretoserve agents build`` (8 agents, two levels of fan-out, one fan-in),
each node with two variants, cheapest first. Offline, a node may pick its variant per sample: that is how the
aggregators are trained to work whichever variant the planner gives their parents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from paretoserve.planner.bounds import REQUEST_INPUT

REQUEST = REQUEST_INPUT
"""The request's own input (``IMAGE``, 8x8 digits flattened to 64 features)."""
REQUEST_FEATURES = 64
NUM_CLASSES = 10
OUTPUT_WIDTHS: Mapping[str, int] = {"PROBS": NUM_CLASSES, "CONFIDENCE": 1, "LABEL": 1}
"""The served outputs a node may read from a parent, and their widths per row."""

CLASSIFIERS = ("tiny_linear", "mlp_small", "cnn_small", "cnn_large")
"""The catalog's digits classifiers (:mod:`paretoserve.workers.models`), cheapest first."""

Floats = npt.NDArray[np.float32]
Picks = npt.NDArray[np.int64]
Engine = Callable[[Floats], Floats]
"""A model offline: ``(N, features)`` inputs (flattened as the router sends them) -> ``(N, 10)`` probabilities."""


@dataclass(frozen=True)
class Node:
    """One agent: its parents, what it reads (in order) and the models it may run (cheapest first)."""

    name: str
    depends_on: tuple[str, ...]
    inputs: tuple[str, ...]
    variants: tuple[str, ...]


WORKFLOW: tuple[Node, ...] = (
    Node("triage", (), (REQUEST,), ("tiny_linear", "mlp_small")),
    Node("shape", ("triage",), (REQUEST,), ("mlp_small", "cnn_small")),
    Node("stroke", ("triage",), (REQUEST,), ("cnn_small", "cnn_large")),
    Node("shape-fine", ("shape",), (REQUEST, "shape"), ("refine-small", "refine-large")),
    Node("shape-coarse", ("shape",), (REQUEST,), ("tiny_linear", "mlp_small")),
    Node("stroke-fine", ("stroke",), (REQUEST, "stroke"), ("refine-small", "refine-large")),
    Node("stroke-coarse", ("stroke",), (REQUEST,), ("tiny_linear", "mlp_small")),
    Node("judge", ("triage", "shape-fine", "shape-coarse", "stroke-fine", "stroke-coarse"),
         ("triage", "shape-fine", "shape-coarse", "stroke-fine", "stroke-coarse"), ("judge-small", "judge-large")),
)
"""The example workflow (nodes in topological order)."""


def node(name: str, nodes: Sequence[Node] = WORKFLOW) -> Node:
    for candidate in nodes:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no node {name!r}; the workflow has {[n.name for n in nodes]}")


def parse_input(text: str) -> tuple[str, str]:
    """``(stage, output)`` of an ``inputs`` entry; ``($request, IMAGE)`` for the request's own input."""
    if text == REQUEST:
        return REQUEST, "IMAGE"
    stage, _, output = text.partition(".")
    output = output or "PROBS"
    if output not in OUTPUT_WIDTHS:
        raise ValueError(f"input {text!r}: unknown output {output!r}; known: {sorted(OUTPUT_WIDTHS)}")
    return stage, output


def feature_count(target: Node) -> int:
    """The width of ``target``'s input rows: the sum of its pieces' widths."""
    total = 0
    for text in target.inputs:
        stage, output = parse_input(text)
        total += REQUEST_FEATURES if stage == REQUEST else OUTPUT_WIDTHS[output]
    return total


def node_features(target: Node, images: Floats, probs: Mapping[str, Floats]) -> Floats:
    """``target``'s input rows as the router builds them: each input flattened per row, concatenated in the
    declared order (``probs``: each parent's ``(N, 10)`` probabilities; confidence and label derive from them)."""
    pieces: list[Floats] = []
    for text in target.inputs:
        stage, output = parse_input(text)
        if stage == REQUEST:
            pieces.append(images.reshape(len(images), -1))
        elif stage not in target.depends_on:
            raise ValueError(f"node {target.name!r}: input {text!r} is not in its dependsOn")
        elif output == "PROBS":
            pieces.append(probs[stage])
        elif output == "CONFIDENCE":
            pieces.append(probs[stage].max(axis=1, keepdims=True))
        else:
            pieces.append(probs[stage].argmax(axis=1).astype(np.float32).reshape(-1, 1))
    return np.ascontiguousarray(np.concatenate(pieces, axis=1), dtype=np.float32)


def run_workflow(nodes: Sequence[Node], engines: Mapping[str, Engine], images: Floats,
                 picks: Mapping[str, Picks]) -> dict[str, Floats]:
    """Every node's probabilities on ``images``, parents first; sample ``i`` of node ``n`` runs the variant
    ``n.variants[picks[n.name][i]]`` (one variant for all: :func:`fixed_picks`; per sample: :func:`random_picks`)."""
    probs: dict[str, Floats] = {}
    for current in nodes:
        features = node_features(current, images, probs)
        out = np.zeros((len(images), NUM_CLASSES), dtype=np.float32)
        for index, model in enumerate(current.variants):
            rows = np.flatnonzero(picks[current.name] == index)
            if len(rows):
                out[rows] = engines[model](features[rows])
        probs[current.name] = out
    return probs


def fixed_picks(nodes: Sequence[Node], assignment: Mapping[str, str], size: int) -> dict[str, Picks]:
    """One model per node for all ``size`` samples; ``assignment`` maps every node to one of its variants."""
    missing = sorted({n.name for n in nodes} - set(assignment))
    unknown = sorted(set(assignment) - {n.name for n in nodes})
    if missing or unknown:
        raise ValueError(f"assignment: missing nodes {missing}, unknown nodes {unknown}")
    picks: dict[str, Picks] = {}
    for current in nodes:
        model = assignment[current.name]
        if model not in current.variants:
            raise ValueError(f"assignment: node {current.name!r} runs one of {list(current.variants)}, not {model!r}")
        picks[current.name] = np.full(size, current.variants.index(model), dtype=np.int64)
    return picks


def random_picks(nodes: Sequence[Node], size: int, rng: np.random.Generator) -> dict[str, Picks]:
    """A variant per node and sample, uniformly at random (what the aggregators are trained on)."""
    return {current.name: rng.integers(0, len(current.variants), size=size, dtype=np.int64) for current in nodes}


def cheapest(nodes: Sequence[Node] = WORKFLOW) -> dict[str, str]:
    """Each node's first (cheapest) variant."""
    return {current.name: current.variants[0] for current in nodes}


def largest(nodes: Sequence[Node] = WORKFLOW) -> dict[str, str]:
    """Each node's last (largest) variant."""
    return {current.name: current.variants[-1] for current in nodes}

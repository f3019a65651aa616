"""Fusion graphs (GMorph's graph and mutations), the fused module, the learning-curve filter, the spec."""

from __future__ import annotations

import random

import pytest
import torch

from paretoserve.planner.spec import SpecError
from paretoserve.workers.fusion.graph import FusionGraph, FusionGraphError, Share
from paretoserve.workers.fusion.nets import FusedNet, TaskNet, chain_of
from paretoserve.workers.fusion.search import pareto
from paretoserve.workers.fusion.session import Candidate
from paretoserve.workers.fusion.spec import Task, parse_fusion_spec
from paretoserve.workers.fusion.training import extrapolate_drop

INPUT = (1, 16, 16)


def _tasks() -> list[Task]:
    return [
        Task(name="digit", labels="digit", channels=[8, 8, 0, 16, 0], hidden=16),
        Task(name="parity", labels="parity", channels=[8, 8, 0, 16, 0], hidden=8),
        Task(name="ge5", labels="atLeast5", channels=[8, 0, 16, 16, 0], hidden=8),
        Task(name="loops", labels="loops", channels=[8, 0, 12, 0], hidden=8),
    ]


def _unfused() -> FusionGraph:
    return FusionGraph.unfused([chain_of(task, INPUT) for task in _tasks()])


def _states(graph: FusionGraph) -> tuple[list[TaskNet], dict]:
    torch.manual_seed(0)
    nets = [TaskNet(chain).eval() for chain in graph.chains]
    states: dict = {}
    for net in nets:
        states.update(net.block_states())
    return nets, states


def test_chain_shapes_follow_the_architecture() -> None:
    chain = chain_of(_tasks()[2], INPUT)
    assert [b.out_shape for b in chain.blocks] == [(8, 8, 8), (16, 8, 8), (16, 4, 4), (2,)]
    assert chain.blocks[-1].kind == "head" and chain.blocks[-1].in_shape == (16, 4, 4)


def test_the_unfused_graph_reproduces_the_task_models_exactly() -> None:
    graph = _unfused()
    nets, states = _states(graph)
    fused = FusedNet(graph, states).eval()
    images = torch.rand(7, *INPUT)
    with torch.inference_mode():
        for out, net in zip(fused(images), nets, strict=True):
            assert torch.equal(out, net(images))
    assert graph.describe() == "unfused" and graph.shared_nodes() == ()


@pytest.mark.parametrize("seed", range(12))
def test_random_mutations_keep_the_graph_a_valid_tree_with_the_right_outputs(seed: int) -> None:
    rng = random.Random(seed)
    graph = _unfused()
    _, states = _states(graph)
    images = torch.rand(3, *INPUT)
    nodes_before = len(graph.nodes())
    for _ in range(6):
        moves = graph.share_moves()
        if not moves:
            break
        graph = graph.apply(rng.choice(moves))
        graph.validate()
        for task in graph.tasks:
            path = graph.path(task)
            assert path[-1] == graph.head(task)
            assert graph.block(path[0]).in_shape == INPUT
            for parent, child in zip(path, path[1:], strict=False):
                assert graph.block(parent).out_shape == graph.block(child).in_shape
        with torch.inference_mode():
            outputs = FusedNet(graph, states)(images)
        assert [tuple(o.shape) for o in outputs] == [(3, graph.block(graph.head(t)).out_shape[0]) for t in graph.tasks]
        assert len(graph.nodes()) <= nodes_before  # a share adds no block (it drops the prefix it replaces, if unused)
        nodes_before = len(graph.nodes())
        assert graph.shared_nodes()


def test_a_share_reuses_the_owner_of_the_sharing_points_weights() -> None:
    graph = _unfused()
    nets, states = _states(graph)
    shared = graph.apply(Share(node=("parity", 2), onto=("digit", 1)))
    assert shared.path("parity") == (("digit", 0), ("digit", 1), ("parity", 2), ("parity", 3))
    assert ("parity", 0) not in shared.nodes() and ("parity", 1) not in shared.nodes()
    assert shared.describe() == "digit.0-1 -> digit,parity"
    fused = FusedNet(shared, states).eval()
    images = torch.rand(4, *INPUT)
    with torch.inference_mode():
        digit_out = fused(images)[0]
        assert torch.equal(digit_out, nets[0](images))  # the owner's own path is unchanged


@pytest.mark.parametrize(
    ("move", "words"),
    [
        (Share(node=("digit", 1), onto=("ge5", 1)), "reads"),  # (8,16,16) reads, ge5.1 gives (16,8,8)
        (Share(node=("digit", 1), onto=("parity", 3)), "head"),  # a head cannot be a sharing point
        (Share(node=("digit", 2), onto=("digit", 0)), "lies on a path"),  # would skip digit.1
        (Share(node=("digit", 9), onto=("parity", 0)), "both nodes"),
    ],
)
def test_invalid_shares_are_refused_with_the_reason(move: Share, words: str) -> None:
    with pytest.raises(FusionGraphError, match=words):
        _unfused().apply(move)


def test_share_moves_are_all_valid_and_the_key_names_the_graph() -> None:
    graph = _unfused()
    moves = graph.share_moves()
    assert moves and all(isinstance(graph.apply(move), FusionGraph) for move in moves)
    once = graph.apply(moves[0])
    assert once.key == graph.apply(moves[0]).key != graph.key


def test_the_learning_curve_extrapolation() -> None:
    # differences halve each epoch: 0.16, 0.08, 0.04 -> at most 0.04 more to come
    falling = [0.5, 0.34, 0.26, 0.22]
    assert extrapolate_drop(falling, 20) == pytest.approx(0.22 - 0.04, abs=0.005)
    assert extrapolate_drop(falling, 1) == pytest.approx(0.22 - 0.02, abs=0.002)
    assert extrapolate_drop([0.1, 0.05, 0.04, 0.06], 10) == 0.06  # not falling: flat
    assert extrapolate_drop([0.1, 0.05, 0.02, -0.01], 10) == -0.01
    with pytest.raises(ValueError, match="four"):
        extrapolate_drop([0.1, 0.05], 3)


def _candidate(key: str, ms: float, acc: tuple[float, ...], meets: bool = True) -> Candidate:
    return Candidate(key=key, describe=key, base="", val_accuracy=acc, drops=(0.0,), stop="met" if meets else "x",
                     epochs=1, seconds=0.0, estimated_ms=ms, meets=meets)


def test_pareto_keeps_the_non_dominated_candidates_within_the_bound() -> None:
    kept = pareto([
        _candidate("fast", 1.0, (0.90, 0.90)),
        _candidate("slow-better", 2.0, (0.95, 0.90)),
        _candidate("dominated", 2.5, (0.90, 0.89)),
        _candidate("fastest-but-out", 0.5, (0.99, 0.99), meets=False),
    ])
    assert [c.key for c in kept] == ["fast", "slow-better"]


_SPEC = {"apiVersion": "paretoserve.io/v1alpha1", "kind": "FusionSpec", "metadata": {"name": "f"},
         "spec": {"tasks": [{"name": "a", "labels": "digit", "channels": [8, 0]},
                            {"name": "b", "labels": "parity", "channels": [8]}]}}


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"tasks": [{"name": "a", "labels": "digit", "channels": [8]}]}, "spec.tasks"),
        ({"tasks": [{"name": "a", "labels": "digit", "channels": [0, 8]},
                    {"name": "b", "labels": "parity", "channels": [8]}]}, "spec.tasks[0].channels"),
        ({"tasks": [{"name": "a", "labels": "digit", "channels": [8, 0, 0]},
                    {"name": "b", "labels": "parity", "channels": [8]}]}, "spec.tasks[0].channels"),
        ({"tasks": [{"name": "a", "labels": "colour", "channels": [8]},
                    {"name": "b", "labels": "parity", "channels": [8]}]}, "spec.tasks[0].labels"),
        ({"tasks": [{"name": "a", "labels": "digit", "channels": [8]},
                    {"name": "a", "labels": "parity", "channels": [8]}]}, "spec.tasks"),
        ({"tasks": [{"name": "A-1", "labels": "digit", "channels": [8]},
                    {"name": "b", "labels": "parity", "channels": [8]}]}, "spec.tasks[0].name"),
        ({"search": {"theta": 0.9}}, "spec.search.theta"),
        ({"search": {"cooling": 1.0}}, "spec.search.cooling"),
        ({"data": {"imageSize": 4}}, "spec.data.imageSize"),
    ],
)
def test_an_invalid_fusion_spec_names_the_field(patch: dict, path: str) -> None:
    document = {**_SPEC, "spec": {**_SPEC["spec"], **patch}}
    with pytest.raises(SpecError) as caught:
        parse_fusion_spec(document)
    assert str(caught.value).startswith(path), str(caught.value)


def test_the_example_fusion_spec_parses() -> None:
    from pathlib import Path

    from paretoserve.workers.fusion.spec import load_fusion_spec

    spec = load_fusion_spec((Path(__file__).parents[2] / "manifests/fusion/digits-tasks.yaml").read_text())
    assert [task.name for task in spec.spec.tasks] == ["digit", "parity", "at_least_5", "loops"]

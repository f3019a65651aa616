"""GMorph's first baseline: all-shared multi-task learning (one backbone, one head per task, trained jointly).

The backbone is the first task's convolutions; every task gets its own head on the backbone's output, and the
whole network is trained from scratch on all tasks' labels at once (the sum of their cross-entropies). As a
fusion graph it is the graph in which every head hangs off the backbone's last block, so it is built, timed
and exported with the same code as the fused variants.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from paretoserve.workers.fusion.data import FusionData
from paretoserve.workers.fusion.graph import FusionGraph, NodeId, TaskChain
from paretoserve.workers.fusion.nets import FusedNet
from paretoserve.workers.fusion.spec import Task
from paretoserve.workers.fusion.training import supervised_fit, task_accuracies
from paretoserve.workers.models.training import single_thread


def all_shared_graph(chains: tuple[TaskChain, ...]) -> FusionGraph:
    """Every task's head on the first task's last convolution (heads re-shaped to read it)."""
    backbone = chains[0].blocks[:-1]
    out_shape = backbone[-1].out_shape
    reshaped = tuple(replace(chain, blocks=backbone + (replace(chain.blocks[-1], in_shape=out_shape),))
                     if index else chain for index, chain in enumerate(chains))
    first = reshaped[0].task
    parents: dict[NodeId, NodeId | None] = {(first, i): (first, i - 1) if i else None for i in range(len(backbone))}
    for chain in reshaped:
        parents[(chain.task, len(chain.blocks) - 1)] = (first, len(backbone) - 1)
    return FusionGraph.from_parents(reshaped, parents)


@dataclass(frozen=True)
class MtlResult:
    net: FusedNet
    val_accuracy: tuple[float, ...]
    test_accuracy: tuple[float, ...]
    seconds: float


def train_all_shared(chains: tuple[TaskChain, ...], tasks: tuple[Task, ...], data: FusionData, *,
                     epochs: int, learning_rate: float, seed: int, batch_size: int = 64) -> MtlResult:
    """Train the all-shared network from scratch on every task's labels."""
    started = time.perf_counter()
    graph = all_shared_graph(chains)
    with single_thread():
        torch.manual_seed(seed)
        net = FusedNet(graph)
        supervised_fit(net, net, [data.train.labels(task.labels) for task in tasks], data, epochs=epochs,
                       learning_rate=learning_rate, seed=seed, batch_size=batch_size)
        val = tuple(task_accuracies(net, data.val, tasks))
        test = tuple(task_accuracies(net, data.test, tasks))
    return MtlResult(net=net, val_accuracy=val, test_accuracy=test, seconds=time.perf_counter() - started)

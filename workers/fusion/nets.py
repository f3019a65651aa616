"""Torch modules behind the fusion graphs: one module per block, the task models, and the fused model.

A task model is a chain of blocks (:func:`chain_of`): 3x3 convolutions with ReLU (a 2x2 max-pool folded into
the convolution before it) and a head (flatten, hidden layer, logits). :class:`FusedNet` builds any
:class:`~paretoserve.workers.fusion.graph.FusionGraph` from per-node block weights, computes every node once,
parents first, and returns one logits tensor per task. Built from the unfused graph and the task models'
weights it computes exactly what the task models compute. :func:`export_onnx` writes a fused model as the ONNX
graph Triton serves, with one output per task.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from paretoserve.workers.fusion.data import NUM_CLASSES
from paretoserve.workers.fusion.graph import BlockSig, FusionGraph, NodeId, TaskChain
from paretoserve.workers.fusion.spec import Task
from paretoserve.workers.triton.variant_engine import ONNX_INPUT, TASK_OUTPUT_PREFIX

BlockState = dict[str, torch.Tensor]


def onnx_output(task: str) -> str:
    """The ONNX output of task ``task``'s logits in a fused graph."""
    return f"{TASK_OUTPUT_PREFIX}{task}"


def chain_of(task: Task, input_shape: tuple[int, ...]) -> TaskChain:
    """The block chain of ``task``'s architecture on inputs of ``input_shape`` (channels, height, width)."""
    blocks: list[BlockSig] = []
    shape = input_shape
    widths = task.channels
    for position, width in enumerate(widths):
        if width == 0:
            continue
        pool = position + 1 < len(widths) and widths[position + 1] == 0
        side_h, side_w = shape[1] // (2 if pool else 1), shape[2] // (2 if pool else 1)
        if side_h < 1 or side_w < 1:
            raise ValueError(f"task {task.name!r}: too many pools for a {input_shape} input")
        out = (width, side_h, side_w)
        blocks.append(BlockSig(kind="conv", in_shape=shape, out_shape=out, params=(width, int(pool))))
        shape = out
    classes = NUM_CLASSES[task.labels]
    blocks.append(BlockSig(kind="head", in_shape=shape, out_shape=(classes,), params=(task.hidden, classes)))
    return TaskChain(task=task.name, blocks=tuple(blocks))


def build_block(sig: BlockSig) -> nn.Module:
    """A freshly initialised module for ``sig``."""
    if sig.kind == "conv":
        width, pool = sig.params
        layers: list[nn.Module] = [nn.Conv2d(sig.in_shape[0], width, kernel_size=3, padding=1), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
        return nn.Sequential(*layers)
    hidden, classes = sig.params
    features = 1
    for dim in sig.in_shape:
        features *= dim
    return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def _module_name(node: NodeId) -> str:
    return f"{node[0]}__{node[1]}"


class TaskNet(nn.Module):
    """One task model: its chain's blocks in order."""

    def __init__(self, chain: TaskChain) -> None:
        super().__init__()
        self.chain = chain
        self.blocks = nn.ModuleList(build_block(sig) for sig in chain.blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = images
        for block in self.blocks:
            out = block(out)
        return out

    def block_states(self) -> dict[NodeId, BlockState]:
        """This model's weights per node of the unfused graph."""
        return {(self.chain.task, index): {k: v.detach().clone() for k, v in block.state_dict().items()}
                for index, block in enumerate(self.blocks)}


class FusedNet(nn.Module):
    """A fusion graph as one module: each node computed once; ``forward`` returns the tasks' logits in
    ``graph.tasks`` order. Nodes without an entry in ``states`` keep their fresh initialisation."""

    def __init__(self, graph: FusionGraph, states: Mapping[NodeId, BlockState] | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.order = graph.nodes()
        self.parent_index = [None if graph.parents_of(node) is None else self.order.index(graph.parents_of(node))
                             for node in self.order]
        self.head_index = [self.order.index(graph.head(task)) for task in graph.tasks]
        self.blocks = nn.ModuleDict()
        for node in self.order:
            block = build_block(graph.block(node))
            if states is not None and node in states:
                block.load_state_dict(states[node])
            self.blocks[_module_name(node)] = block
        self._modules_in_order = [self.blocks[_module_name(node)] for node in self.order]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs: list[torch.Tensor] = []
        for block, parent in zip(self._modules_in_order, self.parent_index, strict=True):
            outputs.append(block(images if parent is None else outputs[parent]))
        return tuple(outputs[index] for index in self.head_index)

    def block_states(self) -> dict[NodeId, BlockState]:
        return {node: {k: v.detach().clone() for k, v in self.blocks[_module_name(node)].state_dict().items()}
                for node in self.order}


def export_onnx(net: FusedNet, path: Path) -> Path:
    """Write ``net`` as an ONNX graph with input ``images`` and one ``logits_<task>`` output per task,
    dynamic in the batch dimension; written to a temporary name and renamed."""
    sig = net.graph.block(net.order[0])
    example = torch.zeros((1, *sig.in_shape), dtype=torch.float32)
    outputs = [onnx_output(task) for task in net.graph.tasks]
    partial = path.with_name(f".{path.name}.partial")
    axes = {name: {0: "batch"} for name in [ONNX_INPUT, *outputs]}
    torch.onnx.export(net.eval(), (example,), str(partial), dynamo=False, input_names=[ONNX_INPUT],
                      output_names=outputs, dynamic_axes=axes, opset_version=17)
    partial.replace(path)
    return path

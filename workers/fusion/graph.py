"""Fusion graphs: several task models' block chains merged into one tree that computes shared blocks once.

GMorph (EuroSys '24) accelerates several DNNs that read the same input by sharing blocks between them. This
module is its graph representation, pure data with no torch: each task model is a chain of blocks with known
input and output shapes (:class:`TaskChain`); a :class:`FusionGraph` is a tree over those blocks, rooted at the
input, whose leaves are the tasks' heads. A node is named by the task model and block index it came from
(:data:`NodeId`), which also says whose trained weights seed it.

The one mutation is :class:`Share`: move the subtree below ``node`` under ``onto``, a block of another task's
path whose output has the shape ``node`` reads. Every task that passed through ``node`` then computes
``onto``'s chain instead of its own prefix, whose now unused blocks are dropped: the sharing point is
``onto`` and its owner's weights seed the shared blocks. Mutations keep the graph a tree whose every edge
joins matching shapes (:meth:`FusionGraph.validate`), so any sequence of them is a graph that can be built
and fine-tuned. The search (:mod:`~paretoserve.workers.fusion.search`) applies them at random.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

NodeId = tuple[str, int]
"""(task, block index): the block of that task's original model the node was created from."""


class FusionGraphError(ValueError):
    """A graph or chain that cannot be built: the message names the node or the field."""


@dataclass(frozen=True)
class BlockSig:
    """What a block computes, as far as fusion cares: its kind, its parameters and its tensor shapes
    (per sample, without the batch dimension)."""

    kind: str
    """``conv`` (3x3 convolution, ReLU, optional 2x2 max-pool) or ``head`` (flatten, hidden layer, logits)."""
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: tuple[int, ...]
    """``(out_channels, pool)`` for a conv block, ``(hidden, classes)`` for a head."""


@dataclass(frozen=True)
class TaskChain:
    """One task model as a chain of blocks from the input to its head (the last block)."""

    task: str
    blocks: tuple[BlockSig, ...]

    def __post_init__(self) -> None:
        if not self.blocks or self.blocks[-1].kind != "head":
            raise FusionGraphError(f"task {self.task!r}: a chain must end with a head block")
        for index, (before, after) in enumerate(zip(self.blocks, self.blocks[1:], strict=False)):
            if before.out_shape != after.in_shape:
                raise FusionGraphError(f"task {self.task!r}: block {index} gives {before.out_shape}, "
                                       f"block {index + 1} reads {after.in_shape}")
        if any(block.kind == "head" for block in self.blocks[:-1]):
            raise FusionGraphError(f"task {self.task!r}: only the last block may be a head")


@dataclass(frozen=True)
class Share:
    """Move the subtree below ``node`` under ``onto``: its tasks then share ``onto``'s chain."""

    node: NodeId
    onto: NodeId


@dataclass(frozen=True)
class FusionGraph:
    """A tree over the tasks' blocks. ``parents`` maps every node to its parent (``None``: the input).

    Construct with :meth:`unfused` and :meth:`apply`; both return validated graphs."""

    chains: tuple[TaskChain, ...]
    parents: tuple[tuple[NodeId, NodeId | None], ...]
    """Sorted (node, parent) pairs: equal graphs compare and hash equal."""

    @classmethod
    def unfused(cls, chains: Iterable[TaskChain]) -> FusionGraph:
        """Every task on its own: the original models side by side."""
        chains = tuple(chains)
        names = [chain.task for chain in chains]
        if len(set(names)) != len(names) or len(names) < 1:
            raise FusionGraphError(f"tasks must be one or more unique names, got {names}")
        parents: dict[NodeId, NodeId | None] = {}
        for chain in chains:
            for index in range(len(chain.blocks)):
                parents[(chain.task, index)] = (chain.task, index - 1) if index else None
        return cls.from_parents(chains, parents)

    @classmethod
    def from_parents(cls, chains: tuple[TaskChain, ...], parents: Mapping[NodeId, NodeId | None]) -> FusionGraph:
        """The graph with these parents, validated (raises :class:`FusionGraphError`)."""
        graph = cls(chains=chains, parents=tuple(sorted(parents.items(), key=lambda item: item[0])))
        graph.validate()
        return graph

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(chain.task for chain in self.chains)

    @cached_property
    def _parent(self) -> dict[NodeId, NodeId | None]:
        return dict(self.parents)

    @cached_property
    def _chain(self) -> dict[str, TaskChain]:
        return {chain.task: chain for chain in self.chains}

    def parents_of(self, node: NodeId) -> NodeId | None:
        """The node ``node`` reads from (``None``: the input)."""
        return self._parent[node]

    def block(self, node: NodeId) -> BlockSig:
        task, index = node
        try:
            return self._chain[task].blocks[index]
        except (KeyError, IndexError):
            raise FusionGraphError(f"node {node}: no such block in the task chains") from None

    def head(self, task: str) -> NodeId:
        return (task, len(self._chain[task].blocks) - 1)

    def path(self, task: str) -> tuple[NodeId, ...]:
        """The nodes task ``task`` computes, from the input to its head."""
        nodes: list[NodeId] = []
        current: NodeId | None = self.head(task)
        while current is not None:
            nodes.append(current)
            current = self._parent[current]
        return tuple(reversed(nodes))

    @cached_property
    def tasks_through(self) -> dict[NodeId, frozenset[str]]:
        """Node -> the tasks whose path computes it."""
        through: dict[NodeId, set[str]] = {node: set() for node in self._parent}
        for task in self.tasks:
            for node in self.path(task):
                through[node].add(task)
        return {node: frozenset(tasks) for node, tasks in through.items()}

    def nodes(self) -> tuple[NodeId, ...]:
        """Every node, parents before children (depth, then name): the order a fused module computes them."""
        depth: dict[NodeId, int] = {}
        for task in self.tasks:
            for level, node in enumerate(self.path(task)):
                depth[node] = level
        return tuple(sorted(depth, key=lambda node: (depth[node], node)))

    def shared_nodes(self) -> tuple[NodeId, ...]:
        return tuple(node for node in self.nodes() if len(self.tasks_through[node]) > 1)

    def validate(self) -> None:
        """Raise :class:`FusionGraphError` unless this is a tree with matching shapes and one head per task."""
        for node, parent in self.parents:
            block = self.block(node)
            if parent is None:
                if block.in_shape != self.chains[0].blocks[0].in_shape:
                    raise FusionGraphError(f"node {node} reads {block.in_shape} but sits on the input "
                                           f"{self.chains[0].blocks[0].in_shape}")
                continue
            if parent not in self._parent:
                raise FusionGraphError(f"node {node}: parent {parent} is not in the graph")
            if self.block(parent).kind == "head":
                raise FusionGraphError(f"node {node}: parent {parent} is a head")
            if self.block(parent).out_shape != block.in_shape:
                raise FusionGraphError(f"node {node} reads {block.in_shape}, parent {parent} gives "
                                       f"{self.block(parent).out_shape}")
        for task in self.tasks:
            if self.head(task) not in self._parent:
                raise FusionGraphError(f"task {task!r}: its head {self.head(task)} is not in the graph")
            seen: set[NodeId] = set()
            current: NodeId | None = self.head(task)
            while current is not None:
                if current in seen:
                    raise FusionGraphError(f"task {task!r}: its path has a cycle at {current}")
                seen.add(current)
                current = self._parent[current]
        unused = [node for node, tasks in self.tasks_through.items() if not tasks]
        if unused:
            raise FusionGraphError(f"nodes {unused} are on no task's path")
        heads = {self.head(task) for task in self.tasks}
        for node, tasks in self.tasks_through.items():
            if node in heads and len(tasks) != 1:
                raise FusionGraphError(f"head {node} is computed for {sorted(tasks)}: heads are never shared")

    def _subtree(self, node: NodeId) -> set[NodeId]:
        """``node`` and every node below it."""
        below: set[NodeId] = set()
        for task in self.tasks_through[node]:
            path = self.path(task)
            below.update(path[path.index(node):])
        return below

    def _ancestors(self, node: NodeId) -> set[NodeId]:
        path = self.path(next(iter(self.tasks_through[node])))
        return set(path[:path.index(node)])

    def share_moves(self) -> tuple[Share, ...]:
        """Every valid :class:`Share`, in a fixed order (what the search samples from)."""
        moves: list[Share] = []
        nodes = self.nodes()
        for node in nodes:
            block = self.block(node)
            below = self._subtree(node)
            mine = self.tasks_through[node]
            above = self._ancestors(node)
            for onto in nodes:
                if (onto in below or onto in above or self.block(onto).kind == "head"
                        or self.block(onto).out_shape != block.in_shape
                        or not (self.tasks_through[onto] - mine)):
                    continue
                moves.append(Share(node=node, onto=onto))
        return tuple(moves)

    def apply(self, move: Share) -> FusionGraph:
        """The graph after ``move`` (validated; raises :class:`FusionGraphError` for an invalid move)."""
        if move.node not in self._parent or move.onto not in self._parent:
            raise FusionGraphError(f"{move}: both nodes must be in the graph")
        if move.onto in self._subtree(move.node) or move.onto in self._ancestors(move.node):
            raise FusionGraphError(f"{move}: {move.onto} lies on a path through {move.node}")
        if self.block(move.onto).kind == "head":
            raise FusionGraphError(f"{move}: {move.onto} is a head (heads are never shared)")
        if self.block(move.onto).out_shape != self.block(move.node).in_shape:
            raise FusionGraphError(f"{move}: {move.node} reads {self.block(move.node).in_shape}, "
                                   f"{move.onto} gives {self.block(move.onto).out_shape}")
        if not (self.tasks_through[move.onto] - self.tasks_through[move.node]):
            raise FusionGraphError(f"{move}: {move.onto} serves no task that {move.node} does not")
        parents = dict(self._parent)
        parents[move.node] = move.onto
        graph = FusionGraph(chains=self.chains, parents=tuple(sorted(parents.items(), key=lambda item: item[0])))
        used = {node for task in self.tasks for node in graph.path(task)}
        return FusionGraph.from_parents(self.chains, {node: parent for node, parent in parents.items() if node in used})

    @property
    def key(self) -> str:
        """A short stable name of the graph (its parent map), for caches and variant names."""
        text = ";".join(f"{n[0]}.{n[1]}<{'in' if p is None else f'{p[0]}.{p[1]}'}" for n, p in self.parents)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def cost(self, block_cost: Mapping[NodeId, float]) -> float:
        """Sum of the nodes' costs: on one CPU stream a fused graph computes each node once, in turn."""
        return sum(block_cost[node] for node in self._parent)

    def describe(self) -> str:
        """Which blocks are shared by which tasks, e.g. ``digit.0-3 -> digit,parity``; ``unfused`` if none."""
        groups: dict[frozenset[str], list[NodeId]] = {}
        for node in self.shared_nodes():
            groups.setdefault(self.tasks_through[node], []).append(node)
        if not groups:
            return "unfused"
        parts = []
        for tasks, nodes in sorted(groups.items(), key=lambda item: (-len(item[0]), sorted(item[0]))):
            owners = sorted({task for task, _ in nodes})
            blocks = ",".join(f"{owner}.{min(i for t, i in nodes if t == owner)}-"
                              f"{max(i for t, i in nodes if t == owner)}" for owner in owners)
            parts.append(f"{blocks} -> {','.join(sorted(tasks))}")
        return "; ".join(parts)

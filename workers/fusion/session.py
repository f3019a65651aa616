"""One fusion spec's working state on disk: trained task models, block latencies, evaluated candidates.

Training the task models and fine-tuning candidates are the expensive steps, so everything is cached in a
directory keyed by what determines it (the data, the tasks and the fine-tuning settings; not the budget):
``tasks/`` holds each task model's weights and accuracies, ``mtl.pt`` the all-shared baseline's,
``blocks-b<B>.json`` the block latencies, ``candidates/theta-<θ>/<base>-<key>.json`` every evaluated graph by the
graph it was fine-tuned from (and ``<base>-<key>.pt`` its fine-tuned weights when it met θ). A search run again
with the same spec and seed replays the same candidates from the cache in seconds and goes on where the last run
stopped: that is how a search is resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from paretoserve.workers.fusion.data import FusionData, load_fusion_data
from paretoserve.workers.fusion.graph import FusionGraph, NodeId
from paretoserve.workers.fusion.latency import block_latencies
from paretoserve.workers.fusion.mtl import MtlResult, all_shared_graph, train_all_shared
from paretoserve.workers.fusion.nets import BlockState, FusedNet, TaskNet, chain_of
from paretoserve.workers.fusion.spec import FusionSpec
from paretoserve.workers.fusion.training import (
    TrainedTask,
    fine_tune,
    seed_for,
    teacher_logits,
    train_task,
)

CACHE_ENV = "PARETOSERVE_FUSION_CACHE"


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "paretoserve" / "fusion"))


def spec_fingerprint(spec: FusionSpec) -> str:
    """What determines trained models and candidate results (the search's budget and seed do not)."""
    search = spec.spec.search
    key = {"data": spec.spec.data.model_dump(), "tasks": [t.model_dump(mode="json") for t in spec.spec.tasks],
           "fineTune": [search.fine_tune_epochs, search.learning_rate, search.learning_curve_filter,
                        search.seed], "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _write_json(path: Path, payload: Any) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(payload, indent=1, sort_keys=True))
    partial.replace(path)


@dataclass(frozen=True)
class Candidate:
    """One evaluated fused graph (validation accuracies; ``meets`` = every drop within θ)."""

    key: str
    describe: str
    base: str
    val_accuracy: tuple[float, ...]
    drops: tuple[float, ...]
    stop: str
    epochs: int
    seconds: float
    estimated_ms: float
    meets: bool

    @property
    def max_drop(self) -> float:
        return self.drops[-1]

    @property
    def cache_id(self) -> str:
        """Its name in the cache: the graph and the graph it was fine-tuned from."""
        return f"{self.base}-{self.key}"


def candidate_from_json(saved: Mapping[str, Any]) -> Candidate:
    """A :class:`Candidate` from its JSON form (a cache entry or a report's ``candidates`` row)."""
    fields = {name: saved[name] for name in Candidate.__dataclass_fields__}
    return Candidate(**{**fields, "val_accuracy": tuple(fields["val_accuracy"]), "drops": tuple(fields["drops"])})


class FusionSession:
    """The trained tasks, data, block costs and candidate cache of one spec (see the module doc)."""

    def __init__(self, spec: FusionSpec, cache_root: Path | None = None) -> None:
        self.spec = spec
        self.tasks = tuple(spec.spec.tasks)
        self.root = (cache_root or default_cache_root()) / f"{spec.metadata.name}-{spec_fingerprint(spec)}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.data: FusionData = load_fusion_data(spec.spec.data)
        self.chains = tuple(chain_of(task, self.data.input_shape) for task in self.tasks)
        self.unfused = FusionGraph.unfused(self.chains)
        self.trained = tuple(self._trained(index) for index in range(len(self.tasks)))
        self.baseline = tuple(t.val_accuracy for t in self.trained)
        self.original_states: dict[NodeId, BlockState] = {}
        for trained in self.trained:
            self.original_states.update(trained.net.block_states())
        self._teachers: list[torch.Tensor] | None = None
        self._block_ms: dict[int, dict[NodeId, float]] = {}

    def _trained(self, index: int) -> TrainedTask:
        task = self.tasks[index]
        folder = self.root / "tasks"
        folder.mkdir(exist_ok=True)
        weights, meta = folder / f"{task.name}.pt", folder / f"{task.name}.json"
        if weights.is_file() and meta.is_file():
            net = TaskNet(self.chains[index])
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            saved = json.loads(meta.read_text())
            return TrainedTask(task=task, net=net.eval(), val_accuracy=saved["valAccuracy"],
                               test_accuracy=saved["testAccuracy"], seconds=saved["seconds"])
        trained = train_task(task, self.data)
        torch.save(trained.net.state_dict(), folder / f".{task.name}.pt.partial")
        (folder / f".{task.name}.pt.partial").replace(weights)
        _write_json(meta, {"valAccuracy": trained.val_accuracy, "testAccuracy": trained.test_accuracy,
                           "seconds": trained.seconds})
        return trained

    @property
    def teachers(self) -> list[torch.Tensor]:
        if self._teachers is None:
            self._teachers = teacher_logits(self.trained, self.data.train)
        return self._teachers

    def all_shared(self) -> MtlResult:
        """The all-shared MTL baseline (trained once, then read from ``mtl.pt``): the first task's convolutions,
        every task's head, trained jointly for the longest task recipe at the first task's learning rate."""
        weights, meta = self.root / "mtl.pt", self.root / "mtl.json"
        graph = all_shared_graph(self.chains)
        if weights.is_file() and meta.is_file():
            net = FusedNet(graph)
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            saved = json.loads(meta.read_text())
            return MtlResult(net=net.eval(), val_accuracy=tuple(saved["valAccuracy"]),
                             test_accuracy=tuple(saved["testAccuracy"]), seconds=saved["seconds"])
        first = self.tasks[0].training
        result = train_all_shared(self.chains, self.tasks, self.data, epochs=max(t.training.epochs for t in self.tasks),
                                  learning_rate=first.learning_rate, seed=first.seed)
        torch.save(result.net.state_dict(), self.root / ".mtl.pt.partial")
        (self.root / ".mtl.pt.partial").replace(weights)
        _write_json(meta, {"valAccuracy": result.val_accuracy, "testAccuracy": result.test_accuracy,
                           "seconds": result.seconds})
        return result

    def block_ms(self, batch: int) -> dict[NodeId, float]:
        """The block latency profile at ``batch`` (measured once, then read from the cache)."""
        if batch not in self._block_ms:
            path = self.root / f"blocks-b{batch}.json"
            if path.is_file():
                saved = json.loads(path.read_text())
                self._block_ms[batch] = {(task, int(index)): ms for task, index, ms in saved}
            else:
                measured = block_latencies(self.unfused, batch)
                _write_json(path, [[task, index, ms] for (task, index), ms in sorted(measured.items())])
                self._block_ms[batch] = measured
        return self._block_ms[batch]

    def estimate_ms(self, graph: FusionGraph, batch: int | None = None) -> float:
        return graph.cost(self.block_ms(batch or self.spec.spec.search.batch_sizes[0]))

    def _folder(self, theta: float) -> Path:
        folder = self.root / "candidates" / f"theta-{theta:g}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def cached(self, graph: FusionGraph, base: str, theta: float) -> Candidate | None:
        path = self._folder(theta) / f"{base}-{graph.key}.json"
        if not path.is_file():
            return None
        saved = candidate_from_json(json.loads(path.read_text()))
        return replace(saved, estimated_ms=self.estimate_ms(graph))  # the current block profile's estimate

    def states(self, candidate: Candidate, theta: float) -> dict[NodeId, BlockState]:
        """The fine-tuned weights of a candidate that met θ (the unfused graph: the task models')."""
        if candidate.key == self.unfused.key:
            return self.original_states
        saved: dict[str, BlockState] = torch.load(self._folder(theta) / f"{candidate.cache_id}.pt",
                                                  map_location="cpu", weights_only=True)
        return {(name.rsplit(".", 1)[0], int(name.rsplit(".", 1)[1])): state for name, state in saved.items()}

    def evaluate(self, graph: FusionGraph, base: Candidate, theta: float) -> Candidate:
        """Fine-tune ``graph`` from the weights of candidate ``base`` (or read it from the cache)."""
        hit = self.cached(graph, base.key, theta)
        if hit is not None:
            return hit
        search = self.spec.spec.search
        net = FusedNet(graph, {**self.original_states, **self.states(base, theta)})
        result = fine_tune(net, self.teachers, self.data, self.tasks, self.baseline, theta=theta,
                           epochs=search.fine_tune_epochs, learning_rate=search.learning_rate,
                           seed=seed_for(search.seed, graph.key), learning_curve_filter=search.learning_curve_filter)
        candidate = Candidate(key=graph.key, describe=graph.describe(), base=base.key, val_accuracy=result.val_accuracy,
                              drops=result.drops, stop=result.stop, epochs=result.epochs, seconds=result.seconds,
                              estimated_ms=self.estimate_ms(graph), meets=result.stop == "met")
        folder = self._folder(theta)
        if candidate.meets:
            states = {f"{task}.{index}": state for (task, index), state in result.net.block_states().items()}
            torch.save(states, folder / f".{candidate.cache_id}.pt.partial")
            (folder / f".{candidate.cache_id}.pt.partial").replace(folder / f"{candidate.cache_id}.pt")
        _write_json(folder / f"{candidate.cache_id}.json", {**candidate.__dict__, "parents": [
            [list(node), None if parent is None else list(parent)] for node, parent in graph.parents]})
        return candidate

    def graph_of(self, candidate: Candidate, theta: float) -> FusionGraph:
        """The graph of a cached candidate (or the unfused graph)."""
        if candidate.key == self.unfused.key:
            return self.unfused
        saved = json.loads((self._folder(theta) / f"{candidate.cache_id}.json").read_text())
        parents = {(n[0], int(n[1])): None if p is None else (p[0], int(p[1])) for n, p in saved["parents"]}
        return FusionGraph.from_parents(self.chains, parents)

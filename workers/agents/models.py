"""The aggregator agents of the example workflow: deterministic training on the digits, and their cache.

An agent workflow needs models that read what other agents answered, and the catalog's classifiers read only
the image. This module trains the aggregators the example workflow (:data:`~.workflow.WORKFLOW`) runs:

- ``refine-small`` / ``refine-large``: the image (64) and one parent's probabilities (10) -> 10 logits;
- ``judge-small`` / ``judge-large``: the probabilities of the judge's five parents (50) -> 10 logits.

Their training rows are the tensors the router will send them (:func:`~.workflow.node_features`), built on the
training split with every upstream node running a variant drawn at random per sample (a refine model's parent
is any catalog classifier; the judge's parents run the workflow with random variants, refine models included),
so a model works whichever variants the planner picks upstream. Held-out accuracy is measured the same way
on the test split. Training is seeded and single-threaded (the catalog's ``single_thread`` and training loop,
:mod:`paretoserve.workers.models.training`) and takes seconds.

The cache is ``<root>/<fingerprint>/<model>/{weights.pt,model.onnx,metadata.json}`` with ``manifest.json``
written last, under ``${PARETOSERVE_CACHE:-~/.cache/paretoserve}/agents`` by default; the fingerprint hashes
the recipes, the workflow, this code's version, the catalog version (weights and split) and torch's minor
version. A version is built under a temporary name and renamed into place, as the catalog is
(:mod:`paretoserve.workers.models.cache`). ``model.onnx`` (input ``images``, output ``logits``, dynamic batch)
and ``metadata.json`` are what a Triton entry needs
(:func:`~paretoserve.workers.triton.repository.spec_from_cached_variant`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from paretoserve.workers.agents.workflow import (
    CLASSIFIERS,
    NUM_CLASSES,
    REQUEST,
    WORKFLOW,
    Engine,
    Floats,
    Node,
    feature_count,
    fixed_picks,
    node_features,
    random_picks,
    run_workflow,
)
from paretoserve.workers.models.cache import (
    DIGIT_LABELS,
    ModelCatalog,
    build_into_place,
    default_cache_root,
    ensure_trained,
)
from paretoserve.workers.models.runtime import METADATA_FILE, WEIGHTS_FILE
from paretoserve.workers.models.training import (
    DigitsSplit,
    SplitSpec,
    TrainingRecipe,
    fit,  # the catalog's seeded AdamW + one-cycle loop: the aggregators learn exactly as the classifiers do
    load_split,
    single_thread,
)
from paretoserve.workers.triton.repository import ONNX_FILE
from paretoserve.workers.triton.variant_engine import ONNX_INPUT, ONNX_OUTPUT, OnnxVariant

AGENTS_CODE_VERSION = 1
"""Bump when training changes in a way the recipes and the workflow do not capture."""
MANIFEST_FILE = "manifest.json"
TRAIN_STREAM, TEST_STREAM = 0, 1
"""Random streams of the parents' variant draws: training rows, held-out rows."""


@dataclass(frozen=True)
class AgentRecipe:
    """How one aggregator is trained: an MLP with one hidden layer on ``draws`` draws of each training image."""

    name: str
    kind: Literal["refine", "judge"]
    hidden: int
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    draws: int = 4
    seed: int = 0


RECIPES: tuple[AgentRecipe, ...] = (
    AgentRecipe("refine-small", "refine", hidden=8),
    AgentRecipe("refine-large", "refine", hidden=128),
    AgentRecipe("judge-small", "judge", hidden=32),
    AgentRecipe("judge-large", "judge", hidden=128),
)
"""In training order: the judges' parents include the refine models. ``refine-small`` has 8 hidden units: with 32
it was about as accurate as ``refine-large`` (no trade-off for the planner); with 8 it leans on its parent."""
AGGREGATORS = tuple(recipe.name for recipe in RECIPES)

REFINE_PARENT = Node("parent", (), (REQUEST,), CLASSIFIERS)
"""A refine model's parent while it learns: any catalog classifier."""


def training_graph(recipe: AgentRecipe) -> tuple[tuple[Node, ...], Node]:
    """(the upstream nodes, the node the model serves) of ``recipe``'s training rows."""
    if recipe.kind == "refine":
        return (REFINE_PARENT,), Node(recipe.name, (REFINE_PARENT.name,), (REQUEST, REFINE_PARENT.name), (recipe.name,))
    return WORKFLOW[:-1], WORKFLOW[-1]  # the judge, the fan-in, is the workflow's last node


class AgentMlp(nn.Module):
    """Flattened input rows -> hidden layer (ReLU) -> class logits."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, hidden)
        self.out = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.out(torch.relu(self.hidden(rows.flatten(1))))
        return logits


def onnx_engine(path: Path, input_shape: Sequence[int]) -> Engine:
    """An ONNX graph in ONNX Runtime on one thread, as the Triton backend runs it, on flat rows reshaped to the
    model's ``input_shape`` (a classifier reads ``$request`` alone: its 64 features are the 8x8 image)."""
    variant = OnnxVariant(path, threads=1)
    shape = tuple(input_shape)

    def run(rows: Floats) -> Floats:
        return variant.predict(rows.reshape(len(rows), *shape)).probs

    return run


def draw_rows(recipe: AgentRecipe, engines: Mapping[str, Engine], images: Floats, labels: npt.NDArray[np.int64],
              stream: int) -> tuple[Floats, npt.NDArray[np.int64]]:
    """``recipe.draws`` input rows per image, each with the upstream variants drawn at random per sample."""
    upstream, target = training_graph(recipe)
    rng = np.random.default_rng([recipe.seed, stream])
    rows = [node_features(target, images, run_workflow(upstream, engines, images,
                                                       random_picks(upstream, len(images), rng)))
            for _ in range(recipe.draws)]
    return np.concatenate(rows), np.tile(labels, recipe.draws)


def accuracy(engine: Engine, rows: Floats, labels: npt.NDArray[np.int64]) -> float:
    return float((engine(rows).argmax(axis=1) == labels).mean())


def export_graph(module: nn.Module, path: Path, features: int) -> Path:
    """``module`` as an ONNX graph (input ``images`` of ``features`` per row, output ``logits``, dynamic batch),
    written to a temporary name and renamed."""
    partial = path.with_name(f".{path.name}.partial")
    torch.onnx.export(module.eval(), (torch.zeros((1, features)),), str(partial), dynamo=False,
                      input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                      dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}}, opset_version=17)
    partial.replace(path)
    return path


def catalog_split(catalog: ModelCatalog) -> DigitsSplit:
    """The train/test split the catalog was trained and measured on."""
    return load_split(SplitSpec(**catalog[CLASSIFIERS[0]].split))  # type: ignore[arg-type]  # asdict(SplitSpec)


def fingerprint(catalog: ModelCatalog, recipes: Sequence[AgentRecipe] = RECIPES) -> str:
    """Short hash of everything that determines the aggregators' weights (see the module doc)."""
    identity = {"code": AGENTS_CODE_VERSION, "catalog": catalog.version, "recipes": [asdict(r) for r in recipes],
                "workflow": [asdict(n) for n in (REFINE_PARENT, *WORKFLOW)],
                "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2])}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AgentModels:
    """The cached aggregators of one fingerprint, beside the catalog whose classifiers they read."""

    directory: Path
    fingerprint: str
    catalog: ModelCatalog
    metadata: Mapping[str, Mapping[str, Any]]
    trained: bool
    """Whether this call trained them (False: read from the cache)."""

    def model_dir(self, model: str) -> Path:
        """The folder with ``model.onnx`` and ``metadata.json`` of an aggregator or a catalog classifier."""
        return self.directory / model if model in self.metadata else self.catalog.variant_dir(model)

    def input_shape(self, model: str) -> tuple[int, ...]:
        if model in self.metadata:
            return tuple(self.metadata[model]["input_shape"])
        return self.catalog[model].input_shape

    def heldout_accuracy(self, model: str) -> float:
        """Test-split accuracy (an aggregator's with its parents drawn as in training)."""
        if model in self.metadata:
            return float(self.metadata[model]["heldout_accuracy"])
        return self.catalog[model].heldout_accuracy

    def engines(self) -> dict[str, Engine]:
        """Every classifier and aggregator, in ONNX Runtime."""
        return {model: onnx_engine(self.model_dir(model) / ONNX_FILE, self.input_shape(model))
                for model in (*CLASSIFIERS, *self.metadata)}

    def split(self) -> DigitsSplit:
        return catalog_split(self.catalog)


def _train_one(recipe: AgentRecipe, engines: Mapping[str, Engine], split: DigitsSplit, folder: Path,
               version: str) -> dict[str, Any]:
    """Train ``recipe``, write its weights, ONNX graph and metadata into ``folder``; return the metadata."""
    started = time.perf_counter()
    _, target = training_graph(recipe)
    features = feature_count(target)
    x_train, y_train = draw_rows(recipe, engines, split.x_train, split.y_train, TRAIN_STREAM)
    with single_thread():
        torch.manual_seed(recipe.seed)
        module = AgentMlp(features, recipe.hidden)
        fit(module, torch.from_numpy(x_train), torch.from_numpy(y_train),
             TrainingRecipe(recipe.name, "agent_mlp", epochs=recipe.epochs, batch_size=recipe.batch_size,
                            learning_rate=recipe.learning_rate, weight_decay=recipe.weight_decay, seed=recipe.seed))
        seconds = time.perf_counter() - started
        folder.mkdir()
        torch.save(module.state_dict(), folder / WEIGHTS_FILE)
        export_graph(module, folder / ONNX_FILE, features)
    x_test, y_test = draw_rows(recipe, engines, split.x_test, split.y_test, TEST_STREAM)
    engine = onnx_engine(folder / ONNX_FILE, (features,))
    metadata = {"variant": recipe.name, "kind": recipe.kind, "version": version, "input_shape": [features],
                "class_labels": list(DIGIT_LABELS), "inputs": list(target.inputs),
                "heldout_accuracy": accuracy(engine, x_test, y_test), "heldout_size": len(y_test),
                "train_accuracy": accuracy(engine, x_train, y_train), "train_size": len(y_train),
                "training_seconds": round(seconds, 3), "recipe": asdict(recipe), "torch_version": torch.__version__,
                "input_dtype": "float32"}
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return metadata


def _open(directory: Path, catalog: ModelCatalog, *, trained: bool) -> AgentModels:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    metadata = {name: json.loads((directory / name / METADATA_FILE).read_text()) for name in manifest["models"]}
    return AgentModels(directory=directory, fingerprint=manifest["fingerprint"], catalog=catalog,
                       metadata=metadata, trained=trained)


def ensure_agents(cache_root: Path | None = None, *, catalog: ModelCatalog | None = None,
                  recipes: Sequence[AgentRecipe] = RECIPES,
                  progress: Callable[[str], None] | None = None) -> AgentModels:
    """The aggregators for ``recipes`` over ``catalog`` (default: the cached catalog): read from the cache
    under ``cache_root`` (default ``${PARETOSERVE_CACHE:-~/.cache/paretoserve}/agents``), or trained once."""
    catalog = catalog or ensure_trained()
    key = fingerprint(catalog, recipes)
    root = cache_root or default_cache_root() / "agents"
    final = root / key

    def build(staging: Path) -> None:
        split = catalog_split(catalog)
        engines = {v: onnx_engine(catalog.variant_dir(v) / ONNX_FILE, catalog[v].input_shape) for v in CLASSIFIERS}
        for recipe in recipes:
            saved = _train_one(recipe, engines, split, staging / recipe.name, key)
            engines[recipe.name] = onnx_engine(staging / recipe.name / ONNX_FILE, saved["input_shape"])
            if progress is not None:
                progress(f"trained {recipe.name}: held-out accuracy {saved['heldout_accuracy']:.4f} "
                         f"in {saved['training_seconds']:.1f} s")
        (staging / MANIFEST_FILE).write_text(json.dumps({"fingerprint": key, "models": [r.name for r in recipes]}))

    return _open(final, catalog, trained=build_into_place(final, build))


def workflow_accuracy(assignment: Mapping[str, str], models: AgentModels | None = None,
                      nodes: Sequence[Node] = WORKFLOW) -> float:
    """The last node's (the judge's) exact accuracy on the test split when every node of ``nodes`` runs the model
    ``assignment`` names (e.g. ``{"triage": "tiny_linear", ..., "judge": "judge-large"}``), offline in ONNX
    Runtime on the tensors the router would send."""
    models = models or ensure_agents()
    split = models.split()
    probs = run_workflow(nodes, models.engines(), split.x_test, fixed_picks(nodes, assignment, len(split.y_test)))
    return float((probs[nodes[-1].name].argmax(axis=1) == split.y_test).mean())

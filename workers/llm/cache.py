"""Content-addressed cache of the trained token-generating models: train once, then read.

Generation workers, the tests and the planner's profiles need the same weights and the same measured
quality, and training (minutes on one CPU thread) must happen at most once per recipe set. The cache is
``${PARETOSERVE_CACHE:-~/.cache/paretoserve}/llm/<fingerprint>/<model>/{weights.npz,metadata.json}`` with
``<fingerprint>/manifest.json`` written last; the fingerprint hashes the recipes, the task spec, this code's
version and torch's minor version. A version is built under a temporary name and renamed into place, as the
digits catalog is (:mod:`paretoserve.workers.models.cache`), so readers never see half a cache. ``weights.npz``
is all the numpy engine needs (its config travels inside); ``metadata.json`` records exact match overall
and per difficulty bucket, parameters, KV-cache bytes per token, training seconds and engine step timings.

The prompt scorer the router asks (:mod:`.scorer`) is fitted on the light model's answers, so it is cached next
to the models by :func:`ensure_scorer`: ``<root>/llm-scorer/<key>/{scorer.json,manifest.json}``, the key hashing
the models' fingerprint, the light model and the fit (:func:`~.routing.fit_scorer` on the first
:data:`~.routing.SCORER_TRAIN_PROMPTS` training prompts). The fit is deterministic (greedy answers, full-batch
gradient descent from zero), so every worker image and test serves the weights ``bench llm``'s rows were measured
with. The multimodal family's scorer (``mm-scorer``) is cached the same way by :func:`ensure_mm_scorer`, under
``<root>/llm-mm-scorer/<key>/``: :func:`~.mm_routing.fit_mm_scorer` on ``mm-low``'s greedy answers (numpy engine,
one BLAS thread as served) to the first :data:`~.mm_routing.SCORER_TRAIN_PROBLEMS` training problems of
:func:`~.multimodal.ensure_multimodal`'s models, whose rows ``bench mm`` measures with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from paretoserve.workers.llm.config import CachedModels, ModelConfig
from paretoserve.workers.llm.engine import NumpyLM, measure_timings
from paretoserve.workers.llm.mm_routing import SCORER_TRAIN_PROBLEMS, MultimodalDifficulty, fit_mm_scorer
from paretoserve.workers.llm.model import ArithLM, count_parameters, export_npz, load_npz
from paretoserve.workers.llm.multimodal import (
    DEFAULT_MM_TASK,
    MultimodalRecipe,
    MultimodalTaskSpec,
    ensure_multimodal,
    make_multimodal_splits,
)
from paretoserve.workers.llm.multimodal import RECIPES as MM_RECIPES
from paretoserve.workers.llm.routing import SCORER_TRAIN_PROMPTS, DifficultyScore, fit_scorer
from paretoserve.workers.llm.scorer import SCORER_FILE, load_mm_scorer, load_scorer
from paretoserve.workers.llm.tasks import DEFAULT_TASK, Problem, TaskSpec, make_splits
from paretoserve.workers.llm.tokenizer import VOCAB, decode, encode_prompt
from paretoserve.workers.llm.training import MAX_NEW_TOKENS, RECIPES, LMRecipe, TrainedLM, answers, train_model
from paretoserve.workers.models.cache import build_into_place, default_cache_root

LLM_CODE_VERSION = 1
"""Bump when training or evaluation changes in a way the recipes and the task spec do not capture."""
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.npz"
METADATA_FILE = "metadata.json"
AGREEMENT_PROMPTS = 200
"""Test prompts on which training checks that the numpy engine answers as the torch model does."""
SCORER_CODE_VERSION = 1
"""Bump when the scorer's features or fit change in a way its key does not capture."""


@dataclass(frozen=True)
class LLMCatalog(CachedModels):
    """The cached text models of one fingerprint."""

    def config(self, model: str) -> ModelConfig:
        return ModelConfig(**self.metadata[model]["config"])

    def engine(self, model: str) -> NumpyLM:
        """The torch-free engine of ``model``."""
        return NumpyLM.load(self.model_dir(model) / WEIGHTS_FILE)

    def torch_model(self, model: str) -> ArithLM:
        return load_torch(self.model_dir(model) / WEIGHTS_FILE)


def load_torch(weights: Path) -> ArithLM:
    """The torch model of an exported ``weights.npz``, in eval mode."""
    return load_npz(ArithLM, weights)


def fingerprint(recipes: Sequence[LMRecipe] = RECIPES, task: TaskSpec = DEFAULT_TASK) -> str:
    """Short hash of everything that determines the weights (see the module doc)."""
    identity = {"code": LLM_CODE_VERSION, "recipes": [asdict(recipe) for recipe in recipes], "task": asdict(task),
                "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2])}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _write_model(trained: TrainedLM, folder: Path, key: str, task: TaskSpec,
                 problems: Sequence[Problem]) -> dict[str, Any]:
    """Export ``trained`` into ``folder``, check the numpy engine against torch, write and return its metadata."""
    folder.mkdir()
    weights = export_npz(trained.model, folder / WEIGHTS_FILE)
    engine = NumpyLM.load(weights)
    encoded = [encode_prompt(problem.prompt) for problem in problems]
    numpy_answers = [decode(tokens) for tokens in engine.generate(encoded, MAX_NEW_TOKENS)]
    torch_answers = answers(trained.model, problems)
    agreement = float(np.mean([ours == theirs for ours, theirs in zip(numpy_answers, torch_answers, strict=True)]))
    config = trained.recipe.config
    metadata: dict[str, Any] = {
        "model": config.name,
        "version": key,
        "config": asdict(config),
        "params": count_parameters(trained.model),
        "kv_bytes_per_token": config.kv_bytes_per_token(),
        "max_new_tokens": MAX_NEW_TOKENS,
        "vocab": list(VOCAB),
        "heldout_exact_match": trained.test.exact_match,
        "heldout_correct": trained.test.correct,
        "heldout_size": trained.test.size,
        "heldout_by_difficulty": trained.test.by,
        "heldout_bucket_sizes": trained.test.sizes,
        "validation_exact_match": trained.validation.exact_match,
        "train_size": trained.train_size,
        "training_seconds": round(trained.training_seconds, 3),
        "final_train_loss": round(trained.final_loss, 6),
        "engine_agreement": agreement,
        "engine_timings_ms": measure_timings(engine, encoded),
        "recipe": asdict(trained.recipe),
        "task": asdict(task),
        "torch_version": torch.__version__,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return metadata


def _open(directory: Path, *, trained: bool) -> LLMCatalog:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    metadata = {name: json.loads((directory / name / METADATA_FILE).read_text()) for name in manifest["models"]}
    return LLMCatalog(directory=directory, fingerprint=manifest["fingerprint"], metadata=metadata, trained=trained)


def ensure_llms(cache_root: Path | None = None, *, recipes: Sequence[LMRecipe] = RECIPES,
                task: TaskSpec = DEFAULT_TASK, progress: Callable[[str], None] | None = None) -> LLMCatalog:
    """The models of ``recipes`` on ``task``: read from ``<cache_root>/llm/<fingerprint>`` (default root
    ``${PARETOSERVE_CACHE:-~/.cache/paretoserve}``), or trained once and cached there."""
    key = fingerprint(recipes, task)
    root = (cache_root or default_cache_root()) / "llm"
    final = root / key

    def build(staging: Path) -> None:
        splits = make_splits(task)
        for recipe in recipes:
            trained = train_model(recipe, splits)
            saved = _write_model(trained, staging / recipe.name, key, task, splits.test[:AGREEMENT_PROMPTS])
            if progress is not None:
                progress(f"trained {recipe.name}: held-out exact match {saved['heldout_exact_match']:.4f} "
                         f"in {saved['training_seconds']:.1f} s")
        (staging / MANIFEST_FILE).write_text(json.dumps({"fingerprint": key, "models": [r.name for r in recipes]}))

    return _open(final, trained=build_into_place(final, build))


@dataclass(frozen=True)
class CachedFit:
    """A cached scorer fit: its weights file (what a scorer model serves) and provenance."""

    directory: Path
    key: str
    metadata: Mapping[str, Any]
    trained: bool
    """Whether this call fitted it (False: read from the cache)."""

    @property
    def weights_file(self) -> Path:
        return self.directory / SCORER_FILE


@dataclass(frozen=True)
class CachedScorer(CachedFit):
    """The cached prompt scorer of one light model of the text family."""

    def score(self) -> DifficultyScore:
        return load_scorer(self.weights_file)


@dataclass(frozen=True)
class CachedMMScorer(CachedFit):
    """The cached scorer of the multimodal family's light model (reads the question and the image)."""

    def score(self) -> MultimodalDifficulty:
        return load_mm_scorer(self.weights_file)


def _fit_once(folder: Path, identity: Mapping[str, Any],
              fit: Callable[[], tuple[Mapping[str, Any], str]]) -> tuple[Path, str, dict[str, Any], bool]:
    """``<folder>/<key>`` holding ``scorer.json`` (the weights ``fit()`` returns, with ``identity`` and what they
    were fitted on) and ``manifest.json``, fitted once and built into place; (directory, key, record, fitted)."""
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    final = folder / key

    def build(staging: Path) -> None:
        weights, fitted_on = fit()
        record = {**weights, **identity, "fittedOn": fitted_on}
        (staging / SCORER_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        (staging / MANIFEST_FILE).write_text(json.dumps({"key": key, **identity}))

    trained = build_into_place(final, build)
    return final, key, json.loads((final / SCORER_FILE).read_text()), trained


def ensure_scorer(cache_root: Path | None = None, *, light: str = "arith-small",
                  train_prompts: int = SCORER_TRAIN_PROMPTS, recipes: Sequence[LMRecipe] = RECIPES,
                  task: TaskSpec = DEFAULT_TASK) -> CachedScorer:
    """The difficulty score predicting that ``light`` fails a prompt, fitted on the first ``train_prompts`` training
    prompts (:func:`~.routing.fit_scorer`): read from ``<cache_root>/llm-scorer/<key>``, or fitted once and cached
    there (the models themselves by :func:`ensure_llms`, trained first if absent)."""
    catalog = ensure_llms(cache_root, recipes=recipes, task=task)
    max_new = int(catalog.metadata[light]["max_new_tokens"])
    identity = {"code": SCORER_CODE_VERSION, "llm": catalog.fingerprint, "light": light, "prompts": train_prompts,
                "maxNewTokens": max_new}

    def fit() -> tuple[Mapping[str, Any], str]:
        problems = list(make_splits(task).train[:train_prompts])
        score = fit_scorer(catalog.engine(light), problems, max_new)
        return score.to_json(), f"{len(problems)} training prompts (the greedy answers of {light})"

    return CachedScorer(*_fit_once((cache_root or default_cache_root()) / "llm-scorer", identity, fit))


def ensure_mm_scorer(cache_root: Path | None = None, *, light: str = "mm-low",
                     train_problems: int = SCORER_TRAIN_PROBLEMS, recipes: Sequence[MultimodalRecipe] = MM_RECIPES,
                     task: MultimodalTaskSpec = DEFAULT_MM_TASK) -> CachedMMScorer:
    """The multimodal difficulty score predicting that ``light`` fails a request (question and image), fitted on
    the first ``train_problems`` training problems (:func:`~.mm_routing.fit_mm_scorer`, on one BLAS thread as the
    engine is served): read from ``<cache_root>/llm-mm-scorer/<key>``, or fitted once and cached there (the models
    by :func:`~.multimodal.ensure_multimodal`, trained first if absent)."""
    catalog = ensure_multimodal(cache_root, recipes=recipes, task=task)
    max_new = int(catalog.metadata[light]["max_new_tokens"])
    identity = {"code": SCORER_CODE_VERSION, "multimodal": catalog.fingerprint, "light": light,
                "problems": train_problems, "maxNewTokens": max_new}

    def fit() -> tuple[Mapping[str, Any], str]:
        splits = make_multimodal_splits(task)
        problems = list(splits.train[:train_problems])
        with threadpool_limits(limits=1):
            score = fit_mm_scorer(catalog.engine(light), list(splits.pixels(problems)),
                                  [problem.prompt for problem in problems], [problem.answer for problem in problems],
                                  max_new)
        return score.to_json(), f"{len(problems)} training problems (the greedy answers of {light}, numpy engine)"

    return CachedMMScorer(*_fit_once((cache_root or default_cache_root()) / "llm-mm-scorer", identity, fit))

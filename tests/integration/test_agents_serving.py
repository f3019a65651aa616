"""The example agent workflow served by the REAL Triton behind the router executing its DAG.

Covers: the router's answers are the workflow's own (the judge's labels equal those of the whole workflow run
offline in ONNX Runtime on the tensors the router builds, for the same variant of every node), so each node
read what its ``inputs`` declare, joined in order; the two branches after ``triage`` run at the same time
(their spans in ``parameters.nodes`` overlap); a node whose model Triton does not serve fails the request with
an explicit error naming that node, and the other branches are not left running.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from paretoserve.planner.spec import ServingPipeline, load_pipeline_text
from paretoserve.workers.agents import WORKFLOW, AgentModels, ensure_agents
from paretoserve.workers.agents.export import write_repository
from paretoserve.workers.agents.workflow import fixed_picks, run_workflow
from paretoserve.workers.models import ModelCatalog
from paretoserve.workers.plan_rendering import router_config
from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import parse_config
from paretoserve.workers.runtime.serving import max_batch_size, model_specs, pipeline_models, running_triton
from paretoserve.workers.triton.server import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "digits-agents.yaml"
ROWS = 32


@pytest.fixture(scope="module")
def pipeline() -> ServingPipeline:
    return load_pipeline_text(EXAMPLE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def agents(catalog: ModelCatalog) -> AgentModels:
    return ensure_agents(catalog=catalog)


@pytest.fixture(scope="module")
def triton(pipeline: ServingPipeline, agents: AgentModels, catalog: ModelCatalog,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("agents-serving")
    repository = work / "repository"
    repository.mkdir()
    write_repository(agents, repository)
    specs = model_specs(pipeline_models(pipeline), catalog, max_batch=max_batch_size(pipeline),
                        repository=repository)
    with running_triton(specs, work / "triton") as server:
        yield server


@asynccontextmanager
async def router(pipeline: ServingPipeline, triton: TritonServer, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The router in process for ``pipeline``'s provisional routing (each stage's most accurate variant)."""
    models = {m.model for m in pipeline_models(pipeline)} | set(changes.get("extra_models", ()))
    raw = router_config(pipeline.metadata.name, pipeline.spec, {m: [f"http://{triton.http_url}"] for m in models},
                        None)
    for stage in raw["stages"]:
        stage["variants"] = changes.get("variants", {}).get(stage["name"], stage["variants"])
    apps = build_router(parse_config(raw), registry=CollectorRegistry(), admin_token="t")
    async with apps.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.data),
                                                 base_url="http://router", timeout=30) as client:
        yield client


def assignment(pipeline: ServingPipeline) -> dict[str, str]:
    """Each stage's most accurate variant's model: what the router runs before the first plan."""
    return {stage.name: max(stage.variants, key=stage.accuracy_of).triton_model for stage in pipeline.spec.stages}


def body(images: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "IMAGE", "shape": [len(images), 8, 8], "datatype": "FP32",
                        "data": [float(v) for v in images.ravel()]}]}


async def test_the_routers_answers_are_the_workflows_and_the_branches_overlap(
        pipeline: ServingPipeline, triton: TritonServer, agents: AgentModels) -> None:
    images = agents.split().x_test[:ROWS]
    chosen = assignment(pipeline)
    offline = run_workflow(WORKFLOW, agents.engines(), images, fixed_picks(WORKFLOW, chosen, ROWS))
    expected = offline["judge"].argmax(axis=1)
    async with router(pipeline, triton) as client:
        answer = await client.post("/v2/pipelines/digits-agents/infer", json=body(images))
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    labels = np.array(next(t for t in reply["outputs"] if t["name"] == "LABEL")["data"]).reshape(-1)
    # the same models on the same tensors: at most a near-tie may flip between Triton's and the offline run
    assert (labels == expected).sum() >= ROWS - 1, (labels, expected)
    parameters = reply["parameters"]
    assert parameters["stages"] == ",".join(f"{n.name}={chosen[n.name]}" for n in _in_order(pipeline))
    nodes = json.loads(parameters["nodes"])
    assert nodes["shape"][0] < nodes["stroke"][1] and nodes["stroke"][0] < nodes["shape"][1]
    assert nodes["judge"][0] >= max(nodes[parent][1] for parent in ("triage", "shape-fine", "shape-coarse",
                                                                     "stroke-fine", "stroke-coarse"))


async def test_a_node_whose_model_is_not_served_is_named_in_the_error(
        pipeline: ServingPipeline, triton: TritonServer, agents: AgentModels) -> None:
    images = agents.split().x_test[:4]
    async with router(pipeline, triton, variants={"stroke-fine": {"refine-missing": 1.0}},
                      extra_models=("refine-missing",)) as client:
        answer = await client.post("/v2/pipelines/digits-agents/infer", json=body(images))
        again = await client.post("/v2/pipelines/digits-agents/infer", json=body(images))
    assert answer.status_code >= 400 and again.status_code == answer.status_code
    error = answer.json()
    assert error["stage"] == "stroke-fine" and "refine-missing" in error["error"]


def _in_order(pipeline: ServingPipeline) -> list[Any]:
    """The stages in the router's order (its topological order of dependsOn)."""
    from paretoserve.workers.router.decisions import topological_order

    order = topological_order({s.name: tuple(s.depends_on) for s in pipeline.spec.stages})
    by_name = {s.name: s for s in pipeline.spec.stages}
    return [by_name[name] for name in order]

"""Agent workflows (issue 16): the aggregator models of the example workflow, and what serves and measures it.

A ServingPipeline whose stages form a DAG of agents (model calls, with fan-out and fan-in) needs models that
read other agents' answers. :mod:`.workflow` holds the example workflow as data and runs a workflow offline on
the tensors the router builds from each stage's ``inputs``; :mod:`.models` trains the aggregators (refine and
judge models, two sizes each) deterministically and caches them; :mod:`.export` writes them as Triton entries
with the example as a ServingPipeline of measured variants (``paretoserve agents build``).
"""

from paretoserve.workers.agents.export import build, pipeline_document
from paretoserve.workers.agents.models import (
    AGGREGATORS,
    RECIPES,
    AgentModels,
    AgentRecipe,
    ensure_agents,
    fingerprint,
    workflow_accuracy,
)
from paretoserve.workers.agents.workflow import REQUEST, WORKFLOW, Node, cheapest, largest, run_workflow

__all__ = [
    "AGGREGATORS",
    "RECIPES",
    "REQUEST",
    "WORKFLOW",
    "AgentModels",
    "AgentRecipe",
    "Node",
    "build",
    "cheapest",
    "ensure_agents",
    "fingerprint",
    "largest",
    "pipeline_document",
    "run_workflow",
    "workflow_accuracy",
]

"""ParetoServe: serve ML models at the accuracy-cost-latency frontier.

The distribution's root package. Its folder in the repository is `cli/` because it holds the command
line; the planner, the operator and the workers live in `planner/`, `operator/` and `workers/` and are
imported as `paretoserve.planner`, `paretoserve.operator` and `paretoserve.workers`.
"""

__version__ = "0.1.0"

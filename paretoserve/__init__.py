"""ParetoServe: serve ML models at the accuracy-cost-latency frontier.

The distribution's root package, deliberately empty. The repository's top-level folders map to its
subpackages: `planner/` (pure planning core), `workers/` (Triton, the router sidecar, the local runtime),
`operator/` (Kubernetes), `shell/` (the command line) and `research/` (experiments and benchmarks).
"""

__version__ = "0.1.0"

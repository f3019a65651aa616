"""Pure planning core: the ServingPipeline model, latency models and the integer programs.

Nothing in this package performs I/O, reads a clock or imports a Kubernetes, kopf or HTTP client;
`tests/unit/test_layering.py` and import-linter enforce it.
"""

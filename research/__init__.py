"""Research: the papers' experiments replayed in the simulator, and the benchmarks that print JSON.

Nothing in the product (planner, workers, operator) imports this package (an import-linter contract), and
the sidecar image leaves it out: it is what we measure the product with, not part of what serves.
"""

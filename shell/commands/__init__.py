"""One module per command group, each with `register(subparsers)`.

A module keeps its heavy imports (torch, tritonclient, starlette, matplotlib) inside its command
functions, so that `paretoserve plan` stays fast.
"""

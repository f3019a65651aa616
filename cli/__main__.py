"""`python -m paretoserve` runs the command line."""

from paretoserve.cli import entrypoint

entrypoint()

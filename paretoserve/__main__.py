"""`python -m paretoserve` runs the command line."""

from paretoserve.shell.main import entrypoint

entrypoint()

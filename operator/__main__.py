"""`python -m paretoserve.operator` runs the operator (same as `kopf run -m paretoserve.operator.handlers`)."""

import sys

import kopf.cli

sys.exit(kopf.cli.main(["run", "-m", "paretoserve.operator.handlers", *sys.argv[1:]]))

"""`python -m paretoserve.operator [kopf run options]`: run the operator.

Same as `kopf run -m paretoserve.operator.handlers`, plus a stable peer identity: kopf names this process
in the peering object by `POD_ID` (the chart sets it to the pod name); outside a pod we set one here so the
adaptation loop can recognise itself among the peers (see loop.py).
"""

import os
import socket
import sys

import kopf.cli

os.environ.setdefault("POD_ID", f"{socket.gethostname()}-{os.getpid()}")
sys.exit(kopf.cli.main(["run", "-m", "paretoserve.operator.handlers", *sys.argv[1:]]))

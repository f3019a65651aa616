"""The operator's only door to the Kubernetes API (see `gateway.py`)."""

"""Data plane: Triton model repositories and launcher, the cascade router sidecar, the local runtime."""

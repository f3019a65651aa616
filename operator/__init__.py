"""Kopf operator: reconciles ServingPipelines into Triton workers and runs the adaptation loop."""

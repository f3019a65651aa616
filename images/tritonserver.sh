#!/bin/sh
# /usr/local/bin/tritonserver in the CPU worker image. NVIDIA's Triton image has `tritonserver` on PATH with its
# backends in /opt/tritonserver/backends; this image carries the server from the nvidia-pytriton wheel instead.
# This wrapper makes the operator's pod args (`tritonserver --model-repository=/models ...`) work unchanged:
# it puts the wheel's bundled libraries on LD_LIBRARY_PATH (the server and the Python-backend stub need them)
# and prepends --backend-directory= the backends prepared at build time (Python backend + its 3.11 stub, the
# native paretoserve_onnx backend).
# An explicit --backend-directory in "$@" comes later and wins.
set -eu
: "${PARETOSERVE_TRITON_ROOT:=@TRITON_ROOT@}"
: "${PARETOSERVE_TRITON_LIBS:=@TRITON_LIBS@}"
: "${PARETOSERVE_TRITON_BACKENDS:=@TRITON_BACKENDS@}"
export LD_LIBRARY_PATH="${PARETOSERVE_TRITON_LIBS}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
# One BLAS thread per Python-backend stub unless the pod sets it: every model instance is a stub process that
# imports numpy, and OpenBLAS's thread per core nearly doubles a new instance's start-up CPU, which a knob change
# under load takes from serving (workers/triton/server.py: STUB_BLAS_THREADS).
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
# The native paretoserve_onnx backend (backends/paretoserve_onnx) runs the ONNX models in the onnxruntime wheel's
# C library, loaded at run time from here.
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-@ORT_LIBRARY@}"
exec "${PARETOSERVE_TRITON_ROOT}/bin/tritonserver" "--backend-directory=${PARETOSERVE_TRITON_BACKENDS}" "$@"

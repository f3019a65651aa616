# One image for the operator and the router sidecar (`kopf run -m paretoserve.operator.handlers` /
# `paretoserve router ...`). Worker pods run the official Triton image. Not built or published by CI yet:
# there is no container engine on the project's machines; build it where Docker is available:
#   docker build -t ghcr.io/paretoserve/paretoserve:0.1.0 .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY paretoserve paretoserve
COPY shell shell
COPY research research
COPY planner planner
COPY operator operator
COPY workers workers
# The research package (experiments, benchmarks) is not part of what serves: removed after the install.
RUN pip install --no-cache-dir ".[operator,router]" \
    && rm -rf "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/paretoserve/research" \
    && useradd --uid 10001 paretoserve
USER 10001
ENTRYPOINT []
CMD ["kopf", "run", "-m", "paretoserve.operator.handlers", "--all-namespaces"]

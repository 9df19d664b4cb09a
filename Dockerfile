# epp, the endpoint picker, as a container image.
#   docker build -t epp:0.1.0 .
#   docker run --rm epp:0.1.0 --help
# Stage 1 builds the wheel and installs it with its dependencies into a virtual environment; stage 2 is a
# slim Python with only that environment, run as an unprivileged user. The EPP's own files
# (README.md, deploy/kubernetes) give it its flags: ports 9002 ext_proc, 9003 gRPC health, 9090 metrics.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is made of (see .dockerignore): the simulated vLLM and the test API server stay out
# (epp/plugins is a link to plugins/, which installs as epp.plugins).
COPY pyproject.toml README.md ./
COPY epp ./epp
COPY epp_pb ./epp_pb
COPY plugins ./plugins
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/epp \
 && /opt/epp/bin/pip install /dist/epp-*.whl \
 && /opt/epp/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/epp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/epp /opt/epp
# 65532 is the conventional "nonroot" id of distroless images; the Deployment runs with the same id.
USER 65532:65532
WORKDIR /tmp
EXPOSE 9002 9003 9090
ENTRYPOINT ["epp"]

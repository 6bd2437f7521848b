# Proveniq Core: one image for every role (`serve --role api|worker|all`, `migrate`,
# `simulate`, the operator commands). Multi-stage: the build stage installs the package into a
# virtualenv; the runtime stage copies only that virtualenv onto a slim Python, runs as an
# unprivileged user, and has no compiler, pip cache or source tree.
#
#   docker build -t proveniq-core .
#   docker run --rm proveniq-core --help
#
# See deploy/compose.yaml for the whole topology and docs/operations.md for running it.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/proveniq
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Every dependency ships manylinux wheels: nothing is compiled here. pip writes the bytecode
# now, so that processes on a read-only root file system do not compile at every start.
RUN /opt/proveniq/bin/pip install .

FROM python:3.11-slim AS runtime
LABEL org.opencontainers.image.title="proveniq-core" \
      org.opencontainers.image.description="Proveniq Core: lockers over MQTT, a PostgreSQL ledger, evidence verification" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 proveniq \
    && useradd --system --uid 10001 --gid proveniq --home-dir /var/lib/proveniq \
       --shell /usr/sbin/nologin proveniq \
    && install -d -o proveniq -g proveniq -m 0750 /var/lib/proveniq
COPY --from=build /opt/proveniq /opt/proveniq
ENV PATH=/opt/proveniq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROVENIQ_HOME=/var/lib/proveniq \
    PROVENIQ_HOST=0.0.0.0 \
    PROVENIQ_PORT=8700
# Data dir: the evidence store and the bootstrap key. Share it between the API and the
# workers (the workers write evidence, the API serves it).
VOLUME ["/var/lib/proveniq"]
WORKDIR /var/lib/proveniq
USER 10001:10001
EXPOSE 8700
# Liveness without curl: the image has Python.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PROVENIQ_PORT', '8700')}/healthz\", timeout=2)"]
ENTRYPOINT ["proveniq"]
CMD ["serve", "--role", "all"]

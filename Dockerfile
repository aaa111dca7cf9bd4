# Raftka's container image: one broker, `raftka broker`, configured by RAFTKA_* environment variables.
#
# Build with scripts/build-image, which makes the build context: a directory holding wheels/, Raftka's
# wheel and its pinned runtime dependencies. Nothing is fetched during the build (pip --no-index), so
# it runs with `docker build --network none`. BASE is any image with a Python >= 3.11 as `python3`
# and the venv module: the official slim image by default, or the Debian one scripts/build-image
# makes with debootstrap where no registry is reachable.
#
# The image runs as uid 10001 with a read-only root file system: the broker writes only under
# RAFTKA_DATA_DIR (the volume /var/lib/raftka); no bytecode is written and no HOME is needed.
ARG BASE=python:3.11-slim-bookworm

# Install in a separate stage so the wheels (a layer of their own) do not ship in the image.
FROM ${BASE} AS install
COPY wheels /wheels
RUN python3 -m venv /opt/raftka \
 && /opt/raftka/bin/python -m pip install --no-index --find-links /wheels --no-cache-dir \
      --disable-pip-version-check --quiet raftka \
 && /opt/raftka/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && /opt/raftka/bin/raftka --help >/dev/null

FROM ${BASE}
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=""
RUN groupadd --system --gid 10001 raftka \
 && useradd --system --uid 10001 --gid raftka --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin raftka \
 && mkdir -p /var/lib/raftka \
 && chown raftka:raftka /var/lib/raftka
COPY --from=install /opt/raftka /opt/raftka
ENV PATH=/opt/raftka/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RAFTKA_ID=1 \
    RAFTKA_DATA_DIR=/var/lib/raftka \
    RAFTKA_LISTEN=0.0.0.0:9092 \
    RAFTKA_ADVERTISE=localhost:9092 \
    RAFTKA_RAFT_LISTEN=0.0.0.0:9093 \
    RAFTKA_METRICS_HOST=0.0.0.0 \
    RAFTKA_METRICS_PORT=9644
VOLUME /var/lib/raftka
WORKDIR /var/lib/raftka
USER 10001:10001
EXPOSE 9092 9093 9644
# Exec form: the broker is PID 1 and gets SIGTERM itself (it hands off leadership, then exits 0).
ENTRYPOINT ["raftka", "broker"]
LABEL org.opencontainers.image.title="raftka" \
      org.opencontainers.image.description="Raftka broker: a Raft-replicated, partitioned, durable log with a gRPC API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"

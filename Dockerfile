# ERS service image: `ers serve` on port 8000; restic from Debian for the backups, and
# PostgreSQL's client programs (pg_dump, pg_restore, psql; 15, as the fleet's server) for
# backups of the state on PostgreSQL.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install --yes --no-install-recommends restic postgresql-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY service ./service
COPY telemetry ./telemetry
COPY backup ./backup
# The versions the tests ran with (requirements.lock, `make lock`), not whatever is newest.
RUN pip install . --constraint requirements.lock && rm -rf /src

# A fixed uid, so the restic password secret can be owned by it on the host
# (deploy/secrets/README.md); /data is created here so a fresh named volume inherits its owner.
RUN groupadd --system --gid 10001 ers \
    && useradd --system --uid 10001 --gid ers --create-home --home-dir /home/ers ers \
    && mkdir /data \
    && chown ers:ers /data
USER 10001:10001
WORKDIR /home/ers
ENV ERS_DATA_DIR=/data

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

# One uvicorn worker per container: the OpenTelemetry Prometheus exporter keeps metrics in
# process memory and has no multi-process mode, so scale by running more containers.
CMD ["ers", "serve", "--host", "0.0.0.0", "--port", "8000"]

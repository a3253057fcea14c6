# The upmetr-audit image of docker-compose.yml: `web`, `seal`, `detect` and the
# one-shot `db migrate` / `db grants --apply` (server mode, [server] extra).
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shipper shipper
COPY collector collector
COPY web web
COPY dashboards dashboards
RUN pip install --no-cache-dir '.[server]' \
 && useradd --system --uid 10001 --home-dir /var/lib/upmetr-audit upmetr \
 && mkdir -p /var/lib/upmetr-audit && chown upmetr /var/lib/upmetr-audit

USER upmetr
WORKDIR /var/lib/upmetr-audit
ENV UPMETR_AUDIT_DATA_DIR=/var/lib/upmetr-audit
CMD ["upmetr-audit", "--help"]

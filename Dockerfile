# One image for every GTM service; the first argument picks the service:
#   docker run gtm config|scheduler|prober|edge
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin gtm
COPY --from=build /install /usr/local
COPY deploy/entrypoint.sh /usr/local/bin/gtm-entrypoint
WORKDIR /app
USER 10001:10001
ENV PYTHONUNBUFFERED=1 GTM_LOG_FORMAT=json
EXPOSE 8080 5300/udp 5300/tcp
ENTRYPOINT ["gtm-entrypoint"]
CMD ["config"]

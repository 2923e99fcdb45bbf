#!/bin/sh
# Run one GTM service (config, scheduler, prober or edge), or `init`: declare the NATS streams
# and buckets once, as the NATS admin user (python -m shared.bus --init, deploy/nats/README.md).
set -eu
service="${1:-}"
case "$service" in
  config|scheduler|prober|edge) shift; exec python -m "services.$service" "$@" ;;
  init) shift; exec python -m shared.bus --init "$@" ;;
  *) echo "usage: gtm-entrypoint config|scheduler|prober|edge|init" >&2; exit 64 ;;
esac

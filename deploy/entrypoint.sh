#!/bin/sh
# Run one GTM service: config, scheduler, prober or edge.
set -eu
service="${1:-}"
case "$service" in
  config|scheduler|prober|edge) shift; exec python -m "services.$service" "$@" ;;
  *) echo "usage: gtm-entrypoint config|scheduler|prober|edge" >&2; exit 64 ;;
esac

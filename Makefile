# GTM: two commands do everything on a fresh machine with Python and pip.
#   make run   - the whole stack in the foreground (embedded NATS unless NATS_URL is set)
#   make test  - install and run the whole test suite

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run demo test lint bench browser promtool nft clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	exec $(PY) -m services.stack

demo: $(STAMP)
	exec $(PY) -m services.stack.demo

# The console's browser test drives Debian's headless Chromium; install it when we can
# (root or sudo with apt-get). Without it that one test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { command -v apt-get >/dev/null && $(SUDO) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null' || \
	    echo "chromium not installed: the console's browser test will skip"; }

# promtool checks and unit-tests the alert rules of deploy/prometheus; Debian's `prometheus` has it
# (about 20 MB, ~15 s, no daemon started). Without it those tests skip and say why.
promtool:
	@command -v promtool >/dev/null || \
	  { command -v apt-get >/dev/null && $(SUDO) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null' || \
	    echo "promtool not installed: the alert rule tests will skip"; }

# Lint and types first (ruff and mypy --strict, configured in pyproject.toml), then the suite.
# pytest exits 5 when it collects no tests: that is not a failure of the suite.
# nft builds the network partitions of the partition and ping-loss tests (Debian's `nftables`, ~1 MB).
# Without it those tests skip and say why.
nft:
	@command -v nft >/dev/null || \
	  { command -v apt-get >/dev/null && $(SUDO) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables >/dev/null' || \
	    echo "nft not installed: the partition tests will skip"; }

test: $(STAMP) browser promtool nft lint
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check services shared tests
	$(PY) -m mypy

# Benchmarks print figures (never asserted): the edge beside gdnsd, publish->serve latency, snapshots.
bench: $(STAMP)
	@command -v dnsperf >/dev/null && { command -v gdnsd >/dev/null || test -x /usr/sbin/gdnsd; } && \
	  { command -v pdns_server >/dev/null || test -x /usr/sbin/pdns_server; } || \
	  $(SUDO) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf gdnsd pdns-server pdns-backend-bind'
	$(PY) -m tests.bench.run $(BENCH)

clean:
	rm -rf $(VENV) .data .pytest_cache .hypothesis

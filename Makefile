# The two commands of the README. Each runs scripts/setup first (idempotent).
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup demo test test-slow test-netns lint unit chaos chaos-netns chaos-sites soak bench bench-setup clean-lab check-install

setup:
	@bash scripts/setup

demo: setup
	@$(VENV)/python -m drctl.demo

# Two workers (pytest-xdist): the suite mostly waits on servers, so two labs at a time use the two
# cores; each worker hands out ports from its own range (drctl/lab/ports.py). TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
test: setup lint
	@$(VENV)/python -m pytest -q tests -p no:cacheprovider -m "not slow" --durations=30 -n $(TEST_WORKERS) --dist worksteal

# The long scenarios (minutes each) that `make test` leaves out.
test-slow: setup
	@$(VENV)/python -m pytest -q tests -p no:cacheprovider -m slow

# The scenario suite on the multi-host lab in network namespaces (docs/netns-lab.md; root). Tests
# that need loopback-only instruments are skipped, each with its reason (-rs).
test-netns: setup
	@PGDR_LAB_MODE=netns $(VENV)/python -m pytest -q -rs tests/scenarios -p no:cacheprovider -m "not slow"

lint:
	@$(VENV)/ruff check drctl site-agent tests bench
	@$(VENV)/ruff format --check drctl site-agent tests bench
	@$(VENV)/mypy

unit: setup
	@$(VENV)/python -m pytest -q tests/unit

clean-lab: setup
	@$(VENV)/drctl lab down || true

bench-setup: setup
	@bash bench/setup_patroni.sh

bench: bench-setup
	@$(VENV)/python -m bench.scenarios

chaos: setup
	@$(VENV)/python -m bench.chaos

# The same campaign on the multi-host lab (docs/netns-lab.md): partitions are real, symmetric cuts.
chaos-netns: setup
	@CHAOS_NETNS=1 $(VENV)/python -m bench.chaos

chaos-sites: setup
	@$(VENV)/python -m bench.chaos_sites

soak: setup
	@$(VENV)/python -m bench.soak

# scripts/install-node run for real in a Debian chroot, then what it left checked (docs/deployment.md).
check-install:
	@apt-get install -y -qq debootstrap >/dev/null
	@bash scripts/check-install-node

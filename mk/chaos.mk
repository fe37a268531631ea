# The chaos tier: the operator as a process against the real control plane and Prometheus, with faults put in
# between (tests/chaos/faults.py). Part of `make test` too, which runs every tier under tests/.

.PHONY: test-chaos

test-chaos: binaries
	$(BIN)/pytest tests/chaos $(PYTEST_ARGS)

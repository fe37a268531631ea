# The gitops tier: GitOps tools' own code (Flux's source-controller and kustomize-controller, kstatus, Argo CD's
# Lua runtime) driving and reading rollouts on the real control plane and Prometheus. `make test` runs it
# beside the other tiers (it waits on rollouts more than it computes); `make test-gitops` runs it alone.

.PHONY: flux test-gitops

# Flux's controllers are built from their Go modules once (about 9 minutes on 2 cores) and cached.
flux: deps venv
	$(BIN)/modelrollout dev build --flux

test-gitops: binaries flux
	$(BIN)/pytest tests/gitops $(PYTEST_ARGS)

# Deployment: the Helm chart, the kustomize manifests, and a kind cluster with Istio and Prometheus for users
# with Docker (docs/install.md). Only helm, chart-crds and helm-lint run here; the kind targets need Docker.

.PHONY: helm helm-path chart-crds helm-lint image kind-up kind-down kind-load istio-install \
	prometheus-install deploy undeploy

# helm is built from its Go module like etcd and kube-apiserver: the wrapper module pins it (with go.sum) and
# the cache directory is named after the pin. tests/integration/test_install.py builds the same binary into
# the same place with the same flags.
HELM_GOMOD   := devtools/modelrollout_dev/devenv/gomod/helm
HELM_VERSION := $(shell sed -n 's/^[[:space:]]*helm\.sh\/helm\/v3 \(v[^ ]*\).*/\1/p' $(HELM_GOMOD)/go.mod)
# helm's default Capabilities.KubeVersion (helm template, lint) is the client-go it is built with, as in
# helm's own release builds; unset, it would be 1.20 and fail the chart's kubeVersion.
HELM_KUBE_MINOR := $(shell sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' $(HELM_GOMOD)/go.mod)
MODELROLLOUT_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/modelrollout
HELM_DIR := $(MODELROLLOUT_CACHE)/bin/helm-$(HELM_VERSION)
HELM     := $(HELM_DIR)/helm
HELM_LDFLAGS := -s -w \
	-X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	-X helm.sh/helm/v3/internal/version.gitTreeState=clean \
	-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
	-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(HELM_KUBE_MINOR) \
	-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
	-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(HELM_KUBE_MINOR)

CHART      := charts/modelrollout-operator
CRD_FILE   := modelrollout.io_modelrollouts.yaml
CRD_COPIES := $(CHART)/crds/$(CRD_FILE) manifests/base/crds/$(CRD_FILE)

KIND         ?= kind
KIND_CLUSTER ?= modelrollout
DOCKER       ?= docker
IMAGE_REPO   ?= modelrollout-operator
IMAGE_TAG    ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
NAMESPACE    ?= modelrollout-system
# The Istio release whose API (CRDs) the tests install: the cluster runs what the operator is tested against.
ISTIO_VERSION ?= $(shell sed -n 's/^require istio\.io\/api v\(.*\)/\1/p' devtools/modelrollout_dev/devenv/gomod/istio/go.mod)
ISTIO_REPO    := https://istio-release.storage.googleapis.com/charts
# Empty: the chart's latest release. Set it to pin.
PROMETHEUS_CHART_VERSION ?=
PROMETHEUS_REPO := https://prometheus-community.github.io/helm-charts
# The address manifests/samples/modelrollout.yaml and the design use.
PROMETHEUS_URL  := http://prometheus.monitoring:9090

helm: $(HELM)

# `$(make -s helm-path) version`
helm-path:
	@echo $(HELM)

# flock: two builds started together (make and a test session) build once.
$(HELM):
	@command -v go >/dev/null || { echo "Go is needed to build helm $(HELM_VERSION) from its module" >&2; exit 1; }
	@mkdir -p $(MODELROLLOUT_CACHE)/bin
	@flock $(MODELROLLOUT_CACHE)/bin/.helm.lock sh -ec '\
	  test -x $(HELM) && exit 0; \
	  echo "building helm $(HELM_VERSION) -> $(HELM_DIR) (first time only; about 2.5 minutes cold)"; \
	  scratch=$$(mktemp -d $(MODELROLLOUT_CACHE)/bin/.build-XXXXXX); trap "rm -rf $$scratch" EXIT; \
	  cp $(HELM_GOMOD)/go.mod $(HELM_GOMOD)/go.sum $$scratch/; mkdir $$scratch/out; \
	  cd $$scratch && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod \
	    go build -trimpath -ldflags "$(HELM_LDFLAGS)" -o out/helm helm.sh/helm/v3/cmd/helm; \
	  rm -rf $(HELM_DIR); mv $$scratch/out $(HELM_DIR)'
	@$(HELM) version --short

# The chart and the kustomize base carry copies of the generated CRD (Helm installs only its own crds/,
# kustomize reads only below its directory); a test fails when they differ from crds/.
chart-crds:
	@for copy in $(CRD_COPIES); do mkdir -p $$(dirname $$copy); cp crds/$(CRD_FILE) $$copy; echo "wrote $$copy"; done

helm-lint: $(HELM)
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) --set 'watchNamespaces={llm,llm-eval}' --set notifySecretName=webhook \
		--set serviceMonitor.enabled=true --set prometheusUrl=$(PROMETHEUS_URL)
	$(HELM) lint --strict $(CHART) --set judge.enabled=true --set 'judge.secrets={llm/judge-key}'

# ---- kind (needs Docker) ----

kind-up:
	$(KIND) create cluster --config kind-config.yaml

kind-down:
	$(KIND) delete cluster --name $(KIND_CLUSTER)

image:
	$(DOCKER) build -t $(IMAGE_REPO):$(IMAGE_TAG) .

kind-load: image
	$(KIND) load docker-image $(IMAGE_REPO):$(IMAGE_TAG) --name $(KIND_CLUSTER)

# Istio's base (CRDs), istiod, and an ingress gateway on the NodePorts kind-config.yaml maps to the host
# (localhost:8080 -> 30080, localhost:8443 -> 30443).
istio-install: $(HELM)
	$(HELM) upgrade --install istio-base base --repo $(ISTIO_REPO) --version $(ISTIO_VERSION) \
		-n istio-system --create-namespace --wait
	$(HELM) upgrade --install istiod istiod --repo $(ISTIO_REPO) --version $(ISTIO_VERSION) \
		-n istio-system --wait
	printf '%s\n' 'service:' '  type: NodePort' '  ports:' \
		'    - {name: status-port, port: 15021, targetPort: 15021, protocol: TCP}' \
		'    - {name: http2, port: 80, targetPort: 80, nodePort: 30080, protocol: TCP}' \
		'    - {name: https, port: 443, targetPort: 443, nodePort: 30443, protocol: TCP}' \
	| $(HELM) upgrade --install istio-ingress gateway --repo $(ISTIO_REPO) --version $(ISTIO_VERSION) \
		-n istio-ingress --create-namespace --values - --wait

# Prometheus scraping pods and services by their prometheus.io/* annotations: Istio's sidecars (merged
# application and Envoy metrics) and the operator's metrics Service. Served as prometheus.monitoring:9090.
prometheus-install: $(HELM)
	$(HELM) upgrade --install prometheus prometheus --repo $(PROMETHEUS_REPO) \
		$(if $(PROMETHEUS_CHART_VERSION),--version $(PROMETHEUS_CHART_VERSION)) \
		-n monitoring --create-namespace \
		--set server.fullnameOverride=prometheus --set server.service.servicePort=9090 \
		--set alertmanager.enabled=false --set prometheus-pushgateway.enabled=false --wait

deploy: $(HELM) kind-load
	$(HELM) upgrade --install modelrollout $(CHART) -n $(NAMESPACE) --create-namespace \
		--set image.repository=$(IMAGE_REPO) --set image.tag=$(IMAGE_TAG) --set image.pullPolicy=Never \
		--set prometheusUrl=$(PROMETHEUS_URL) --wait

undeploy: $(HELM)
	$(HELM) uninstall modelrollout -n $(NAMESPACE)

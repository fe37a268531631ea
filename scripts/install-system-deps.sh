#!/usr/bin/env bash
# Installs what a bare machine lacks for the local environment and says plainly what cannot be installed.
#   - Prometheus server: Debian's `prometheus` package (skipped when PROMETHEUS_BIN names one).
#   - Go >= the version the pinned Kubernetes needs, to build etcd, kube-apiserver and kubectl
#     (skipped when KUBEBUILDER_ASSETS names envtest binaries).
#   - Chromium, headless, for the test that checks the HTML decision report as a browser renders it
#     (Debian's `chromium`; skipped when CHROMIUM_BIN names one).
set -euo pipefail

need_go="1.26"

if [[ -z "${PROMETHEUS_BIN:-}" ]] && ! command -v prometheus >/dev/null 2>&1; then
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: no Prometheus server; install Debian's 'prometheus' package or set PROMETHEUS_BIN" >&2
    exit 1
  fi
  echo "installing Debian's prometheus package"
  # The package would start a system-wide Prometheus on :9090; the tests start their own on free ports.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [[ "$created_policy" == 1 ]]; then rm -f "$policy"; fi
fi

if [[ -z "${CHROMIUM_BIN:-}" ]] && ! command -v chromium >/dev/null 2>&1; then
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: no Chromium for the browser test; install Debian's 'chromium' or set CHROMIUM_BIN" >&2
    exit 1
  fi
  echo "installing Debian's chromium package (headless browser for one test)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

if [[ -z "${KUBEBUILDER_ASSETS:-}" ]]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "error: Go >= $need_go is needed to build etcd and kube-apiserver (or set KUBEBUILDER_ASSETS)" >&2
    exit 1
  fi
  have_go="$(go env GOVERSION | sed 's/^go//')"
  if [[ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -1)" != "$need_go" ]]; then
    echo "error: Go $have_go is older than $need_go, which Kubernetes $(grep -o 'k8s.io/kubernetes v[0-9.]*' \
      devtools/modelrollout_dev/devenv/gomod/kube/go.mod | cut -d' ' -f2) needs (or set KUBEBUILDER_ASSETS)" >&2
    exit 1
  fi
fi

python3 -c 'import venv, ensurepip' 2>/dev/null || {
  echo "error: python3 lacks venv/ensurepip (Debian: apt-get install python3-venv)" >&2
  exit 1
}
echo "system dependencies: ok"

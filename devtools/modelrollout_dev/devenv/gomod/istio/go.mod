// Pins the Istio API module whose generated CustomResourceDefinitions the local
// control plane installs (kubernetes/customresourcedefinitions.gen.yaml).
// No package is imported, so `go mod tidy` must not be run here.
module modelrollout.io/tools/istio

go 1.24.0

require istio.io/api v1.31.1

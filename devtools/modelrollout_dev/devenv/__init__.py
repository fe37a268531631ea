"""The local world the operator is tested and demonstrated against: a real etcd and kube-apiserver built from
their Go modules, Istio's own CRDs, and a real Prometheus server, all on loopback."""

{{/* Names and labels shared by every template. */}}

{{- define "modelrollout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelrollout.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "modelrollout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelrollout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelrollout.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "modelrollout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: modelrollout
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "modelrollout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelrollout.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelrollout.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What the operator does to the API, wherever it works (cluster-wide in a ClusterRole, or in each watched
namespace in a Role). Each rule names the code that needs it; tests/integration/test_least_privilege.py runs
the operator with exactly these rules.
*/}}
{{- define "modelrollout.rules" -}}
# kopf lists and watches the rollouts; kopf patches them (its finalizer, its progress and diff-base
# annotations) and so does the operator (kube.consume_action removes the action annotation). kube.get_rollout
# reads one afresh after a conflicting write, and tells a claim of a deleted rollout from a live one.
- apiGroups: [modelrollout.io]
  resources: [modelrollouts]
  verbs: [get, list, watch, patch]
# kube.record_status: the whole status through the status subresource, conditional on the resourceVersion.
- apiGroups: [modelrollout.io]
  resources: [modelrollouts/status]
  verbs: [patch]
# routing.istio_router: read the VirtualService, replace it with the resourceVersion it was read at (PUT);
# routing.watch: list and watch them, so a tick reads from memory (get: until the watch is in sync, and after
# a conflicting write).
- apiGroups: [networking.istio.io]
  resources: [virtualservices]
  verbs: [get, list, watch, update]
# kube.emit_event and kopf's own warnings: core/v1 Events on the rollouts (neither posts events.k8s.io).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.rbac.bucketFilters }}
# kube.get_envoy_filter, apply_envoy_filter (server-side apply: create, then patch) and delete_envoy_filter:
# the EnvoyFilter that computes sticky buckets from a user id (spec.experiment.stickiness.userHeader).
- apiGroups: [networking.istio.io]
  resources: [envoyfilters]
  verbs: [get, create, patch, delete]
{{- end }}
{{- with (include "modelrollout.secretNames" (dict "secrets" .Values.rbac.prometheusSecrets "namespace" "") | fromJsonArray) }}
# kube.read_secret_data: spec.analysis.prometheus.secretRef, in the rollout's namespace; these names only.
- apiGroups: [""]
  resources: [secrets]
  resourceNames: {{ toJson . }}
  verbs: [get]
{{- end }}
{{- end }}

{{/*
The names in rbac.prometheusSecrets for one namespace ("": the bare names, for every watched namespace), as
a JSON list. A bare name or NAMESPACE/NAME; anything else fails the install.
*/}}
{{- define "modelrollout.secretNames" -}}
{{- if kindIs "bool" .secrets }}
{{- fail "rbac.prometheusSecrets is a list of the Secrets the operator may read (NAME or NAMESPACE/NAME), no longer true/false: name them, or [] for none" }}
{{- end }}
{{- $names := list }}
{{- range .secrets }}
{{- $parts := splitList "/" (toString .) }}
{{- if or (gt (len $parts) 2) (has "" $parts) }}
{{- fail (printf "rbac.prometheusSecrets: %q is neither NAME nor NAMESPACE/NAME" (toString .)) }}
{{- end }}
{{- if and (eq (len $parts) 1) (eq $.namespace "") }}
{{- $names = append $names (index $parts 0) }}
{{- else if and (eq (len $parts) 2) (eq (index $parts 0) $.namespace) }}
{{- $names = append $names (index $parts 1) }}
{{- end }}
{{- end }}
{{- toJson ($names | uniq) }}
{{- end }}

{{/* The namespaces named in rbac.prometheusSecrets' NAMESPACE/NAME entries, as a JSON list. */}}
{{- define "modelrollout.secretNamespaces" -}}
{{- $namespaces := list }}
{{- range .Values.rbac.prometheusSecrets }}
{{- $parts := splitList "/" (toString .) }}
{{- if eq (len $parts) 2 }}
{{- $namespaces = append $namespaces (index $parts 0) }}
{{- end }}
{{- end }}
{{- toJson ($namespaces | uniq) }}
{{- end }}

{{/* The 5xx share per destination Service that the chart's PrometheusRule alerts on. */}}
{{- define "modelrollout.canaryErrorsExpr" -}}
sum by (destination_service_name, destination_service_namespace) (rate(istio_requests_total{reporter="destination",response_code=~"5.."}[1m])) / sum by (destination_service_name, destination_service_namespace) (rate(istio_requests_total{reporter="destination"}[1m])) > {{ .Values.alerts.prometheusRule.errorRatio }}
{{- end }}

{{/* Whether the replicas elect a leader: asked for, or more than one replica. */}}
{{- define "modelrollout.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) }}true{{- end }}
{{- end }}

{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "clarion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified release name: the prefix of every object the chart creates. At most 40 characters,
so that "<fullname>-operator-metrics" and the StatefulSets' pod and revision names stay within 63. */}}
{{- define "clarion.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "clarion.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "clarion.labels" -}}
helm.sh/chart: {{ include "clarion.chart" . }}
app.kubernetes.io/name: {{ include "clarion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: clarion
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "webhook"). */}}
{{- define "clarion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clarion.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects: common labels plus the component. */}}
{{- define "clarion.componentLabels" -}}
{{ include "clarion.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The Clarion image reference; the digest wins over the tag when set. */}}
{{- define "clarion.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "clarion.operatorServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "clarion.fullname" .)) .Values.serviceAccount.operatorName }}
{{- else }}
{{- default "default" .Values.serviceAccount.operatorName }}
{{- end }}
{{- end }}

{{- define "clarion.workloadServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-workload" (include "clarion.fullname" .)) .Values.serviceAccount.workloadName }}
{{- else }}
{{- default "default" .Values.serviceAccount.workloadName }}
{{- end }}
{{- end }}

{{/* Secret and key holding CLARION_DATABASE_URL. */}}
{{- define "clarion.databaseSecretName" -}}
{{- if .Values.postgresql.bundled }}
{{- printf "%s-postgresql" (include "clarion.fullname" .) }}
{{- else }}
{{- .Values.postgresql.existingSecret }}
{{- end }}
{{- end }}

{{- define "clarion.databaseSecretKey" -}}
{{- if .Values.postgresql.bundled }}url{{ else }}{{ .Values.postgresql.existingSecretKey }}{{ end }}
{{- end }}

{{/* Secret and key holding CLARION_REDIS_URL. */}}
{{- define "clarion.redisSecretName" -}}
{{- if .Values.redis.bundled }}
{{- printf "%s-redis" (include "clarion.fullname" .) }}
{{- else }}
{{- .Values.redis.existingSecret }}
{{- end }}
{{- end }}

{{- define "clarion.redisSecretKey" -}}
{{- if .Values.redis.bundled }}url{{ else }}{{ .Values.redis.existingSecretKey }}{{ end }}
{{- end }}

{{/* Environment every Clarion process gets: connection URLs from Secrets, logging. */}}
{{- define "clarion.commonEnv" -}}
- name: CLARION_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "clarion.databaseSecretName" . }}
      key: {{ include "clarion.databaseSecretKey" . }}
- name: CLARION_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "clarion.redisSecretName" . }}
      key: {{ include "clarion.redisSecretKey" . }}
- name: CLARION_LOG_FORMAT
  value: json
- name: CLARION_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/* Pod-level settings shared by the chart's pods: include with (dict "ctx" $ "values" .Values.webhook). */}}
{{- define "clarion.podScheduling" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .ctx.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* What the operator does inside the namespaces it watches. Keep docs/deploy.md's RBAC table in step. */}}
{{- define "clarion.operatorNamespacedRules" -}}
# Clarion's own resources: watch them, add finalizers and annotations (patch), write status.
- apiGroups: ["clarion.io"]
  resources: ["notificationchannels", "broadcastcampaigns", "managedgroups", "notificationroutes"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["clarion.io"]
  resources: ["notificationchannels/status", "broadcastcampaigns/status", "managedgroups/status", "notificationroutes/status"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion on children (kopf.adopt) need update on the owner's finalizers.
- apiGroups: ["clarion.io"]
  resources: ["notificationchannels/finalizers", "broadcastcampaigns/finalizers", "managedgroups/finalizers", "notificationroutes/finalizers"]
  verbs: ["update"]
# kopf posts Events about handler progress and errors.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Bot token and SMTP credential refs (read), the channel's generated webhook secret and the
# per-namespace runtime Secret (written). API key Secrets (label clarion.io/api-key): list/watch to
# sync their hashes into Postgres, get to find deleted ones (docs/api-keys.md); never patched.
# Never delete: owned Secrets go with their owner.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
# One sender Job per campaign run.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# One bot Deployment per Telegram channel, one worker Deployment per channel and lane.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The worker autoscaler sets a lane's worker count through the scale subresource (ADR 0008).
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
# Lanes with engine keda: a ScaledObject and its TriggerAuthentication each, written by server-side
# apply (create, patch) and deleted when the lane goes back to the operator (ADR 0008). Harmless
# where KEDA is not installed.
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects", "triggerauthentications"]
  verbs: ["create", "patch", "delete"]
# Sender and bot pod status (progress, failures); read-only.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* What kopf needs cluster-wide to discover resources: CRD definitions, and namespaces when restricted. */}}
{{- define "clarion.operatorScanningRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.operator.watchNamespaces }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}

{{/* Password of a bundled datastore: the value if given, else the one already in its Secret, else a new one. */}}
{{- define "clarion.bundledPassword" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret }}
{{- if .value }}
{{- .value }}
{{- else if and $existing $existing.data (index $existing.data "password") }}
{{- index $existing.data "password" | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}

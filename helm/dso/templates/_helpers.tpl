{{/*
Names and labels shared by every template.
*/}}

{{- define "dso.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: "<release>-<chart>" unless the release name already contains the chart name.
Truncated to 40 characters so that names KubeRay derives from it (RayCluster
"<name>-<5 chars>", head Service "<cluster>-head-svc") stay within the 63-character limit.
*/}}
{{- define "dso.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dso.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (never include the version here). */}}
{{- define "dso.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dso.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The standard Kubernetes/Helm labels on every object. */}}
{{- define "dso.labels" -}}
helm.sh/chart: {{ include "dso.chart" . }}
{{ include "dso.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dso
{{- end -}}

{{/* Labels of one component: include "dso.componentLabels" (dict "ctx" $ "component" "api") */}}
{{- define "dso.componentLabels" -}}
{{ include "dso.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dso.componentSelectorLabels" -}}
{{ include "dso.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dso.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dso.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dso.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "dso.configMapName" -}}
{{- printf "%s-config" (include "dso.fullname" .) -}}
{{- end -}}

{{/* Where the config file is mounted; every DSO process gets `--config` this path. */}}
{{- define "dso.configDir" -}}/etc/dso{{- end -}}

{{- define "dso.sharedClaimName" -}}
{{- default (printf "%s-shared" (include "dso.fullname" .)) .Values.sharedStorage.existingClaim -}}
{{- end -}}

{{/* ---- Redis ------------------------------------------------------------ */}}

{{- define "dso.redis.fullname" -}}
{{- printf "%s-redis" (include "dso.fullname" .) -}}
{{- end -}}

{{/* Secret and key holding the Redis password; empty name when there is no password. */}}
{{- define "dso.redis.secretName" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.enabled -}}
{{- default (include "dso.redis.fullname" .) .Values.redis.auth.existingSecret -}}
{{- end -}}
{{- else -}}
{{- .Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "dso.redis.secretKey" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecretKey }}{{- else -}}redis-password{{- end -}}
{{- else -}}
{{- .Values.externalRedis.existingSecretKey -}}
{{- end -}}
{{- end -}}

{{/*
The Redis URL every process gets as DSO__BROKER__REDIS_URL. A password is spliced in
with Kubernetes' $(DSO_REDIS_PASSWORD) expansion, so it never appears in a manifest.
*/}}
{{- define "dso.redis.url" -}}
{{- $auth := "" -}}
{{- if include "dso.redis.secretName" . -}}
{{- $user := ternary .Values.externalRedis.username "" (not .Values.redis.enabled) -}}
{{- $auth = printf "%s:$(DSO_REDIS_PASSWORD)@" $user -}}
{{- end -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s%s:6379/0" $auth (include "dso.redis.fullname" .) -}}
{{- else -}}
{{- if not .Values.externalRedis.url -}}
{{- fail "externalRedis.url is required when redis.enabled is false" -}}
{{- end -}}
{{- $u := urlParse .Values.externalRedis.url -}}
{{- if not (has $u.scheme (list "redis" "rediss")) -}}
{{- fail (printf "externalRedis.url must start with redis:// or rediss://, got %q" .Values.externalRedis.url) -}}
{{- end -}}
{{- if $u.userinfo -}}
{{- fail "externalRedis.url must not carry credentials: put the password in externalRedis.existingSecret" -}}
{{- end -}}
{{- printf "%s://%s%s%s" $u.scheme $auth $u.host $u.path -}}
{{- end -}}
{{- end -}}

{{/* ---- What every DSO container shares ---------------------------------- */}}

{{- define "dso.env" -}}
{{- if eq (int .Values.monitoring.dsoMetricsPort) (int .Values.monitoring.rayMetricsPort) -}}
{{- fail "monitoring.dsoMetricsPort must differ from monitoring.rayMetricsPort (Ray's own exporter)" -}}
{{- end -}}
{{- if include "dso.redis.secretName" . -}}
- name: DSO_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "dso.redis.secretName" . }}
      key: {{ include "dso.redis.secretKey" . }}
{{ end -}}
- name: DSO__BROKER__REDIS_URL
  value: {{ include "dso.redis.url" . | quote }}
- name: DSO_METRICS_PORT
  value: {{ .Values.monitoring.dsoMetricsPort | quote }}
{{- include "dso.adapterStoreEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Object-store credentials for the adapter store: standard AWS variables, values from a Secret. */}}
{{- define "dso.adapterStoreEnv" -}}
{{- $store := .Values.adapterStore -}}
{{- if $store.url -}}
{{- with $store.credentials.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $store.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $store.credentials.secretAccessKeyKey }}
{{- end }}
{{- with $store.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{- define "dso.volumeMounts" -}}
- name: dso-config
  mountPath: {{ include "dso.configDir" . }}
  readOnly: true
- name: shared
  mountPath: {{ .Values.sharedStorage.mountPath }}
{{- end -}}

{{- define "dso.volumes" -}}
- name: dso-config
  configMap:
    name: {{ include "dso.configMapName" . }}
- name: shared
  persistentVolumeClaim:
    claimName: {{ include "dso.sharedClaimName" . }}
{{- end -}}

{{/* Restarts pods whose config changed (Deployments; Ray pods are replaced with their job). */}}
{{- define "dso.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/*
The Ray cluster, shared by the RayJob (rayjob mode: its rayClusterSpec) and the
RayCluster (raycluster mode). Head and worker pods run the DSO image with the config
file and the shared volume mounted, and DSO_METRICS_PORT for DSO's exporter.
*/}}

{{- define "dso.ray.clusterName" -}}
{{- include "dso.fullname" . -}}
{{- end -}}

{{/*
RayJob name: "<name>-<hash>", where the hash covers what the running job depends on
(image, config, job settings and, in rayjob mode, the cluster it creates). KubeRay does
not apply spec changes to a running RayJob, so a changed hash makes `helm upgrade`
replace the job (the learner resumes from its checkpoint on the shared volume).
Scaling a RayCluster's worker groups (raycluster mode) leaves the job running.
*/}}
{{- define "dso.ray.jobName" -}}
{{- $inputs := list (include "dso.image" .) (toJson .Values.config) (toJson .Values.ray.job) (toJson .Values.extraEnv) (include "dso.redis.url" .) -}}
{{- if eq .Values.ray.mode "rayjob" -}}
{{- $inputs = append $inputs (toJson .Values.ray) -}}
{{- end -}}
{{- printf "%s-%s" (include "dso.fullname" . | trunc 30 | trimSuffix "-") (join "\n" $inputs | sha256sum | trunc 8) -}}
{{- end -}}

{{/* Ray's `ray start --resources` value: a quoted JSON map, as KubeRay passes it to the shell. */}}
{{- define "dso.ray.resourcesParam" -}}
{{- printf "\"%s\"" (toJson . | replace "\"" "\\\"") -}}
{{- end -}}

{{/*
One Ray pod template. Arguments: dict "ctx" $ "head" bool "name" group-name "group" values.
*/}}
{{- define "dso.ray.podTemplate" -}}
{{- $ctx := .ctx -}}
{{- $group := .group -}}
{{- $component := ternary "ray-head" "ray-worker" .head -}}
{{- $resources := deepCopy (default dict $group.resources) -}}
{{- $gpus := int (default 0 $group.gpus) -}}
{{- if gt $gpus 0 -}}
{{- $limits := get $resources "limits" | default dict -}}
{{- $_ := set $limits "nvidia.com/gpu" $gpus -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
metadata:
  labels:
    {{- include "dso.componentLabels" (dict "ctx" $ctx "component" $component) | nindent 4 }}
    dso.io/ray-group: {{ .name }}
  annotations:
    {{- include "dso.configChecksum" $ctx | nindent 4 }}
spec:
  {{- if not (and .head $ctx.Values.ray.enableInTreeAutoscaling) }}
  {{- /* With in-tree autoscaling KubeRay gives the head its own service account (autoscaler RBAC). */}}
  serviceAccountName: {{ include "dso.serviceAccountName" $ctx }}
  {{- end }}
  {{- with $ctx.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $ctx.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ $component }}
      image: {{ include "dso.image" $ctx | quote }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      env:
        {{- include "dso.env" $ctx | nindent 8 }}
      ports:
        {{- if .head }}
        - name: gcs-server
          containerPort: 6379
          protocol: TCP
        - name: dashboard
          containerPort: 8265
          protocol: TCP
        - name: client
          containerPort: 10001
          protocol: TCP
        {{- end }}
        - name: metrics
          containerPort: {{ $ctx.Values.monitoring.rayMetricsPort }}
          protocol: TCP
        - name: dso-metrics
          containerPort: {{ $ctx.Values.monitoring.dsoMetricsPort }}
          protocol: TCP
      securityContext:
        {{- toYaml $ctx.Values.containerSecurityContext | nindent 8 }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      volumeMounts:
        {{- include "dso.volumeMounts" $ctx | nindent 8 }}
        - name: dshm
          mountPath: /dev/shm
  volumes:
    {{- include "dso.volumes" $ctx | nindent 4 }}
    - name: dshm  # Ray's object store lives in shared memory
      emptyDir:
        medium: Memory
  {{- with $group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* rayStartParams of a group: the given ones plus --metrics-export-port and --resources. */}}
{{- define "dso.ray.startParams" -}}
{{- $params := dict "metrics-export-port" (toString .ctx.Values.monitoring.rayMetricsPort) -}}
{{- with .group.rayResources -}}
{{- $_ := set $params "resources" (include "dso.ray.resourcesParam" .) -}}
{{- end -}}
{{- range $key, $value := .group.rayStartParams -}}
{{- $_ := set $params $key (toString $value) -}}
{{- end -}}
{{- toYaml $params -}}
{{- end -}}

{{/* The RayCluster spec (RayCluster.spec, or RayJob.spec.rayClusterSpec). */}}
{{- define "dso.ray.clusterSpec" -}}
{{- $ctx := . -}}
rayVersion: {{ .Values.ray.version | quote }}
enableInTreeAutoscaling: {{ .Values.ray.enableInTreeAutoscaling }}
headGroupSpec:
  rayStartParams:
    {{- include "dso.ray.startParams" (dict "ctx" $ctx "group" .Values.ray.head) | nindent 4 }}
  template:
    {{- include "dso.ray.podTemplate" (dict "ctx" $ctx "head" true "name" "head" "group" .Values.ray.head) | nindent 4 }}
workerGroupSpecs:
  {{- range $name, $group := .Values.ray.workerGroups }}
  {{- if $group.enabled }}
  {{- if not (and (le (int $group.minReplicas) (int $group.replicas)) (le (int $group.replicas) (int $group.maxReplicas))) }}
  {{- fail (printf "ray.workerGroups.%s: need minReplicas <= replicas <= maxReplicas, got %v <= %v <= %v" $name $group.minReplicas $group.replicas $group.maxReplicas) }}
  {{- end }}
  - groupName: {{ $name }}
    replicas: {{ $group.replicas }}
    minReplicas: {{ $group.minReplicas }}
    maxReplicas: {{ $group.maxReplicas }}
    rayStartParams:
      {{- include "dso.ray.startParams" (dict "ctx" $ctx "group" $group) | nindent 6 }}
    template:
      {{- include "dso.ray.podTemplate" (dict "ctx" $ctx "head" false "name" $name "group" $group) | nindent 6 }}
  {{- end }}
  {{- end }}
{{- end -}}

{{/* The RayJob spec fields that say what runs and how it ends. */}}
{{- define "dso.ray.jobSpec" -}}
{{- $job := .Values.ray.job -}}
entrypoint: {{ $job.entrypoint | quote }}
{{- with $job.runtimeEnv }}
runtimeEnvYAML: |
  {{- toYaml . | nindent 2 }}
{{- end }}
submissionMode: {{ $job.submissionMode }}
{{- if not (kindIs "invalid" $job.activeDeadlineSeconds) }}
activeDeadlineSeconds: {{ $job.activeDeadlineSeconds }}
{{- end }}
{{- /* Retries and cluster teardown only apply to a cluster the RayJob owns (KubeRay
       rejects backoffLimit > 0 with clusterSelector, and a TTL without shutdown). */}}
{{- if eq .Values.ray.mode "rayjob" }}
backoffLimit: {{ $job.backoffLimit }}
shutdownAfterJobFinishes: {{ $job.shutdownAfterJobFinishes }}
{{- if $job.shutdownAfterJobFinishes }}
ttlSecondsAfterFinished: {{ $job.ttlSecondsAfterFinished }}
{{- end }}
{{- end }}
{{- end -}}

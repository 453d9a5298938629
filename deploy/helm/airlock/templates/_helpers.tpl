{{/* The chart name. */}}
{{- define "airlock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full object name. */}}
{{- define "airlock.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels the pods are selected by (never change them: a DaemonSet's selector is fixed). */}}
{{- define "airlock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "airlock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "airlock.labels" -}}
{{ include "airlock.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: gateway
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The ServiceAccount's name. */}}
{{- define "airlock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "airlock.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the targets' credentials. */}}
{{- define "airlock.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "airlock.fullname" .)) .Values.credentials.existingSecret -}}
{{- end -}}

{{/* The daemon's configuration file: the daemon section with the container's paths, then the
policy. */}}
{{- define "airlock.config" -}}
{{- $d := .Values.daemon -}}
{{- $daemon := dict
  "bpffs" "/sys/fs/bpf/airlock"
  "state_dir" "/var/lib/airlock"
  "cgroup_root" "/host/sys/fs/cgroup"
  "proc_root" "/host/proc"
  "listen_port_base" (int $d.listenPortBase)
  "metrics" (printf "0.0.0.0:%d" (int $d.metricsPort))
  "shutdown_grace" $d.shutdownGrace
-}}
{{- if $d.nodeAddress }}{{ $_ := set $daemon "node_address" $d.nodeAddress }}{{ end -}}
{{- if $d.cgroup }}{{ $_ := set $daemon "cgroup" $d.cgroup }}{{ end -}}
{{- if gt (int $d.apiPort) 0 }}{{ $_ := set $daemon "api" (printf "0.0.0.0:%d" (int $d.apiPort)) }}{{ end -}}
{{- $audit := deepCopy $d.audit -}}
{{- if .Values.keys.existingSecret }}{{ $_ := set $audit "signing_key" "/etc/airlock-keys/audit.key" }}{{ end -}}
{{- if $audit }}{{ $_ := set $daemon "audit" $audit }}{{ end -}}
{{- if $d.approvals }}{{ $_ := set $daemon "approvals" $d.approvals }}{{ end -}}
{{- $config := dict "daemon" $daemon -}}
{{- with .Values.policy.targets }}{{ $_ := set $config "targets" . }}{{ end -}}
{{- with .Values.policy.identities }}{{ $_ := set $config "identities" . }}{{ end -}}
{{- with .Values.policy.rules }}{{ $_ := set $config "rules" . }}{{ end -}}
{{- with .Values.policy.masking }}{{ $_ := set $config "masking" . }}{{ end -}}
{{- $_ := set $config "default" .Values.policy.default -}}
{{- toYaml $config -}}
{{- end -}}

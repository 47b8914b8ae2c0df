{{/* Chart name. */}}
{{- define "pack-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: the release name, plus "-pack-operator" unless it already has it. At
most 34 characters, so that the longest name, "<prefix>-reflector-controller-metrics", fits the 63 of a
Service. */}}
{{- define "pack-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 34 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 34 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 34 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "pack-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pack-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pack-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one controller; arguments: (dict "root" $ "component" "pack-controller"). */}}
{{- define "pack-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pack-operator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one controller's resources; arguments as selectorLabels. */}}
{{- define "pack-operator.componentLabels" -}}
{{ include "pack-operator.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Name of one controller's resources (Deployment, ServiceAccount, Service, ClusterRole...). */}}
{{- define "pack-operator.componentName" -}}
{{- printf "%s-%s" (include "pack-operator.fullname" .root) .component }}
{{- end }}

{{/* Name of one controller's metrics Service, which is also the `job` label of its ServiceMonitor's
series; arguments as componentName. */}}
{{- define "pack-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "pack-operator.componentName" .) }}
{{- end }}

{{/* Chart name. */}}
{{- define "wasmpod.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-based prefix for namespaced and cluster-scoped objects. */}}
{{- define "wasmpod.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "wasmpod.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "wasmpod.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "wasmpod.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "wasmpod.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wasmpod
{{- end }}

{{- define "wasmpod.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wasmpod.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: installer
{{- end }}

{{- define "wasmpod.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-installer" (include "wasmpod.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wasmpod.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The handlers the installer registers: those of the enabled RuntimeClasses. */}}
{{- define "wasmpod.handlers" -}}
{{- $h := list }}
{{- if .Values.runtimeClasses.wasmtime.enabled }}{{ $h = append $h "wasmtime" }}{{ end }}
{{- if .Values.runtimeClasses.isolated.enabled }}{{ $h = append $h "wasmtime-isolated" }}{{ end }}
{{- join "," $h }}
{{- end }}

{{/* "true" when the cluster already has a RuntimeClass of this name that this release does not
own (k3s's bundled `wasmtime`); "" otherwise, and always when rendering offline (`helm
template`, where lookup finds nothing). Argument: (list $ name). */}}
{{- define "wasmpod.foreignRuntimeClass" -}}
{{- $root := index . 0 }}
{{- $found := lookup "node.k8s.io/v1" "RuntimeClass" "" (index . 1) }}
{{- if $found }}
{{- $ann := default (dict) $found.metadata.annotations }}
{{- if not (and (eq (index $ann "meta.helm.sh/release-name" | default "") $root.Release.Name) (eq (index $ann "meta.helm.sh/release-namespace" | default "") $root.Release.Namespace)) }}true{{ end }}
{{- end }}
{{- end }}

{{/*
The templates keep to a small part of Helm's template language (fields, if/else, range,
define/include, and the functions default, quote, toYaml, indent, nindent, eq, and, or,
sha256sum), which tests/deploy/k8s_check.py also implements to render the chart where helm
is not installed.
*/}}

{{/* The name of every object of the release. */}}
{{- define "portcullis.fullname" -}}
{{ .Values.fullnameOverride | default .Release.Name }}
{{- end }}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: portcullis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portcullis.labels" -}}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/component: {{ .Values.mode }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "portcullis.secretName" -}}
{{ .Values.secrets.name | default (include "portcullis.fullname" .) }}
{{- end }}

{{- define "portcullis.serviceAccountName" -}}
{{ .Values.serviceAccount.name | default (include "portcullis.fullname" .) }}
{{- end }}

{{/* The files of the config folder: the ConfigMap's data, and what its checksum covers. */}}
{{- define "portcullis.configFiles" -}}
portcullis.yaml: |
  {{- toYaml .Values.config | nindent 2 }}
{{- range $file, $text := .Values.policies }}
{{ $file }}: |
  {{- $text | nindent 2 }}
{{- end }}
{{- end }}

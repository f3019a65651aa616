{{- define "paretoserve.name" -}}paretoserve{{- end -}}
{{- define "paretoserve.fullname" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}-paretoserve{{- end -}}
{{- define "paretoserve.labels" -}}
app.kubernetes.io/name: paretoserve
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "paretoserve.selector" -}}
app.kubernetes.io/name: paretoserve
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "paretoserve.image" -}}{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}{{- end -}}

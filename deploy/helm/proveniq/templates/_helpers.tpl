{{/* Names and labels shared by every object of the chart. */}}

{{- define "proveniq.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "proveniq.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "proveniq.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "proveniq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: proveniq
{{- end -}}

{{- define "proveniq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "proveniq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "proveniq.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "proveniq.secretName" -}}
{{- .Values.existingSecret | default (include "proveniq.fullname" .) -}}
{{- end -}}

{{/* The environment of every Core container: the two URLs from the Secret, then config. */}}
{{- define "proveniq.env" -}}
- name: PROVENIQ_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "proveniq.secretName" . }}
      key: database-url
- name: PROVENIQ_MQTT_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "proveniq.secretName" . }}
      key: mqtt-url
- name: PROVENIQ_HOME
  value: /var/lib/proveniq
{{- range $name, $value := .Values.config }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "proveniq.volumes" -}}
- name: home
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.existingClaim | default (printf "%s-home" (include "proveniq.fullname" .)) }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "proveniq.volumeMounts" -}}
- name: home
  mountPath: /var/lib/proveniq
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* The chart's name, at most 63 characters (a DNS label). */}}
{{- define "llmhost.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's resource name: the release name, with the chart's name unless it already holds it. */}}
{{- define "llmhost.fullname" -}}
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

{{- define "llmhost.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmhost.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmhost.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "llmhost.labels" -}}
helm.sh/chart: {{ include "llmhost.chart" . }}
{{ include "llmhost.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The image: image.tag, else appVersion (plus "-cuda" for a GPU release). */}}
{{- define "llmhost.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary "-cuda" "" .Values.gpu.enabled)) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* The Secret the chart makes for auth.apiKey and database.url. */}}
{{- define "llmhost.secretName" -}}
{{- printf "%s-secrets" (include "llmhost.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmhost.apiKeySecret" -}}
{{- .Values.auth.existingSecret | default (include "llmhost.secretName" .) -}}
{{- end -}}

{{- define "llmhost.apiKeySecretKey" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecretKey }}{{- else -}}api-key{{- end -}}
{{- end -}}

{{- define "llmhost.databaseSecretKey" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecretKey }}{{- else -}}database-url{{- end -}}
{{- end -}}

{{- define "llmhost.databaseSecret" -}}
{{- .Values.database.existingSecret | default (include "llmhost.secretName" .) -}}
{{- end -}}

{{- define "llmhost.hasDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret -}}true{{- end -}}
{{- end -}}

{{/*
Settings the chart cannot serve: each stops the install with the reason, before anything reaches the cluster.
*/}}
{{- define "llmhost.validate" -}}
{{- if and .Values.auth.apiKey .Values.auth.existingSecret -}}
{{- fail "give auth.apiKey or auth.existingSecret, not both" -}}
{{- end -}}
{{- if not (or .Values.auth.apiKey .Values.auth.existingSecret) -}}
{{- fail "llmhost listens on the pod's address and refuses to start without an API key: set auth.existingSecret (a Secret with the key) or auth.apiKey" -}}
{{- end -}}
{{- if and .Values.database.url .Values.database.existingSecret -}}
{{- fail "give database.url or database.existingSecret, not both" -}}
{{- end -}}
{{- range $name, $why := dict "host" "the container listens on 0.0.0.0:8080" "port" "the container listens on 0.0.0.0:8080" "data_dir" "the data volume is /var/lib/llmhost" "models_dir" "models live on the data volume" "api_key" "keys belong in a Secret: use auth.*" "database_url" "a database URL holds a password: use database.*" -}}
{{- if hasKey ($.Values.config | default dict) $name -}}
{{- fail (printf "config.%s is set by the chart (%s)" $name $why) -}}
{{- end -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- if not (include "llmhost.hasDatabase" .) -}}
{{- fail "replicaCount > 1 needs PostgreSQL (database.url or database.existingSecret): each pod's SQLite files would be its own" -}}
{{- end -}}
{{- if and .Values.persistence.enabled (not (has "ReadWriteMany" .Values.persistence.accessModes)) -}}
{{- fail "replicaCount > 1 with persistence needs persistence.accessModes [ReadWriteMany]: the pods share the model files" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
llmhost.toml: .Values.config, plus the Service's DNS names in security.allowed_hosts (so in-cluster clients
and Prometheus pass the Host check) and redis.url as limits.redis_url.
*/}}
{{- define "llmhost.config" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- $fullname := include "llmhost.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $security := get $config "security" | default dict -}}
{{- $own := list $fullname (printf "%s.%s" $fullname $ns) (printf "%s.%s.svc" $fullname $ns) (printf "%s.%s.svc.cluster.local" $fullname $ns) -}}
{{- $_ := set $security "allowed_hosts" (concat $own (get $security "allowed_hosts" | default list) | uniq) -}}
{{- $_ := set $config "security" $security -}}
{{- if .Values.redis.url -}}
{{- $limits := get $config "limits" | default dict -}}
{{- $_ := set $limits "redis_url" .Values.redis.url -}}
{{- $_ := set $config "limits" $limits -}}
{{- end -}}
{{- /* Helm reads every YAML number as a float, so toToml writes `n_parallel = 4.0`; llmhost's integer
settings want `4`. A whole number loses its ".0" (a float setting accepts an integer just as well). */ -}}
{{- regexReplaceAll "(?m)^(\\s*[^\\s=]+ = -?[0-9]+)\\.0$" (toToml $config) "${1}" -}}
{{- end -}}

{{/* The EPP's name (Deployment, Service, ServiceAccount, ConfigMap, Role): "<release>-epp". */}}
{{- define "inferencepool.epp.name" -}}
{{- printf "%s-epp" (.Release.Name | lower | trim | trunc 40 | trimSuffix "-") -}}
{{- end -}}

{{/* The InferencePool's name: the release name (epp's --pool-name). */}}
{{- define "inferencepool.pool.name" -}}
{{- .Release.Name -}}
{{- end -}}

{{/* The pool's API group, from inferencePool.apiVersion. */}}
{{- define "inferencepool.pool.group" -}}
{{- (split "/" .Values.inferencePool.apiVersion)._0 -}}
{{- end -}}

{{/* Name of cluster-scoped objects: unique per release and namespace. */}}
{{- define "inferencepool.cluster.name" -}}
{{- printf "%s-%s-epp" (.Release.Name | lower | trim | trunc 40) (.Release.Namespace | lower | trim | trunc 40) | trunc 84 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "inferencepool.labels" -}}
app.kubernetes.io/name: {{ include "inferencepool.epp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels that select the EPP's pods (Deployment, Service, PodDisruptionBudget, PodMonitoring). */}}
{{- define "inferencepool.selectorLabels" -}}
inferencepool: {{ include "inferencepool.epp.name" . }}
{{- end -}}

{{/* The epp image: [hub/]name:tag (or [registry/]repository:tag), tag defaulting to the chart's appVersion. */}}
{{- define "inferencepool.epp.image" -}}
{{- $image := .Values.inferenceExtension.image -}}
{{- $tag := $image.tag | default .Chart.AppVersion -}}
{{- if $image.repository -}}
{{- /* the newer reference charts' image.registry + image.repository */ -}}
{{- $registry := $image.registry | default "" | trimSuffix "/" -}}
{{- printf "%s%s:%s" (ternary "" (printf "%s/" $registry) (empty $registry)) $image.repository $tag -}}
{{- else if $image.hub -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $image.hub) $image.name $tag -}}
{{- else -}}
{{- printf "%s:%s" $image.name $tag -}}
{{- end -}}
{{- end -}}

{{/* True ("true") when leader election is on: more than one replica that do not share state. */}}
{{- define "inferencepool.ha" -}}
{{- if and (gt (int .Values.inferenceExtension.replicas) 1) (not (include "inferencepool.shared" .)) }}true{{ end -}}
{{- end -}}

{{/* True ("true") when the replicas share state (active-active): inferenceExtension.sharedState.url is set. */}}
{{- define "inferencepool.shared" -}}
{{- if (.Values.inferenceExtension.sharedState | default dict).url }}true{{ end -}}
{{- end -}}

{{/* The ports of a v1 pool, as a list of numbers. */}}
{{- define "inferencepool.targetPorts" -}}
{{- range .Values.inferencePool.targetPorts }}{{ .number }} {{ end -}}
{{- end -}}

{{/* The one port of a v1alpha2 pool (and of GKE's health check): targetPortNumber, else the first target port. */}}
{{- define "inferencepool.firstPort" -}}
{{- if .Values.inferencePool.targetPortNumber -}}
{{- .Values.inferencePool.targetPortNumber -}}
{{- else -}}
{{- (first .Values.inferencePool.targetPorts).number -}}
{{- end -}}
{{- end -}}

{{/* The files of the plugins ConfigMap: default-plugins.yaml and pluginsCustomConfig, as a dict. */}}
{{- define "inferencepool.configFiles" -}}
{{- $files := dict "default-plugins.yaml" (.Files.Get "config/default-plugins.yaml") -}}
{{- range $name, $text := .Values.inferenceExtension.pluginsCustomConfig | default dict }}
{{- $_ := set $files $name $text -}}
{{- end -}}
{{- toYaml $files -}}
{{- end -}}

{{/*
The extra epp flags of inferenceExtension.flags as "--name=value" args: a map (flag → value, sorted by
name) or a list of {name, value}. A flag without a value (null) is passed bare.
*/}}
{{- define "inferencepool.epp.extraFlags" -}}
{{- $flags := .Values.inferenceExtension.flags | default dict -}}
{{- $pairs := list -}}
{{- if kindIs "map" $flags -}}
{{- range $name := keys $flags | sortAlpha }}
{{- $pairs = append $pairs (list $name (get $flags $name)) -}}
{{- end -}}
{{- else if kindIs "slice" $flags -}}
{{- range $flags }}
{{- if not (kindIs "map" .) }}{{ fail (printf "inferenceExtension.flags: list entries are {name, value}, got %v" .) }}{{ end -}}
{{- $pairs = append $pairs (list .name .value) -}}
{{- end -}}
{{- else -}}
{{- fail "inferenceExtension.flags: a map of flag → value, or a list of {name, value}" -}}
{{- end -}}
{{- $managed := dict "pool-name" "the release name" "pool-namespace" "the release namespace" "pool-group" "inferencePool.apiVersion" "grpc-port" "inferenceExtension.extProcPort" "config-file" "inferenceExtension.pluginsConfigFile" "config-text" "inferenceExtension.pluginsConfigFile" "shared-state" "inferenceExtension.sharedState.url" "shared-state-password-file" "inferenceExtension.sharedState.passwordSecret" -}}
{{- range $pairs }}
{{- $name := trimPrefix "--" (toString (index . 0)) -}}
{{- if hasKey $managed $name }}{{ fail (printf "inferenceExtension.flags: --%s is set by the chart from %s" $name (get $managed $name)) }}{{ end -}}
{{- $value := index . 1 -}}
{{- if kindIs "invalid" $value }}
- {{ printf "--%s" $name | quote }}
{{- else }}
- {{ printf "--%s=%v" $name $value | quote }}
{{- end -}}
{{- end -}}
{{- end -}}

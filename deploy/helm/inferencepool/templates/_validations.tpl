{{/* Values the chart cannot work without, checked before anything renders (helm fails with the message). */}}
{{- define "inferencepool.validate" -}}
{{- $pool := .Values.inferencePool -}}
{{- if not (and $pool.modelServers $pool.modelServers.matchLabels) -}}
{{- fail "inferencePool.modelServers.matchLabels is required: the labels of your model-server pods (--set inferencePool.modelServers.matchLabels.app=LABEL)" -}}
{{- end -}}
{{- if not (has $pool.apiVersion (list "inference.networking.k8s.io/v1" "inference.networking.x-k8s.io/v1alpha2")) -}}
{{- fail (printf "inferencePool.apiVersion %q: use inference.networking.k8s.io/v1 or inference.networking.x-k8s.io/v1alpha2" $pool.apiVersion) -}}
{{- end -}}
{{- $ports := $pool.targetPorts | default list -}}
{{- if or (lt (len $ports) 1) (gt (len $ports) 8) -}}
{{- fail (printf "inferencePool.targetPorts: 1 to 8 ports, got %d" (len $ports)) -}}
{{- end -}}
{{- range $ports -}}
{{- if not (and (kindIs "map" .) .number) -}}
{{- fail (printf "inferencePool.targetPorts: every entry is {number: PORT}, got %v" .) -}}
{{- end -}}
{{- end -}}
{{- if not (has (lower .Values.provider.name) (list "gke" "istio" "none")) -}}
{{- fail (printf "provider.name %q: use gke, istio or none" .Values.provider.name) -}}
{{- end -}}
{{- $files := include "inferencepool.configFiles" . | fromYaml -}}
{{- if not (hasKey $files .Values.inferenceExtension.pluginsConfigFile) -}}
{{- fail (printf "inferenceExtension.pluginsConfigFile %q is not in the ConfigMap (files: %s); add it to inferenceExtension.pluginsCustomConfig" .Values.inferenceExtension.pluginsConfigFile (keys $files | sortAlpha | join ", ")) -}}
{{- end -}}
{{- with $pool.modelServerType -}}
{{- if ne . "vllm" -}}
{{- fail (printf "inferencePool.modelServerType %q: epp picks each pod's metric names by its label inference.networking.k8s.io/engine-type (vllm, sglang, trtllm-serve, triton-tensorrt-llm; vllm when unlabelled); label the model-server pods and drop modelServerType" .) -}}
{{- end -}}
{{- end -}}
{{- if lt (int .Values.inferenceExtension.replicas) 1 -}}
{{- fail "inferenceExtension.replicas: at least 1" -}}
{{- end -}}
{{- end -}}

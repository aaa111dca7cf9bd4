{{/* Names, labels and addresses shared by the templates. */}}

{{- define "raftka.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The StatefulSet's name: pod names are <fullname>-<ordinal>, and their DNS labels must stay short. */}}
{{- define "raftka.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains (include "raftka.name" .) .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "raftka.name" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "raftka.headless" -}}
{{- printf "%s-headless" (include "raftka.fullname" .) -}}
{{- end -}}

{{- define "raftka.clientLabel" -}}
{{- printf "%s-client" (include "raftka.fullname" .) -}}
{{- end -}}

{{- define "raftka.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "raftka.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selects the brokers only: the hook and test pods share the instance label, never the component. */}}
{{- define "raftka.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raftka.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end -}}

{{- define "raftka.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* DNS suffix of the per-pod names the headless Service publishes (ready or not). */}}
{{- define "raftka.podDomain" -}}
{{- printf "%s.%s.svc.%s" (include "raftka.headless" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* The client Service's address: what clients bootstrap from. */}}
{{- define "raftka.bootstrap" -}}
{{- printf "%s.%s.svc.%s:%d" (include "raftka.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.ports.grpc) -}}
{{- end -}}

{{/* --peers: the founding controllers, pods 0..controllers-1 (brokers 1..controllers). It depends on
`controllers`, never on `replicas`: every pod, founder or joiner, has the same template. */}}
{{- define "raftka.peers" -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.controllers) -}}
{{- $peers = append $peers (printf "%d=%s-%d.%s:%d" (add1 $i) (include "raftka.fullname" $) $i (include "raftka.podDomain" $) (int $.Values.ports.grpc)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{/* Refusals the schema cannot express (it sees one value at a time). */}}
{{- define "raftka.validate" -}}
{{- if lt (int .Values.replicas) (int .Values.controllers) -}}
{{- fail (printf "replicas (%d) must be at least controllers (%d): the founding controllers are pods 0..%d, and fewer pods lose the metadata log's quorum" (int .Values.replicas) (int .Values.controllers) (sub (int .Values.controllers) 1)) -}}
{{- end -}}
{{- if and (eq (int .Values.controllers) 1) (gt (int .Values.replicas) 1) -}}
{{- fail (printf "controllers 1 with replicas %d: the PodDisruptionBudget (maxUnavailable 1) would let a voluntary disruption take the only controller and with it the metadata log's quorum; use controllers 3" (int .Values.replicas)) -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) (not .Values.tls.certManager.issuer.name) -}}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret holding tls.crt, tls.key and ca.crt (or tls.certManager.issuer.name, to have cert-manager issue it)" -}}
{{- end -}}
{{- if and .Values.tls.certManager.issuer.name (not .Values.tls.enabled) -}}
{{- fail "tls.certManager.issuer is set but tls.enabled is false: nothing would mount the certificate; set tls.enabled=true" -}}
{{- end -}}
{{- if and .Values.tls.principalRules (not .Values.tls.enabled) -}}
{{- fail "tls.principalRules map client certificates, which only tls.enabled asks for; set tls.enabled=true" -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding tls.crt, tls.key and ca.crt: the one given, else the one the Certificate fills. */}}
{{- define "raftka.tlsSecret" -}}
{{- default (printf "%s-tls" (include "raftka.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{/* TLS of the raftka CLI in every pod of the chart (with tls.enabled): the flags' RAFTKA_TLS_* variables,
pointing at the mounted Secret. A pod's client certificate is the brokers' own (to the authorizer,
Broker:*, a super-user). */}}
{{- define "raftka.tlsEnv" -}}
- name: RAFTKA_TLS_CA
  value: {{ .Values.tls.mountPath }}/ca.crt
- name: RAFTKA_TLS_CERT
  value: {{ .Values.tls.mountPath }}/tls.crt
- name: RAFTKA_TLS_KEY
  value: {{ .Values.tls.mountPath }}/tls.key
{{- end -}}

{{- define "raftka.tlsVolumeMount" -}}
- name: tls
  mountPath: {{ .Values.tls.mountPath }}
  readOnly: true
{{- end -}}

{{- define "raftka.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ include "raftka.tlsSecret" . }}
{{- end -}}

{{/* A probe of one health service of the broker (dict: root, service, path). Without TLS, Kubernetes'
gRPC probe. With TLS, which that probe cannot speak (plaintext only, no client certificate), an httpGet
of the metrics port's path answering for the same service (`raftka.cluster.health`), HTTPS with
tls.metrics: the kubelet does not verify the certificate of an HTTPS probe. */}}
{{- define "raftka.probe" -}}
{{- $values := .root.Values -}}
{{- if $values.tls.enabled -}}
httpGet:
  path: {{ .path }}
  port: {{ $values.ports.metrics }}
  scheme: {{ ternary "HTTPS" "HTTP" $values.tls.metrics }}
{{- else -}}
grpc:
  port: {{ $values.ports.grpc }}
  service: {{ .service }}
{{- end -}}
{{- end -}}

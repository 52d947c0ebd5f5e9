{{/*
shared templates of the suite. every per-service template ranges over
.Values.services and calls these with a context made by "commerce.ctx":
  dict "root" $ "name" <service name> "svc" <serviceDefaults merged with the service>
*/}}

{{- define "commerce.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* the enabled services as "name name ..." in a stable order */}}
{{- define "commerce.enabled" -}}
{{- $out := list -}}
{{- range $name := keys .Values.services | sortAlpha -}}
{{- if (index $.Values.services $name).enabled -}}
{{- $out = append $out $name -}}
{{- end -}}
{{- end -}}
{{- join " " $out -}}
{{- end -}}

{{/* (ctx root name) -> the service's values over serviceDefaults, as YAML */}}
{{- define "commerce.svcValues" -}}
{{- $svc := mergeOverwrite (deepCopy .root.Values.serviceDefaults) (deepCopy (index .root.Values.services .name)) -}}
{{- toYaml $svc -}}
{{- end -}}

{{/* per-service object name: <fullname>-<service> */}}
{{- define "commerce.name" -}}
{{- printf "%s-%s" (include "commerce.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "commerce.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: commerce
{{ include "commerce.selectorLabels" . }}
{{- end -}}

{{- define "commerce.selectorLabels" -}}
app.kubernetes.io/name: commerce-{{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "commerce.image" -}}
{{- $i := .root.Values.image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository (default .root.Chart.AppVersion $i.tag) -}}
{{- end -}}
{{- end -}}

{{/* the knob names a binary prints (files/<file>-knobs.md), as a list */}}
{{- define "commerce.knobNames" -}}
{{- $path := printf "files/%s-knobs.md" .file -}}
{{- $md := .root.Files.Get $path -}}
{{- if not $md -}}
{{- fail (printf "%s is missing: run scripts/k8s-knobs.sh to write it from commerce-%s --config-markdown" $path .file) -}}
{{- end -}}
{{- $names := list -}}
{{- range regexFindAll "(?m)^\\| `[A-Z0-9_]+`" $md -1 -}}
{{- $names = append $names (. | trimPrefix "| `" | trimSuffix "`") -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* knobs the chart sets itself: refused in settings */}}
{{- define "commerce.managedKnobs" -}}
{{- $m := list "GRPC_LISTEN" "ADMIN_LISTEN" "PG_DSN" "KAFKA_BROKERS" "DRAIN_GRACE_SECONDS" "AUTH_MODE" "ALLOW_INSECURE" "JWT_HS256_SECRET" "JWT_RS256_PUBLIC_KEY_FILE" "JWT_JWKS_FILE" "JWT_ISSUER" "JWT_AUDIENCE" "TLS_CERT_FILE" "TLS_KEY_FILE" "TLS_CLIENT_CA_FILE" -}}
{{- if and (eq .name "commission") .root.Values.webhookSecrets.existingSecret -}}
{{- $m = append $m "COMMISSION_SECRETS_KEY_FILE" -}}
{{- end -}}
{{- if include "commerce.rateLimitsConfigMap" .root -}}
{{- $m = append $m "RATE_LIMITS_FILE" -}}
{{- end -}}
{{- range .svc.peers -}}
{{- $p := upper . -}}
{{- $m = concat $m (list (printf "%s_TARGET" $p) (printf "%s_TLS_CA_FILE" $p) (printf "%s_TLS_CERT_FILE" $p) (printf "%s_TLS_KEY_FILE" $p) (printf "%s_TOKEN_FILE" $p)) -}}
{{- end -}}
{{- toJson $m -}}
{{- end -}}

{{/* a setting's value as the binary reads it: YAML booleans (on/off are
     booleans in YAML 1.1) become on/off */}}
{{- define "commerce.settingValue" -}}
{{- if kindIs "bool" . -}}
{{- ternary "on" "off" . -}}
{{- else if kindIs "float64" . -}}
{{- int64 . | toString -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* (ctx) -> the non-secret environment of a service as a YAML map: the
     chart's plumbing, then commonSettings and the service's settings, each
     key checked against the binary's knob list */}}
{{- define "commerce.settings" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $known := concat (include "commerce.knobNames" (dict "root" $root "file" "common") | fromJsonArray) (include "commerce.knobNames" (dict "root" $root "file" .name) | fromJsonArray) -}}
{{- $managed := include "commerce.managedKnobs" . | fromJsonArray -}}
{{- $out := dict -}}
{{- $_ := set $out "GRPC_LISTEN" (printf "0.0.0.0:%v" $svc.grpcPort) -}}
{{- $_ = set $out "ADMIN_LISTEN" (printf "0.0.0.0:%v" $svc.adminPort) -}}
{{- $_ = set $out "KAFKA_BROKERS" $root.Values.kafka.brokers -}}
{{- $_ = set $out "DRAIN_GRACE_SECONDS" (toString $svc.drainGraceSeconds) -}}
{{- $_ = set $out "AUTH_MODE" (toString $root.Values.auth.mode) -}}
{{- if eq (toString $root.Values.auth.mode) "off" -}}
{{- if not $root.Values.auth.allowInsecure -}}
{{- fail "auth.mode: \"off\" is refused by the services on the pods' all-interfaces address: keep mode required with a key, or set auth.allowInsecure: true as well (development only)" -}}
{{- end -}}
{{- $_ = set $out "ALLOW_INSECURE" "1" -}}
{{- end -}}
{{- with $root.Values.auth.issuer }}{{ $_ = set $out "JWT_ISSUER" . }}{{ end -}}
{{- with $root.Values.auth.audience }}{{ $_ = set $out "JWT_AUDIENCE" . }}{{ end -}}
{{- $authOn := ne (toString $root.Values.auth.mode) "off" -}}
{{- if and $authOn $root.Values.auth.rs256PublicKeyKey -}}
{{- $_ = set $out "JWT_RS256_PUBLIC_KEY_FILE" (printf "/etc/commerce/jwt/%s" $root.Values.auth.rs256PublicKeyKey) -}}
{{- end -}}
{{- if and $authOn $root.Values.auth.jwksKey -}}
{{- $_ = set $out "JWT_JWKS_FILE" (printf "/etc/commerce/jwt/%s" $root.Values.auth.jwksKey) -}}
{{- end -}}
{{- if $root.Values.tls.enabled -}}
{{- $_ = set $out "TLS_CERT_FILE" "/etc/commerce/tls/tls.crt" -}}
{{- $_ = set $out "TLS_KEY_FILE" "/etc/commerce/tls/tls.key" -}}
{{- if $root.Values.tls.clientAuth -}}
{{- $_ = set $out "TLS_CLIENT_CA_FILE" "/etc/commerce/tls/ca.crt" -}}
{{- end -}}
{{- end -}}
{{- if include "commerce.rateLimitsConfigMap" $root -}}
{{- $_ = set $out "RATE_LIMITS_FILE" (printf "/etc/commerce/rate-limits/%s" $root.Values.rateLimits.key) -}}
{{- end -}}
{{- if and (eq .name "commission") $root.Values.webhookSecrets.existingSecret -}}
{{- $_ = set $out "COMMISSION_SECRETS_KEY_FILE" (printf "/etc/commerce/webhook-secrets/%s" $root.Values.webhookSecrets.key) -}}
{{- end -}}
{{- range $peer := $svc.peers -}}
{{- $pv := index $root.Values.services $peer | default dict -}}
{{- if not $pv.enabled -}}
{{- fail (printf "services.%s.peers: %s is not an enabled service" $.name $peer) -}}
{{- end -}}
{{- $p := upper $peer -}}
{{- $_ = set $out (printf "%s_TARGET" $p) (printf "%s:%v" (include "commerce.name" (dict "root" $root "name" $peer)) $pv.grpcPort) -}}
{{- $tok := index ($root.Values.auth.serviceTokenKeys | default dict) $peer -}}
{{- if and $tok (ne (toString $root.Values.auth.mode) "off") -}}
{{- $_ = set $out (printf "%s_TOKEN_FILE" $p) (printf "/etc/commerce/jwt/%s" $tok) -}}
{{- end -}}
{{- if $root.Values.tls.enabled -}}
{{- $_ = set $out (printf "%s_TLS_CA_FILE" $p) "/etc/commerce/tls/ca.crt" -}}
{{- if $root.Values.tls.clientAuth -}}
{{- $_ = set $out (printf "%s_TLS_CERT_FILE" $p) "/etc/commerce/tls/tls.crt" -}}
{{- $_ = set $out (printf "%s_TLS_KEY_FILE" $p) "/etc/commerce/tls/tls.key" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $from, $m := dict "commonSettings" $root.Values.commonSettings (printf "services.%s.settings" .name) ($svc.settings | default dict) -}}
{{- range $k, $v := $m -}}
{{- if has $k $managed -}}
{{- fail (printf "%s.%s: the chart sets %s itself (see k8s/README.md: database, kafka, auth, tls, webhookSecrets, peers, drainGraceSeconds)" $from $k $k) -}}
{{- end -}}
{{- if not (has $k $known) -}}
{{- fail (printf "%s.%s: commerce-%s has no such setting (its knobs: files/common-knobs.md, files/%s-knobs.md)" $from $k $.name $.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := $root.Values.commonSettings -}}
{{- $_ = set $out $k (include "commerce.settingValue" $v) -}}
{{- end -}}
{{- range $k, $v := ($svc.settings | default dict) -}}
{{- $_ = set $out $k (include "commerce.settingValue" $v) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* environment from Secrets, by reference */}}
{{- define "commerce.secretEnv" -}}
- name: PG_DSN
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.database.existingSecret }}
      key: {{ .root.Values.database.dsnKey }}
{{- if .root.Values.auth.hs256SecretKey }}
- name: JWT_HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.auth.existingSecret }}
      key: {{ .root.Values.auth.hs256SecretKey }}
{{- end }}
{{- end -}}

{{/* (ctx) -> the keys of auth.existingSecret this service reads as files
     under /etc/commerce/jwt, space-separated ("" = none): the RS256 key, the
     JWKS, and the service tokens of its peers. mounted as a whole directory,
     not with subPath, so the kubelet's updates reach the running pods (the
     services re-read the JWKS and tokens when they change) */}}
{{- define "commerce.jwtFiles" -}}
{{- $keys := list -}}
{{- with .root.Values.auth.rs256PublicKeyKey }}{{ $keys = append $keys . }}{{ end -}}
{{- with .root.Values.auth.jwksKey }}{{ $keys = append $keys . }}{{ end -}}
{{- range $peer := .svc.peers -}}
{{- with index ($.root.Values.auth.serviceTokenKeys | default dict) $peer }}{{ $keys = append $keys . }}{{ end -}}
{{- end -}}
{{- if ne (toString .root.Values.auth.mode) "off" -}}
{{- join " " (uniq $keys) -}}
{{- end -}}
{{- end -}}

{{/* the ConfigMap holding RATE_LIMITS_FILE: the chart's own when
     rateLimits.file is set, else rateLimits.existingConfigMap, else none */}}
{{- define "commerce.rateLimitsConfigMap" -}}
{{- if .Values.rateLimits.file -}}
{{- printf "%s-rate-limits" (include "commerce.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- .Values.rateLimits.existingConfigMap -}}
{{- end -}}
{{- end -}}

{{- define "commerce.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "commerce.rateLimitsConfigMap" .root }}
- name: rate-limits
  mountPath: /etc/commerce/rate-limits
  readOnly: true
{{- end }}
{{- if .root.Values.tls.enabled }}
- name: tls
  mountPath: /etc/commerce/tls
  readOnly: true
{{- end }}
{{- if include "commerce.jwtFiles" . }}
- name: jwt
  mountPath: /etc/commerce/jwt
  readOnly: true
{{- end }}
{{- if and (eq .name "commission") .root.Values.webhookSecrets.existingSecret }}
- name: webhook-secrets
  mountPath: /etc/commerce/webhook-secrets
  readOnly: true
{{- end }}
{{- end -}}

{{- define "commerce.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- with include "commerce.rateLimitsConfigMap" .root }}
- name: rate-limits
  configMap:
    name: {{ . }}
    items:
      - key: {{ $.root.Values.rateLimits.key }}
        path: {{ $.root.Values.rateLimits.key }}
{{- end }}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .root.Values.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- with include "commerce.jwtFiles" . }}
- name: jwt
  secret:
    secretName: {{ $.root.Values.auth.existingSecret }}
    defaultMode: 0440
    items:
{{- range splitList " " . }}
      - key: {{ . }}
        path: {{ . }}
{{- end }}
{{- end }}
{{- if and (eq .name "commission") .root.Values.webhookSecrets.existingSecret }}
- name: webhook-secrets
  secret:
    secretName: {{ .root.Values.webhookSecrets.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .root.Values.webhookSecrets.key }}
        path: {{ .root.Values.webhookSecrets.key }}
{{- end }}
{{- end -}}

{{- define "commerce.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "commerce.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{- define "commerce.terminationGrace" -}}
{{- $min := add .svc.preStopSleepSeconds .svc.drainGraceSeconds -}}
{{- $t := int .svc.terminationGracePeriodSeconds -}}
{{- if eq $t 0 -}}
{{- add $min 10 -}}
{{- else if le $t (int $min) -}}
{{- fail (printf "services.%s.terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + drainGraceSeconds (%d), or the kubelet kills calls still draining" .name $t (int $min)) -}}
{{- else -}}
{{- $t -}}
{{- end -}}
{{- end -}}

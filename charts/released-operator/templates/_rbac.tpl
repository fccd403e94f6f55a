{{- /*
The operator's RBAC rules, in two parts. operator/whatsapp_operator/rbac.py (CLUSTER_RULES,
NAMESPACED_RULES) is the source of truth; tests/unit/chart/test_chart.py fails when these rules
and those lists differ. docs/rbac.md explains each rule.
*/}}

{{/* Cluster-scoped in every mode: nothing here holds tenants' data. */}}
{{- define "released-operator.clusterRules" -}}
# kopf: resource discovery; the operator: does the ServiceMonitor CRD exist?
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# kopf: following namespaces (RELEASED_NAMESPACES patterns).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- if .Values.admission.enabled }}
# The admission webhook's configuration, which kopf creates and keeps up to date.
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingwebhookconfigurations"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
{{- end }}
{{- if and (include "released-operator.peering" .) (eq .Values.rbac.scope "cluster") }}
# kopf peering (replicas > 1) of a cluster-wide operator: one active, the others on standby.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* Wherever agents live: cluster-wide (scope cluster) or in each watched namespace. */}}
{{- define "released-operator.namespacedRules" -}}
# The custom resource: watch it, keep kopf's progress annotations and the finalizer.
- apiGroups: ["whatsapp.released.io"]
  resources: ["whatsappagents"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["whatsapp.released.io"]
  resources: ["whatsappagents/status"]
  verbs: ["get", "patch", "update"]
# The children of each agent (server-side apply uses patch; create for the first apply).
- apiGroups: [""]
  resources: ["configmaps", "secrets", "services", "serviceaccounts", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# The retention purge; its Jobs and pods are the CronJob controller's, so no rights on them.
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses", "networkpolicies"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Readiness of the bots' pods (read only).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events about agents (kopf.info / kopf.warn), both APIs.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if and (include "released-operator.peering" .) (eq .Values.rbac.scope "namespaced") }}
# kopf peering (replicas > 1) of a namespaced operator: a KopfPeering in each namespace.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* The namespaces of the namespaced mode: literal names, at least one. */}}
{{- define "released-operator.roleNamespaces" -}}
{{- if not .Values.operator.namespaces }}
{{- fail "rbac.scope=namespaced needs operator.namespaces: the namespaces whose agents the operator serves" }}
{{- end }}
{{- range .Values.operator.namespaces }}
{{- if or (contains "*" .) (contains "?" .) (contains "!" .) (contains "," .) }}
{{- fail (printf "rbac.scope=namespaced needs literal namespace names in operator.namespaces, not the pattern %q: a Role is created in each" .) }}
{{- end }}
{{- end }}
{{- join "," .Values.operator.namespaces }}
{{- end }}

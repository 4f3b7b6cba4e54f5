{{/* Labels in the Kubernetes recommended (app.kubernetes.io/*) form, as z2jh's own. */}}
{{- define "spe.labels" -}}
app.kubernetes.io/name: spe
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "spe.selector" -}}
app.kubernetes.io/name: spe
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "spe.image" -}}
{{ .Values.image.controlplane.name }}:{{ .Values.image.controlplane.tag }}
{{- end }}

{{/* Every SPE container: non-root, read-only root, no capabilities, RuntimeDefault seccomp. */}}
{{- define "spe.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "spe.containerSecurity" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* SPE's settings: the ConfigMap and the Secret, plus the namespace it runs in. */}}
{{- define "spe.env" -}}
envFrom:
  - configMapRef:
      name: spe-settings
  - secretRef:
      name: {{ .Values.secrets.name }}
env:
  - name: SPE_K8S_NAMESPACE
    valueFrom:
      fieldRef:
        fieldPath: metadata.namespace
{{- end }}

{{/* State and data folders: /tmp and the state dir in memory-backed emptyDirs, data shared. */}}
{{- define "spe.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
- name: state
  emptyDir:
    sizeLimit: 1Gi
- name: data
  persistentVolumeClaim:
    claimName: {{ .Values.dataVolume.existingClaim | default "spe-data" }}
{{- end }}

{{- define "spe.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: /var/lib/spe
- name: data
  mountPath: /var/lib/spe/data
{{- end }}

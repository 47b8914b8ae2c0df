{{/*
Everything one controller runs with: ServiceAccount, Deployment, metrics Service, PodDisruptionBudget,
and (optionally) ServiceMonitor. Its RBAC is in rbac-<controller>.yaml, because it differs per controller.
Arguments: (dict "root" $ "component" "pack-controller" "values" .Values.packController
               "args" (list ...controller flags...) "env" (list ...) "tmpSizeLimit" "64Mi")
*/}}
{{- define "pack-operator.workload" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $name := include "pack-operator.componentName" . }}
{{- $sel := dict "root" $root "component" .component }}
{{- if and (gt (int $v.replicas) 1) (not $v.leaderElection.enabled) }}
{{- fail (printf "%s: replicas=%v needs leaderElection.enabled=true (only one replica may act)" .component $v.replicas) }}
{{- end }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "pack-operator.componentLabels" $sel | nindent 4 }}
  {{- with $v.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "pack-operator.componentLabels" $sel | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "pack-operator.selectorLabels" $sel | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "pack-operator.selectorLabels" $sel | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ $name }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      # Standbys release nothing on the way out; the leader releases its Lease on SIGTERM.
      terminationGracePeriodSeconds: 30
      containers:
        - name: controller
          image: "{{ $v.image.repository }}:{{ $v.image.tag | default $root.Chart.AppVersion }}"
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args:
            - --metrics-address=0.0.0.0:8080
            - --log-format={{ $root.Values.logFormat }}
            - --log-level={{ $root.Values.logLevel }}
            - --leader-elect={{ $v.leaderElection.enabled }}
            {{- if $v.leaderElection.enabled }}
            - --lease-name={{ .component }}
            - --lease-duration={{ $v.leaderElection.leaseDuration }}
            - --renew-deadline={{ $v.leaderElection.renewDeadline }}
            - --retry-period={{ $v.leaderElection.retryPeriod }}
            {{- end }}
            - --concurrency={{ $v.concurrency }}
            {{- range .args }}
            - {{ . | quote }}
            {{- end }}
            {{- range $v.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          env:
            # The Lease lives in the release namespace (the Role for it is there).
            - name: LEADER_ELECTION_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            # Leader identity and Event reporter instance.
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: 8080
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            initialDelaySeconds: 5
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 5
            failureThreshold: 3
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        # The root filesystem is read-only; /tmp is the only writable place.
        - name: tmp
          emptyDir:
            sizeLimit: {{ .tmpSizeLimit }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      affinity:
        {{- if $v.affinity }}
        {{- toYaml $v.affinity | nindent 8 }}
        {{- else }}
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    {{- include "pack-operator.selectorLabels" $sel | nindent 20 }}
        {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "pack-operator.metricsServiceName" $sel }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "pack-operator.componentLabels" $sel | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "pack-operator.selectorLabels" $sel | nindent 4 }}
  ports:
    - name: metrics
      port: 8080
      targetPort: metrics
      protocol: TCP
{{- if $v.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "pack-operator.componentLabels" $sel | nindent 4 }}
spec:
  maxUnavailable: {{ $v.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "pack-operator.selectorLabels" $sel | nindent 6 }}
{{- end }}
{{- if $root.Values.metrics.serviceMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "pack-operator.componentLabels" $sel | nindent 4 }}
    {{- with $root.Values.metrics.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "pack-operator.selectorLabels" $sel | nindent 6 }}
  endpoints:
    - port: metrics
      path: /metrics
      interval: {{ $root.Values.metrics.serviceMonitor.interval }}
      scrapeTimeout: {{ $root.Values.metrics.serviceMonitor.scrapeTimeout }}
{{- end }}
{{- end }}

{{/*
The Role (in the release namespace) and RoleBinding for the leader-election Lease of one controller.
Arguments: (dict "root" $ "component" "pack-controller").
*/}}
{{- define "pack-operator.leaderRBAC" -}}
{{- $key := .component | replace "-controller" "Controller" }}
{{- if (index .root.Values $key).leaderElection.enabled }}
{{- $name := include "pack-operator.componentName" . }}
{{- $sel := dict "root" .root "component" .component }}
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}-leader-election
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "pack-operator.componentLabels" $sel | nindent 4 }}
rules:
  # create cannot be limited to a name; get and update can (the Lease is named after the controller).
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["create"]
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    resourceNames: [{{ .component | quote }}]
    verbs: ["get", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}-leader-election
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "pack-operator.componentLabels" $sel | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}-leader-election
subjects:
  - kind: ServiceAccount
    name: {{ $name }}
    namespace: {{ .root.Release.Namespace }}
{{- end }}
{{- end }}

{{/* Rules to publish Events (kube-runtime's Recorder writes events.k8s.io/v1 only; patch: a repeated
Event becomes a series). */}}
{{- define "pack-operator.eventRules" -}}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

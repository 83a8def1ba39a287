// Offline schema validation of Kubernetes objects with the kubernetes-models packages (their
// JSON schemas are generated from the Kubernetes OpenAPI spec and the CRDs).
import { Certificate } from '@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate'
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule'
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor'
import { Deployment } from 'kubernetes-models/apps/v1/Deployment'
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler'
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget'
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap'
import { Namespace } from 'kubernetes-models/v1/Namespace'
import { Secret } from 'kubernetes-models/v1/Secret'
import { Service } from 'kubernetes-models/v1/Service'

interface Validatable {
  validate(): void
}

// The constructors take the object as their own interface type; the data comes from YAML here,
// so it is passed as unknown and the schema validation is what checks it.
type ModelClass = new (data: never) => Validatable

const MODELS: Record<string, ModelClass> = {
  'apps/v1/Deployment': Deployment,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'v1/ConfigMap': ConfigMap,
  'v1/Namespace': Namespace,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
  'cert-manager.io/v1/Certificate': Certificate,
}

/** Throws when the object does not match the schema of its apiVersion and kind. */
export function validateObject(object: Record<string, unknown>): void {
  const key = `${String(object.apiVersion)}/${String(object.kind)}`
  const Model = MODELS[key]
  if (Model === undefined) throw new Error(`no schema known for ${key}`)
  new Model(object as never).validate()
}

// deploy/ must be something an operator copies and applies, and must not drift from the code:
// every Kubernetes object validates against its schema, and every env var, port, probe path and
// file path named in the Dockerfile, compose file, manifests and systemd unit exists in the
// config schema and the admin server. A renamed key or path breaks this test.
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import { loadConfig, forEachSchemaKey } from '../src/config/load.js'
import { schema } from '../src/config/schema.js'
import { validateObject } from './helpers/k8s.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { runs, skipWithout } from './helpers/tools.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8')
const BASE = 'deploy/kubernetes/base'
const OVERLAY = 'deploy/kubernetes/overlays/example'

const ENV_NAMES = new Set<string>()
forEachSchemaKey(schema, (_path, spec) => ENV_NAMES.add(String(spec.env)))

type K8sObject = Record<string, unknown> & {
  apiVersion: string
  kind: string
  metadata?: { name?: string }
}

function manifests(dir: string): K8sObject[] {
  const objects: K8sObject[] = []
  for (const file of readdirSync(join(ROOT, dir)).filter((f) => f.endsWith('.yaml'))) {
    for (const doc of parseAllDocuments(read(join(dir, file)))) {
      if (doc.errors.length > 0) throw new Error(`${dir}/${file}: ${doc.errors[0]?.message ?? ''}`)
      const object = doc.toJS() as K8sObject | null
      if (object !== null && object.kind !== 'Kustomization') objects.push(object)
    }
  }
  return objects
}

// The caller names the shape it is about to read; the schema validation above vouches for it.
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters
function find<T = K8sObject>(objects: K8sObject[], kind: string, name?: string): T {
  const found = objects.find(
    (o) => o.kind === kind && (name === undefined || o.metadata?.name === name),
  )
  if (found === undefined) throw new Error(`no ${kind} ${name ?? ''}`)
  return found as T
}

interface Container {
  args: string[]
  env?: { name: string; value?: string }[]
  ports: { name: string; containerPort: number }[]
  readinessProbe: { httpGet: { path: string; port: string } }
  livenessProbe: { httpGet: { path: string; port: string } }
  lifecycle: { preStop: { exec: { command: string[] } } }
  volumeMounts: { name: string; mountPath: string }[]
}
interface DeploymentSpec {
  spec: {
    replicas: number
    template: {
      spec: {
        enableServiceLinks: boolean
        terminationGracePeriodSeconds: number
        securityContext: { runAsNonRoot: boolean }
        containers: (Container & {
          securityContext: { readOnlyRootFilesystem: boolean; capabilities: { drop: string[] } }
        })[]
        volumes: { name: string; configMap?: { name: string }; secret?: { secretName: string } }[]
      }
    }
  }
}

const base = manifests(BASE)
const overlay = manifests(OVERLAY)

t.test('every Kubernetes object validates against its schema', async (t) => {
  for (const object of [...base, ...overlay]) {
    t.doesNotThrow(() => validateObject(object), `${object.kind} ${object.metadata?.name ?? ''}`)
  }
  const kinds = new Set(base.map((o) => o.kind))
  for (const kind of [
    'Deployment',
    'Service',
    'PodDisruptionBudget',
    'HorizontalPodAutoscaler',
    'NetworkPolicy',
    'ServiceMonitor',
    'PrometheusRule',
  ]) {
    t.ok(kinds.has(kind), `the base has a ${kind}`)
  }
  t.ok(
    overlay.some((o) => o.kind === 'Certificate'),
    'the overlay has a cert-manager Certificate',
  )
  t.throws(
    () => validateObject({ ...find(base, 'Deployment'), spec: { replicas: 'two' } }),
    'the validator does refuse a broken object',
  )
})

// Debian's kubernetes-client (1.20) is too old for the overlay's `labels` and `replicas`: CI's
// kubectl is the one its machine image ships.
const KUBECTL = skipWithout('kubectl', runs('kubectl', ['version', '--client']), 'machine image')
t.test('kustomize output validates too', { skip: KUBECTL }, async (t) => {
  for (const dir of [OVERLAY]) {
    const built = spawnSync('kubectl', ['kustomize', join(ROOT, dir)], {
      encoding: 'utf8',
      timeout: 60_000,
    })
    t.equal(built.status, 0, built.stderr)
    const objects = parseAllDocuments(built.stdout).map((d) => d.toJS() as K8sObject)
    for (const object of objects) {
      t.doesNotThrow(() => validateObject(object), `${object.kind} ${object.metadata?.name ?? ''}`)
    }
    const deployment = find<{ metadata: { namespace: string } } & DeploymentSpec>(
      objects,
      'Deployment',
    )
    t.equal(deployment.metadata.namespace, 'mqtt-edge')
    t.equal(deployment.spec.replicas, 3)
    const configMap = find<{ metadata: { name: string } }>(objects, 'ConfigMap')
    const volume = deployment.spec.template.spec.volumes.find((v) => v.name === 'config')
    t.equal(
      volume?.configMap?.name,
      configMap.metadata.name,
      'the generated ConfigMap name is wired in',
    )
  }
})

t.test('the Deployment matches the config and the admin server', async (t) => {
  const deployment = find<DeploymentSpec>(base, 'Deployment')
  const pod = deployment.spec.template.spec
  const container = pod.containers[0]
  if (container === undefined) throw new Error('no container')
  t.ok(deployment.spec.replicas >= 2, '2+ replicas')
  t.equal(pod.enableServiceLinks, false)
  t.equal(pod.securityContext.runAsNonRoot, true)
  t.equal(container.securityContext.readOnlyRootFilesystem, true)
  t.same(container.securityContext.capabilities.drop, ['ALL'])

  for (const dir of [BASE, OVERLAY]) {
    // The ConfigMap's file is a real config: strict validation refuses unknown or bad keys.
    const { config } = loadConfig({
      env: { NODE_ENV: 'production' },
      configFile: join(ROOT, dir, 'config.json'),
    })
    const ports = Object.fromEntries(container.ports.map((p) => [p.name, p.containerPort]))
    t.equal(ports.wss, config.listen.port, `${dir}: container port wss = listen.port`)
    t.equal(ports.admin, config.admin.port, `${dir}: container port admin = admin.port`)
    t.not(config.admin.host, '127.0.0.1', `${dir}: admin reachable by the kubelet's probes`)
    const preStop = Number(container.lifecycle.preStop.exec.command[1])
    t.ok(
      pod.terminationGracePeriodSeconds * 1000 > config.shutdown.grace + preStop * 1000,
      `${dir}: terminationGracePeriodSeconds above shutdown.grace + preStop`,
    )
    const mounts = Object.fromEntries(container.volumeMounts.map((m) => [m.name, m.mountPath]))
    t.equal(posix.dirname(config.tls.cert), mounts.tls, `${dir}: tls.cert in the Secret mount`)
    t.equal(posix.dirname(config.tls.key), mounts.tls, `${dir}: tls.key in the Secret mount`)
    t.equal(
      container.args[1],
      posix.join(mounts.config ?? '', 'config.json'),
      `${dir}: --config in the ConfigMap mount`,
    )
  }
  t.equal(container.args[0], '--config')
  t.equal(container.readinessProbe.httpGet.port, 'admin')
  t.equal(container.livenessProbe.httpGet.port, 'admin')
  const secret = pod.volumes.find((v) => v.name === 'tls')?.secret?.secretName
  const certificate = find<{ spec: { secretName: string } }>(overlay, 'Certificate')
  t.equal(certificate.spec.secretName, secret, 'cert-manager writes the Secret the pods mount')

  // The probe paths answer on a live admin listener (not 404).
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port)
  for (const path of [
    container.readinessProbe.httpGet.path,
    container.livenessProbe.httpGet.path,
  ]) {
    const res = await fetch(`${gw.adminUrl}${path}`)
    t.equal(res.status, 200, `${path} answers 200 on the admin listener`)
  }
  const monitor = find<{ spec: { endpoints: { port: string; path: string }[] } }>(
    base,
    'ServiceMonitor',
  )
  const endpoint = monitor.spec.endpoints[0]
  t.equal(endpoint?.port, 'admin')
  const scraped = await fetch(`${gw.adminUrl}${endpoint?.path ?? ''}`)
  t.match(
    await scraped.text(),
    /drawbridge_connections_active/,
    'the ServiceMonitor path serves the metrics',
  )
})

t.test('Services and NetworkPolicy point at the container ports', async (t) => {
  const deployment = find<DeploymentSpec>(base, 'Deployment')
  const containerPorts = deployment.spec.template.spec.containers[0]?.ports ?? []
  const byName = new Map(containerPorts.map((p) => [p.name, p.containerPort]))
  const service = find<{ spec: { type: string; ports: { port: number; targetPort: string }[] } }>(
    base,
    'Service',
    'drawbridge',
  )
  t.equal(service.spec.type, 'LoadBalancer')
  t.same(
    service.spec.ports.map((p) => [p.port, byName.get(p.targetPort)]),
    [[443, 8443]],
    '443 -> 8443',
  )
  const admin = find<{ spec: { ports: { targetPort: string }[] } }>(
    base,
    'Service',
    'drawbridge-admin',
  )
  t.ok(byName.has(admin.spec.ports[0]?.targetPort ?? ''), 'admin Service targets a container port')
  const policy = find<{
    spec: { ingress: { from?: unknown[]; ports: { port: number }[] }[] }
  }>(base, 'NetworkPolicy')
  const open = policy.spec.ingress.find((rule) => rule.from === undefined)
  const monitoring = policy.spec.ingress.find((rule) => rule.from !== undefined)
  t.same(
    open?.ports.map((p) => p.port),
    [byName.get('wss')],
    'wss open to all',
  )
  t.same(
    monitoring?.ports.map((p) => p.port),
    [byName.get('admin')],
    'admin only from monitoring',
  )
})

t.test('the PrometheusRule carries the alert rules file unchanged', async (t) => {
  const rules = parse(read('deploy/prometheus/alerts.yml')) as { groups: unknown[] }
  const rule = find<{ spec: { groups: unknown[] } }>(base, 'PrometheusRule')
  t.same(rule.spec.groups, rules.groups)
})

t.test('Dockerfile: env vars, ports, health check', async (t) => {
  const dockerfile = read('Dockerfile')
  const env = Object.fromEntries(
    [...dockerfile.matchAll(/(DRAWBRIDGE_[A-Z_]+)=(\S+)/g)].map((m) => [m[1] ?? '', m[2] ?? '']),
  )
  const nodeEnv = /NODE_ENV=(\S+)/.exec(dockerfile)?.[1]
  t.equal(nodeEnv, 'production', 'the image runs the production profile')
  t.ok(Object.keys(env).length >= 5, 'sets DRAWBRIDGE_* env')
  for (const name of Object.keys(env)) t.ok(ENV_NAMES.has(name), `${name} is a setting`)
  const expose = /^EXPOSE (.+)$/m.exec(dockerfile)?.[1]?.split(/\s+/).map(Number)
  t.same(
    expose,
    [Number(env.DRAWBRIDGE_LISTEN_PORT), Number(env.DRAWBRIDGE_ADMIN_PORT)],
    'EXPOSE = listen and admin ports',
  )
  t.match(dockerfile, /HEALTHCHECK[\s\S]*\/healthz/, 'HEALTHCHECK on /healthz')
  t.match(dockerfile, /^USER node$/m, 'non-root')
  t.match(dockerfile, /npm ci --omit=dev/, 'production dependencies only')
  t.match(dockerfile, /^FROM node:2[24]|ARG NODE_IMAGE=node:2[24]/m, 'Node 22 or 24 LTS')
  // The image's env alone (plus a broker) is a valid production configuration.
  const { config } = loadConfig({
    env: { ...env, NODE_ENV: nodeEnv ?? '', DRAWBRIDGE_UPSTREAM_BROKERS: 'broker:1883' },
  })
  t.equal(config.profile, 'production')
  t.equal(config.tls.enabled, true)
})

t.test('docker compose: parses, publishes only wss, admin on localhost', async (t) => {
  const compose = parse(read('deploy/compose/docker-compose.yml')) as {
    services: Record<
      string,
      { ports?: string[]; environment?: Record<string, string>; image?: string }
    >
  }
  const drawbridge = compose.services.drawbridge
  t.ok(drawbridge, 'has the drawbridge service')
  t.ok(
    compose.services.broker?.image?.startsWith('eclipse-mosquitto'),
    'in front of eclipse-mosquitto',
  )
  const published = Object.values(compose.services).flatMap((s) => s.ports ?? [])
  const env = drawbridge?.environment ?? {}
  for (const name of Object.keys(env)) t.ok(ENV_NAMES.has(name), `${name} is a setting`)
  t.same(published, [
    `443:${env.DRAWBRIDGE_LISTEN_PORT ?? ''}`,
    `127.0.0.1:${env.DRAWBRIDGE_ADMIN_PORT ?? ''}:${env.DRAWBRIDGE_ADMIN_PORT ?? ''}`,
  ])
  const broker = /^(\w+):(\d+)$/.exec(env.DRAWBRIDGE_UPSTREAM_BROKERS ?? '')
  t.ok(broker && compose.services[broker[1] ?? ''], 'the upstream broker is a compose service')
})

const SYSTEMD_ANALYZE = skipWithout(
  'systemd-analyze',
  runs('systemd-analyze', ['--version']),
  'Debian package systemd, .ci/run',
)
t.test('systemd unit and env file', async (t) => {
  const unit = read('deploy/systemd/drawbridge.service')
  for (const directive of [
    'DynamicUser=yes',
    'AmbientCapabilities=CAP_NET_BIND_SERVICE',
    'ExecReload=/bin/kill -HUP $MAINPID',
    'ProtectSystem=strict',
    'NoNewPrivileges=yes',
    'PrivateTmp=yes',
    'ProtectHome=yes',
    'SystemCallFilter=@system-service',
  ]) {
    t.match(unit, new RegExp(`^${directive.replace(/[$]/g, '\\$')}$`, 'm'), directive)
  }
  t.match(unit, /^RestrictAddressFamilies=.*AF_INET6/m)
  t.ok(Number(/^LimitNOFILE=(\d+)$/m.exec(unit)?.[1]) >= 65536, 'LimitNOFILE for many connections')
  const env = Object.fromEntries(
    read('deploy/systemd/drawbridge.env.example')
      .split('\n')
      .filter((line) => /^[A-Z_]+=/.test(line))
      .map((line) => line.split('=', 2) as [string, string]),
  )
  for (const name of Object.keys(env).filter((n) => n.startsWith('DRAWBRIDGE_'))) {
    t.ok(ENV_NAMES.has(name), `${name} is a setting`)
  }
  const { config } = loadConfig({ env })
  t.equal(config.listen.port, 443, 'the example env is a valid production config on 443')
  const timeoutStop = Number(/^TimeoutStopSec=(\d+)$/m.exec(unit)?.[1])
  t.ok(timeoutStop * 1000 > config.shutdown.grace, 'TimeoutStopSec above shutdown.grace')

  t.test('systemd-analyze verify accepts the unit', { skip: SYSTEMD_ANALYZE }, async (t) => {
    const analyze = spawnSync(
      'systemd-analyze',
      ['verify', join(ROOT, 'deploy/systemd/drawbridge.service')],
      {
        encoding: 'utf8',
        timeout: 30_000,
      },
    )
    t.equal(analyze.status, 0, `systemd-analyze verify: ${analyze.stderr}`)
  })
})

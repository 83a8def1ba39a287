// The systems under test. Each one runs as its own process in front of the same broker, and
// start() returns where the load generator connects (`target`) and the pid whose /proc
// accounting is the system's cost (undefined for direct TCP: there is nothing in between).
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath, URL } from 'node:url'
import { promisify } from 'node:util'
import process from 'node:process'
import { freePort, spawnChild, stopChild, waitForPort } from './proc.mjs'

const run = promisify(execFile)
const ROOT = fileURLToPath(new URL('../../', import.meta.url))
// --drawbridge-dist (BENCH_DRAWBRIDGE_DIST) points the Drawbridge systems at another build.
const cliPath = () => `${process.env.BENCH_DRAWBRIDGE_DIST ?? `${ROOT}dist`}/cli.js`
const NAIVE = `${ROOT}bench/naive-bridge.mjs`

/**
 * The env names of Drawbridge's TLS settings. TLS is being added on another branch; if the
 * build at hand does not know them, the wss systems say "not available in this build".
 */
export const DRAWBRIDGE_TLS_ENV = {
  enabled: 'DRAWBRIDGE_TLS_ENABLED',
  cert: 'DRAWBRIDGE_TLS_CERT',
  key: 'DRAWBRIDGE_TLS_KEY',
}

function drawbridgeEnv(port, broker, tlsFiles, extra = {}, adminPort = 0) {
  const env = {
    ...process.env,
    // Each Drawbridge gets its own admin port: several run side by side, and the runner scrapes
    // /metrics during measurements (--scrape) the way Prometheus would.
    DRAWBRIDGE_ADMIN_PORT: String(adminPort),
    NODE_ENV: 'production',
    DRAWBRIDGE_PROFILE: 'production',
    DRAWBRIDGE_LISTEN_HOST: '127.0.0.1',
    DRAWBRIDGE_LISTEN_PORT: String(port),
    DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${broker.port}`,
    DRAWBRIDGE_LOG_LEVEL: 'warn',
    DRAWBRIDGE_WS_PING_INTERVAL: '0',
    DRAWBRIDGE_LIMITS_MAX_CONNECTIONS: '30000',
    ...extra,
  }
  // Set either way: a profile may turn TLS on by default. A build without TLS settings only
  // warns about the unknown variable.
  env[DRAWBRIDGE_TLS_ENV.enabled] = tlsFiles ? 'true' : 'false'
  if (tlsFiles) {
    env[DRAWBRIDGE_TLS_ENV.cert] = tlsFiles.cert
    env[DRAWBRIDGE_TLS_ENV.key] = tlsFiles.key
  }
  return env
}

/**
 * Whether this build of Drawbridge serves wss: `check-config` must accept the TLS settings
 * and show them in the resolved config. Returns undefined when it does, else the reason.
 */
export async function drawbridgeTlsUnavailable(tlsFiles) {
  if (!existsSync(cliPath())) return 'dist/cli.js missing (run npm run build)'
  try {
    const { stdout } = await run(process.execPath, [cliPath(), 'check-config'], {
      env: drawbridgeEnv(1, { port: 1 }, tlsFiles),
      timeout: 15_000,
    })
    const config = JSON.parse(stdout)
    if (config.tls?.enabled === true) return undefined
    return `not available in this build (check-config shows no tls.enabled for ${DRAWBRIDGE_TLS_ENV.enabled})`
  } catch (err) {
    const line = (err.stderr ?? err.message).toString().trim().split('\n')[0]
    return `not available in this build (${line})`
  }
}

async function startProcess(name, cmd, args, env) {
  const port = await freePort()
  const entry = spawnChild(name, cmd, args(port), { env: env?.(port) })
  try {
    await waitForPort(port, entry)
  } catch (err) {
    await stopChild(entry)
    throw err
  }
  return { port, pid: entry.child.pid, stop: () => stopChild(entry) }
}

/** Starts a Drawbridge process; `adminUrl` is set when its admin listener is on. */
async function startDrawbridge(name, args, envFor) {
  const adminPort = await freePort()
  const p = await startProcess(name, process.execPath, args, (port) => envFor(port, adminPort))
  const env = envFor(p.port, adminPort)
  const adminOn = !['false', '0', 'no', 'off'].includes(
    String(env.DRAWBRIDGE_ADMIN_ENABLED ?? 'true').toLowerCase(),
  )
  return { ...p, adminUrl: adminOn ? `http://127.0.0.1:${adminPort}` : undefined }
}

// The naive bridge is untuned: ws must not pick up the bufferutil addon Drawbridge installs.
const naiveEnv = () => ({ ...process.env, WS_NO_BUFFER_UTIL: '1' })

const wsTarget = (kind, port, protocol = 'mqtt') => ({
  kind,
  host: '127.0.0.1',
  port,
  path: '/mqtt',
  protocol,
})

/** The naive bridge's command line; with `tlsFiles`, it serves wss. */
const naiveArgs = (ctx, port, tlsFiles) => [
  ...ctx.nodeFlags,
  NAIVE,
  '--port',
  String(port),
  '--broker',
  `127.0.0.1:${ctx.broker.port}`,
  ...(tlsFiles ? ['--cert', tlsFiles.cert, '--key', tlsFiles.key] : []),
]

/**
 * Every system. `tls` systems take the certificate from ctx.cert (one of ctx.certs);
 * `available(ctx)` returns undefined or why the system cannot run here.
 */
export const SYSTEMS = [
  {
    name: 'direct-tcp',
    label: 'direct TCP (floor)',
    transport: 'tcp',
    available: async () => undefined,
    start: async (ctx) => ({
      target: { kind: 'tcp', host: '127.0.0.1', port: ctx.broker.port },
      pid: undefined,
      stop: async () => {},
    }),
  },
  {
    name: 'naive-ws',
    label: 'naive bridge, ws',
    transport: 'ws',
    available: async () => undefined,
    start: async (ctx) => {
      const p = await startProcess(
        'naive-ws',
        process.execPath,
        (port) => naiveArgs(ctx, port),
        naiveEnv,
      )
      return { ...p, target: wsTarget('ws', p.port) }
    },
  },
  {
    name: 'drawbridge-ws',
    label: 'Drawbridge, ws',
    transport: 'ws',
    available: async () =>
      existsSync(cliPath()) ? undefined : 'dist/cli.js missing (run npm run build)',
    start: async (ctx) => {
      const p = await startDrawbridge(
        'drawbridge-ws',
        () => [...ctx.nodeFlags, cliPath()],
        (port, admin) => drawbridgeEnv(port, ctx.broker, undefined, ctx.drawbridgeEnv, admin),
      )
      return { ...p, target: wsTarget('ws', p.port) }
    },
  },
  {
    name: 'naive-wss',
    label: 'naive bridge, wss',
    transport: 'wss',
    available: async () => undefined,
    start: async (ctx) => {
      const p = await startProcess(
        'naive-wss',
        process.execPath,
        (port) => naiveArgs(ctx, port, ctx.cert),
        naiveEnv,
      )
      return { ...p, target: wsTarget('wss', p.port) }
    },
  },
  {
    name: 'drawbridge-wss',
    label: 'Drawbridge, wss',
    transport: 'wss',
    available: (ctx) => drawbridgeTlsUnavailable(ctx.certs.ecdsa),
    start: async (ctx) => {
      const p = await startDrawbridge(
        'drawbridge-wss',
        () => [...ctx.nodeFlags, cliPath()],
        (port, admin) => drawbridgeEnv(port, ctx.broker, ctx.cert, ctx.drawbridgeEnv, admin),
      )
      return { ...p, target: wsTarget('wss', p.port) }
    },
  },
  {
    name: 'websockify-ws',
    label: 'websockify (python), ws',
    transport: 'ws',
    available: async () => {
      try {
        await run('websockify', ['--help'], { timeout: 10_000 })
        return undefined
      } catch {
        return 'websockify not installed (apt-get install websockify)'
      }
    },
    start: async (ctx) => {
      const p = await startProcess('websockify-ws', 'websockify', (port) => [
        `127.0.0.1:${port}`,
        `127.0.0.1:${ctx.broker.port}`,
      ])
      // websockify answers only the 'binary' subprotocol (or none); it does not speak 'mqtt'.
      return { ...p, target: wsTarget('ws', p.port, null) }
    },
  },
]

/**
 * Drawbridge with mqtt.inspect on or off (DRAWBRIDGE_MQTT_INSPECT), over ws or wss, for the
 * inspect workloads: the same build and settings as drawbridge-ws/-wss, only the framer differs.
 * `extraNodeFlags` come after ctx.nodeFlags (the memory workload turns the inspector on).
 */
export function inspectSystem(transport, inspect, extraNodeFlags = []) {
  const tls = transport === 'wss'
  const name = `drawbridge-${transport}-inspect-${inspect ? 'on' : 'off'}`
  return {
    name,
    label: `Drawbridge, ${transport}, inspect ${inspect ? 'on' : 'off'}`,
    transport,
    available: tls
      ? (ctx) => drawbridgeTlsUnavailable(ctx.certs.ecdsa)
      : async () => (existsSync(cliPath()) ? undefined : 'dist/cli.js missing (run npm run build)'),
    start: async (ctx) => {
      const p = await startDrawbridge(
        name,
        () => [...ctx.nodeFlags, ...extraNodeFlags, cliPath()],
        (port, admin) =>
          drawbridgeEnv(
            port,
            ctx.broker,
            tls ? ctx.cert : undefined,
            { ...ctx.drawbridgeEnv, DRAWBRIDGE_MQTT_INSPECT: String(inspect) },
            admin,
          ),
      )
      return { ...p, target: wsTarget(transport, p.port) }
    },
  }
}

/**
 * Drawbridge from another build (`--ab DIST`), to A/B a change in the same run: over ws
 * (`drawbridge-ws-ab`) or wss (`drawbridge-wss-ab`, for the setup and storm workloads).
 */
export function abSystem(dist, env = {}, transport = 'ws') {
  const cli = `${dist}/cli.js`
  const name = `drawbridge-${transport}-ab`
  return {
    name,
    label: `Drawbridge, ${transport} (${dist})`,
    transport,
    available: async () => (existsSync(cli) ? undefined : `${cli} missing`),
    start: async (ctx) => {
      const p = await startDrawbridge(
        name,
        () => [...ctx.nodeFlags, cli],
        (port, admin) =>
          drawbridgeEnv(
            port,
            ctx.broker,
            transport === 'wss' ? ctx.cert : undefined,
            { ...ctx.drawbridgeEnv, ...env },
            admin,
          ),
      )
      return { ...p, target: wsTarget(transport, p.port) }
    },
  }
}

/**
 * Drawbridge over ws as `workers` node:cluster processes on one port (`--workers N`), to measure
 * how it scales across cores. CPU is the whole process tree's, as for every system.
 */
export function workersSystem(workers, env = {}) {
  const name = `drawbridge-ws-workers${workers}`
  return {
    name,
    label: `Drawbridge, ws, ${workers} cluster workers`,
    transport: 'ws',
    available: async () =>
      existsSync(cliPath()) ? undefined : 'dist/cli.js missing (run npm run build)',
    start: async (ctx) => {
      const p = await startProcess(
        name,
        process.execPath,
        () => [`${ROOT}bench/cluster.mjs`, String(workers), cliPath()],
        (port) => drawbridgeEnv(port, ctx.broker, undefined, { ...ctx.drawbridgeEnv, ...env }),
      )
      return { ...p, target: wsTarget('ws', p.port) }
    },
  }
}

/**
 * Drawbridge over wss with limits.acceptRate (`--storm-accept-rate`), for the storm workload:
 * the same build and settings as drawbridge-wss, new TCP connections past the rate closed
 * before their TLS handshake. Unavailable in a build without the setting.
 */
export function acceptRateSystem(rate) {
  const name = `drawbridge-wss-accept${rate}`
  const env = { DRAWBRIDGE_LIMITS_ACCEPT_RATE: String(rate) }
  return {
    name,
    label: `Drawbridge, wss, limits.acceptRate ${rate}/s`,
    transport: 'wss',
    available: async (ctx) => {
      const tls = await drawbridgeTlsUnavailable(ctx.certs.ecdsa)
      if (tls) return tls
      try {
        const { stdout } = await run(process.execPath, [cliPath(), 'check-config'], {
          env: drawbridgeEnv(1, { port: 1 }, ctx.certs.ecdsa, env),
          timeout: 15_000,
        })
        const limits = JSON.parse(stdout).limits ?? {}
        return limits.acceptRate === rate ? undefined : 'no limits.acceptRate in this build'
      } catch (err) {
        return `not available (${(err.stderr ?? err.message).toString().trim().split('\n')[0]})`
      }
    },
    start: async (ctx) => {
      const p = await startDrawbridge(
        name,
        () => [...ctx.nodeFlags, cliPath()],
        (port, admin) =>
          drawbridgeEnv(port, ctx.broker, ctx.cert, { ...ctx.drawbridgeEnv, ...env }, admin),
      )
      return { ...p, target: wsTarget('wss', p.port) }
    },
  }
}

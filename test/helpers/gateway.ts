// Starts a gateway in-process on an ephemeral loopback port with its log lines captured, and
// registers its shutdown with the test at once.
import { Writable } from 'node:stream'
import { loadConfig } from '../../src/config/load.js'
import type { Config } from '../../src/config/schema.js'
import type { TlsEvent } from '../../src/edge/tls.js'
import { startGateway, type Gateway } from '../../src/gateway.js'
import { createLogger } from '../../src/log.js'
import type { Metrics } from '../../src/metrics.js'
import { assertNoLeaks } from './leaks.js'

export interface LogLine {
  level: number
  msg: string
  [field: string]: unknown
}

export interface TestGateway {
  gateway: Gateway
  config: Config
  port: number
  /** ws://... or wss://... (tls.enabled) on 127.0.0.1. */
  url: string
  /** The admin listener (127.0.0.1, ephemeral port), e.g. http://127.0.0.1:1234 */
  adminPort: number
  adminUrl: string
  /** Port of the mqtts listener when tcp.enabled. */
  mqttsPort: number | undefined
  /** The env the config was loaded from, to build a changed config for gateway.reload(). */
  env: Record<string, string>
  /** Every event given to the onTlsEvent hook. */
  tlsEvents: TlsEvent[]
  logs: LogLine[]
  /** Resolves with the first log line matching, waiting up to `timeoutMs`. */
  waitForLog: (match: (line: LogLine) => boolean, timeoutMs?: number) => Promise<LogLine>
  /** Resolves with the first `count` log lines matching, waiting up to `timeoutMs`. */
  waitForLogs: (
    match: (line: LogLine) => boolean,
    count: number,
    timeoutMs?: number,
  ) => Promise<LogLine[]>
}

interface Teardown {
  teardown: (fn: () => unknown) => void
}

export async function startTestGateway(
  t: Teardown,
  brokerPort: number,
  env: Record<string, string> = {},
  deps: { metrics?: Metrics; expiryCheckInterval?: number } = {},
): Promise<TestGateway> {
  const fullEnv = {
    DRAWBRIDGE_LISTEN_HOST: '127.0.0.1',
    DRAWBRIDGE_LISTEN_PORT: '0',
    DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${brokerPort}`,
    DRAWBRIDGE_UPSTREAM_EMBEDDED: 'false',
    DRAWBRIDGE_SHUTDOWN_GRACE: '2s',
    DRAWBRIDGE_LOG_LEVEL: 'debug',
    // The development profile serves wss with generated certificates; tests opt in to TLS
    // with their own material (test/helpers/pki.ts).
    DRAWBRIDGE_TLS_ENABLED: 'false',
    DRAWBRIDGE_TLS_GENERATE_DEV_CERTS: 'false',
    DRAWBRIDGE_TCP_PORT: '0',
    DRAWBRIDGE_ADMIN_HOST: '127.0.0.1',
    DRAWBRIDGE_ADMIN_PORT: '0',
    ...env,
  }
  const { config } = loadConfig({ profile: 'development', env: fullEnv })
  const logs: LogLine[] = []
  const waiters = new Set<() => void>()
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim() !== '') logs.push(JSON.parse(line) as LogLine)
      }
      for (const wake of waiters) wake()
      done()
    },
  })
  const waitForLogs = (
    match: (line: LogLine) => boolean,
    count: number,
    timeoutMs = 5_000,
  ): Promise<LogLine[]> =>
    new Promise((resolve, reject) => {
      const check = (): boolean => {
        const found = logs.filter(match)
        if (found.length < count) return false
        cleanup()
        resolve(found.slice(0, count))
        return true
      }
      const timer = setTimeout(() => {
        cleanup()
        const seen = logs.filter(match).length
        reject(new Error(`${seen} of ${count} matching log lines within ${timeoutMs} ms`))
      }, timeoutMs)
      const cleanup = (): void => {
        clearTimeout(timer)
        waiters.delete(wake)
      }
      const wake = (): void => void check()
      if (!check()) waiters.add(wake)
    })
  const tlsEvents: TlsEvent[] = []
  const gateway = await startGateway(config, {
    log: createLogger(config.log.level, sink),
    onTlsEvent: (event) => tlsEvents.push(event),
    ...deps,
  })
  t.teardown(async () => {
    try {
      await assertNoLeaks(gateway)
    } finally {
      await gateway.close()
    }
  })
  const port = gateway.address.port
  const adminPort = gateway.adminAddress?.port ?? 0
  return {
    gateway,
    config,
    port,
    url: `${config.tls.enabled ? 'wss' : 'ws'}://127.0.0.1:${port}${config.ws.path}`,
    adminPort,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    mqttsPort: gateway.mqttsAddress?.port,
    env: fullEnv,
    tlsEvents,
    logs,
    waitForLog: async (match, timeoutMs = 5_000) => {
      const [line] = await waitForLogs(match, 1, timeoutMs)
      return line as LogLine
    },
    waitForLogs,
  }
}

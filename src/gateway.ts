// Wires one gateway together from a validated Config: the embedded broker (development only),
// then the edge server in front of the upstream brokers, then the admin listener (metrics,
// health, readiness, connections). Logging and metrics are passed in, never global.
import type { AddressInfo } from 'node:net'
import { Readiness } from './admin/readiness.js'
import { AdminServer } from './admin/server.js'
import { parseHostPort, type HostPort } from './config/formats.js'
import type { Config } from './config/schema.js'
import type { EmbeddedBroker } from './dev/broker.js'
import { EdgeServer } from './edge/server.js'
import type { Logger } from './log.js'
import { createMetrics, type Metrics } from './metrics.js'
import { packageVersion } from './version.js'

export interface GatewayDeps {
  log: Logger
  /** Defaults to a fresh registry configured from config.metrics. */
  metrics?: Metrics
}

export interface Gateway {
  /** Address of the public WebSocket listener. */
  address: AddressInfo
  /** The broker addresses bridged to (the embedded one's real port when it listens on 0). */
  brokers: readonly HostPort[]
  edge: EdgeServer
  metrics: Metrics
  readiness: Readiness
  /** Address of the admin listener; undefined when admin.enabled is false. */
  adminAddress: AddressInfo | undefined
  /**
   * Marks the gateway as shutting down: /readyz answers 503 from now on, so load balancers stop
   * sending new clients. close() does this too; cli.ts calls it first thing on SIGTERM.
   */
  drain: () => void
  /** Graceful stop: 1001 to every client, up to shutdown.grace, then the embedded broker. */
  close: () => Promise<void>
}

export async function startGateway(config: Config, deps: GatewayDeps): Promise<Gateway> {
  const { log } = deps
  const metrics =
    deps.metrics ??
    createMetrics({
      version: packageVersion(),
      perClient: config.metrics.perClient,
      maxClientSeries: config.metrics.maxClientSeries,
    })
  let brokers = config.upstream.brokers.map(parseHostPort)
  let embedded: EmbeddedBroker | undefined
  if (config.upstream.embedded) {
    const { startEmbeddedBroker } = await import('./dev/broker.js')
    const first = brokers[0] as HostPort // loadConfig guarantees at least one
    embedded = await startEmbeddedBroker(first)
    brokers = [embedded.address, ...brokers.slice(1)]
    log.info(
      { broker: `${embedded.address.host}:${embedded.address.port}` },
      'embedded Aedes broker listening (development only)',
    )
  }

  const edge = new EdgeServer({ config, brokers, log, metrics })
  const readiness = new Readiness({
    brokers,
    connectTimeout: config.upstream.connectTimeout,
    interval: config.admin.readinessInterval,
    isListening: () => edge.listening,
    log,
  })
  metrics.setReadinessSource(() => readiness.status())
  let address: AddressInfo
  try {
    address = await edge.listen()
  } catch (err) {
    await embedded?.close()
    throw err
  }

  let admin: AdminServer | undefined
  let adminAddress: AddressInfo | undefined
  if (config.admin.enabled) {
    admin = new AdminServer({
      host: config.admin.host,
      port: config.admin.port,
      token: config.admin.token,
      log,
      metrics,
      readiness,
      connections: edge.connections,
    })
    try {
      adminAddress = await admin.listen()
    } catch (err) {
      await edge.close(0)
      await embedded?.close()
      throw err
    }
    readiness.start()
  }
  log.info(
    {
      listen: `${address.address}:${address.port}`,
      path: config.ws.path,
      brokers: brokers.map((b) => `${b.host}:${b.port}`),
    },
    'gateway listening',
  )

  let closing: Promise<void> | undefined
  return {
    address,
    brokers,
    edge,
    metrics,
    readiness,
    adminAddress,
    drain: () => readiness.drain(),
    close() {
      readiness.drain()
      closing ??= (async () => {
        await edge.close(config.shutdown.grace)
        // The admin listener outlives the edge so /readyz says 503 throughout the drain.
        readiness.stop()
        await admin?.close()
        await embedded?.close()
        log.info('gateway stopped')
      })()
      return closing
    },
  }
}

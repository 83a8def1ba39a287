// Wires one gateway together from a validated Config: the embedded broker (development only),
// then the edge server in front of the upstream brokers. Logging is passed in, never global.
import type { AddressInfo } from 'node:net'
import { parseHostPort, type HostPort } from './config/formats.js'
import type { Config } from './config/schema.js'
import type { EmbeddedBroker } from './dev/broker.js'
import { EdgeServer } from './edge/server.js'
import type { Logger } from './log.js'

export interface GatewayDeps {
  log: Logger
}

export interface Gateway {
  /** Address of the public WebSocket listener. */
  address: AddressInfo
  /** The broker addresses bridged to (the embedded one's real port when it listens on 0). */
  brokers: readonly HostPort[]
  edge: EdgeServer
  /** Graceful stop: 1001 to every client, up to shutdown.grace, then the embedded broker. */
  close: () => Promise<void>
}

export async function startGateway(config: Config, { log }: GatewayDeps): Promise<Gateway> {
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

  const edge = new EdgeServer({ config, brokers, log })
  let address: AddressInfo
  try {
    address = await edge.listen()
  } catch (err) {
    await embedded?.close()
    throw err
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
    close() {
      closing ??= (async () => {
        await edge.close(config.shutdown.grace)
        await embedded?.close()
        log.info('gateway stopped')
      })()
      return closing
    },
  }
}

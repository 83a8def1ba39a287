// Wires one gateway together from a validated Config: the embedded broker (development only),
// the TLS material (development certificates generated on first start when configured), then
// the edge server (and the optional mqtts listener) in front of the upstream brokers. Logging
// is passed in, never global.
import type { AddressInfo } from 'node:net'
import { parseHostPort, type HostPort } from './config/formats.js'
import type { Config } from './config/schema.js'
import type { EmbeddedBroker } from './dev/broker.js'
import type { MqttsListener } from './edge/mqtts.js'
import { EdgeServer } from './edge/server.js'
import { TlsManager, type ReloadResult, type TlsEventHook } from './edge/tls.js'
import type { Logger } from './log.js'

export interface GatewayDeps {
  log: Logger
  /** Told about every TLS handshake failure, client refusal and reload (for metrics). */
  onTlsEvent?: TlsEventHook | undefined
}

export interface Gateway {
  /** Address of the public WebSocket listener. */
  address: AddressInfo
  /** The broker addresses bridged to (the embedded one's real port when it listens on 0). */
  brokers: readonly HostPort[]
  edge: EdgeServer
  /** Address of the mqtts listener when tcp.enabled. */
  mqttsAddress: AddressInfo | undefined
  /**
   * Reloads the TLS material (SIGHUP). With `next` (the configuration file read again), changed
   * tls.cert/key/passphrase/ca/crl/minVersion/ciphers take effect; other changes need a restart
   * and are logged as such. Undefined when TLS is off.
   */
  reload: (next?: Config) => ReloadResult | undefined
  /** Graceful stop: 1001 to every client, up to shutdown.grace, then the embedded broker. */
  close: () => Promise<void>
}

export async function startGateway(
  config: Config,
  { log, onTlsEvent }: GatewayDeps,
): Promise<Gateway> {
  // TLS first: bad material should fail start-up before any port is taken.
  let tls: TlsManager | undefined
  if (config.tls.enabled) {
    if (config.tls.generateDevCerts) {
      const { ensureDevCerts } = await import('./dev/certs.js')
      ensureDevCerts(config.tls.cert, config.tls.key, log)
    }
    tls = new TlsManager({
      settings: config.tls,
      handshakeTimeout: config.ws.handshakeTimeout,
      log,
      onTlsEvent,
    })
  }

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

  const edge = new EdgeServer({ config, brokers, log, tls })
  let mqtts: MqttsListener | undefined
  let address: AddressInfo
  let mqttsAddress: AddressInfo | undefined
  try {
    address = await edge.listen()
    if (config.tcp.enabled && tls) {
      const { MqttsListener } = await import('./edge/mqtts.js')
      mqtts = new MqttsListener({
        host: config.listen.host,
        port: config.tcp.port,
        brokers,
        connectTimeout: config.upstream.connectTimeout,
        maxConnections: config.limits.maxConnections,
        tls,
        log,
      })
      mqttsAddress = await mqtts.listen()
    }
  } catch (err) {
    tls?.close()
    await edge.close(0)
    await embedded?.close()
    throw err
  }
  log.info(
    {
      listen: `${address.address}:${address.port}`,
      scheme: edge.scheme,
      path: config.ws.path,
      ...(mqttsAddress && { mqtts: `${mqttsAddress.address}:${mqttsAddress.port}` }),
      brokers: brokers.map((b) => `${b.host}:${b.port}`),
    },
    'gateway listening',
  )

  let closing: Promise<void> | undefined
  return {
    address,
    brokers,
    edge,
    mqttsAddress,
    reload(next) {
      if (tls === undefined) {
        log.info('reload requested; TLS is off, nothing to reload')
        return undefined
      }
      if (next !== undefined) logRestartOnlyChanges(config, next, log)
      return tls.reload(next === undefined ? 'reload' : 'reload with configuration', next?.tls)
    },
    close() {
      closing ??= (async () => {
        tls?.close()
        await Promise.all([edge.close(config.shutdown.grace), mqtts?.close(config.shutdown.grace)])
        await embedded?.close()
        log.info('gateway stopped')
      })()
      return closing
    },
  }
}

/** Logs the settings changed in `next` that only a restart applies (everything but tls.*). */
function logRestartOnlyChanges(current: Config, next: Config, log: Logger): void {
  const changed: string[] = []
  const walk = (a: unknown, b: unknown, path: string): void => {
    if (path === 'tls') return
    if (a !== null && typeof a === 'object' && !Array.isArray(a)) {
      for (const key of Object.keys(a)) {
        walk(
          (a as Record<string, unknown>)[key],
          (b as Record<string, unknown>)[key],
          path === '' ? key : `${path}.${key}`,
        )
      }
      return
    }
    if (JSON.stringify(a) !== JSON.stringify(b)) changed.push(path)
  }
  walk(current, next, '')
  if (changed.length > 0) {
    log.warn({ keys: changed }, 'these settings changed but take effect only after a restart')
  }
}

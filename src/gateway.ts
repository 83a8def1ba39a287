// Wires one gateway together from a validated Config: the TLS material (development
// certificates generated on first start when configured), the embedded broker (development
// only), the edge server (and the optional mqtts listener) in front of the upstream brokers,
// then the admin listener (metrics, health, readiness, connections). Logging and metrics are
// passed in, never global.
import type { AddressInfo } from 'node:net'
import { Readiness } from './admin/readiness.js'
import { AdminServer } from './admin/server.js'
import { Goodbyes } from './bridge/goodbyes.js'
import { ConnectionRegistry, type ShutdownPolicy } from './bridge/registry.js'
import type { HostPort } from './config/formats.js'
import type { Config } from './config/schema.js'
import type { EmbeddedBroker } from './dev/broker.js'
import type { MqttsListener } from './edge/mqtts.js'
import { ClientTable } from './edge/client-limits.js'
import { EdgeServer } from './edge/server.js'
import { EdgeAuth } from './auth/gate.js'
import { TokenSessions } from './auth/sessions.js'
import { CertificateSessions } from './edge/certificate-sessions.js'
import { TlsManager, type ReloadResult, type TlsEvent, type TlsEventHook } from './edge/tls.js'
import type { Logger } from './log.js'
import { createMetrics, type Metrics } from './metrics.js'
import { BrokerConnector } from './upstream/connector.js'
import { packageVersion } from './version.js'

export interface GatewayDeps {
  log: Logger
  /** Defaults to a fresh registry configured from config.metrics. */
  metrics?: Metrics
  /** Also told about every TLS handshake failure, client refusal and reload (tests listen). */
  onTlsEvent?: TlsEventHook | undefined
  /** How often open sessions are checked for expired client certificates (default 1 minute). */
  expiryCheckInterval?: number
}

export interface Gateway {
  /** Address of the public WebSocket listener. */
  address: AddressInfo
  /** The URL a client connects to, as the start-up log says it: wss://localhost:8443/mqtt. */
  url: string
  /** The broker addresses bridged to (the embedded one's real port when it listens on 0). */
  brokers: readonly HostPort[]
  /** The open connections of every listener (WebSocket and mqtts). */
  connections: ConnectionRegistry
  /**
   * Broker sockets opened for clients, connecting or connected, that are still open (0 once
   * every client is gone).
   */
  readonly brokerSocketsOpen: number
  /** Resolves once every broker socket opened for a client has closed. */
  whenBrokerSocketsClosed: () => Promise<void>
  /** http.routes: the gateway's sockets to backends, and routed WebSockets, open right now. */
  readonly routedSocketsOpen: { backend: number; tunnels: number }
  metrics: Metrics
  readiness: Readiness
  /** Address of the admin listener; undefined when admin.enabled is false. */
  adminAddress: AddressInfo | undefined
  /** Address of the mqtts listener when tcp.enabled. */
  mqttsAddress: AddressInfo | undefined
  /**
   * Marks the gateway as shutting down: /readyz answers 503 from now on, so load balancers stop
   * sending new clients. close() does this too; cli.ts calls it first thing on SIGTERM.
   */
  drain: () => void
  /**
   * Reloads the TLS material (SIGHUP). With `next` (the configuration file read again), changed
   * tls.cert/key/passphrase/ca/crl/minVersion/ciphers take effect; other changes need a restart
   * and are logged as such. Undefined when TLS is off.
   */
  reload: (next?: Config) => ReloadResult | undefined
  /**
   * Graceful stop: the shutdown goodbye to every client (MQTT 5: DISCONNECT 0x8B or 0x9C, then
   * 1001), spread over shutdown.spread, up to shutdown.grace, then the embedded broker.
   */
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

  const connections = new ConnectionRegistry()
  // TLS first: bad material should fail start-up before any port is taken.
  let tls: TlsManager | undefined
  let sessions: CertificateSessions | undefined
  const tlsListeners = config.tcp.enabled ? (['wss', 'mqtts'] as const) : (['wss'] as const)
  if (config.tls.enabled) {
    if (config.tls.generateDevCerts) {
      const { ensureDevCerts } = await import('./dev/certs.js')
      ensureDevCerts(config.tls.cert, config.tls.key, log)
    }
    const manager: TlsManager = new TlsManager({
      settings: config.tls,
      handshakeTimeout: config.ws.handshakeTimeout,
      log,
      onTlsEvent: (event) => {
        countTlsEvent(metrics, event, () => {
          for (const listener of tlsListeners) {
            metrics.setCertificateExpiry(listener, new Date(manager.served.validTo))
          }
          sessions?.closeRevoked()
        })
        deps.onTlsEvent?.(event)
      },
    })
    tls = manager
    sessions = new CertificateSessions({
      connections,
      tls: manager,
      log,
      metrics,
      ...(deps.expiryCheckInterval !== undefined && {
        expiryCheckInterval: deps.expiryCheckInterval,
      }),
    })
    for (const listener of tlsListeners) {
      metrics.setCertificateExpiry(listener, new Date(manager.served.validTo))
    }
  }

  let brokers = config.upstream.brokers
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

  const connector = new BrokerConnector({
    brokers,
    connectTimeout: config.upstream.connectTimeout,
    onAttempt: (attempt) => metrics.upstreamAttempt(attempt),
    proxyProtocol: config.upstream.proxyProtocol,
    log,
  })
  metrics.setUpstreamSocketsSource(() => connector.openSockets)
  // tls.identityAs: load checked that it comes with mqtt.inspect, TLS and client certificates.
  const identity =
    config.tls.identityAs === 'username' ? { from: config.tls.identityFrom } : undefined
  // auth.mode=jwt: one key store and verifier for both listeners; sessions end with their token.
  const auth =
    config.auth.mode === 'jwt' ? new EdgeAuth({ auth: config.auth, log, metrics }) : undefined
  const tokenSessions = auth
    ? new TokenSessions({ connections, clockTolerance: config.auth.clockTolerance, log })
    : undefined
  await auth?.keys.start()
  // auth.permissionsClaim: load checked that it comes with mqtt.inspect.
  const permissions =
    config.auth.permissionsClaim === '' ? undefined : { claim: config.auth.permissionsClaim }
  // One table for both listeners: a client is one client over wss and mqtts alike.
  const clients = new ClientTable(config.limits, metrics)
  const edge = new EdgeServer({
    listen: config.listen,
    ws: config.ws,
    http: config.http,
    limits: config.limits,
    mqtt: config.mqtt,
    identity,
    permissions,
    upstream: config.upstream,
    connections,
    connector,
    clients,
    log,
    metrics,
    tls,
    auth,
  })
  const readiness = new Readiness({
    brokers,
    connectTimeout: config.upstream.connectTimeout,
    interval: config.admin.readinessInterval,
    proxyProtocol: config.upstream.proxyProtocol,
    isListening: () => edge.listening,
    log,
  })
  metrics.setReadinessSource(() => readiness.status())
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
        maxConnections: config.limits.maxConnections,
        highWaterMark: config.limits.highWaterMark,
        acceptRate: config.limits.acceptRate,
        messageRate: config.limits.messageRate,
        byteRate: config.limits.byteRate,
        clients,
        mqtt: config.mqtt,
        identity,
        permissions,
        upstream: config.upstream,
        proxyProtocol: config.listen.proxyProtocol,
        proxyProtocolFrom: config.listen.proxyProtocolFrom,
        handshakeTimeout: config.ws.handshakeTimeout,
        connections,
        connector,
        tls,
        auth,
        log,
        metrics,
      })
      mqttsAddress = await mqtts.listen()
    }
  } catch (err) {
    tls?.close()
    auth?.keys.close()
    await edge.close({ grace: 0 })
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
      connections,
    })
    try {
      adminAddress = await admin.listen()
    } catch (err) {
      tls?.close()
      auth?.keys.close()
      await Promise.all([edge.close({ grace: 0 }), mqtts?.close({ grace: 0 })])
      await embedded?.close()
      throw err
    }
    readiness.start()
  }
  sessions?.start()
  tokenSessions?.start()
  const url = clientUrl(edge.scheme, config.listen.host, address.port, config.ws.path)
  log.info(
    {
      url,
      listen: `${address.address}:${address.port}`,
      scheme: edge.scheme,
      path: config.ws.path,
      ...(mqttsAddress && { mqtts: `${mqttsAddress.address}:${mqttsAddress.port}` }),
      ...(adminAddress && { admin: `${adminAddress.address}:${adminAddress.port}` }),
      brokers: brokers.map((b) => `${b.host}:${b.port}`),
    },
    `gateway listening on ${url}`,
  )

  const shutdown: ShutdownPolicy = {
    grace: config.shutdown.grace,
    spread: config.shutdown.spread,
    goodbye: Goodbyes.shuttingDown(config.shutdown.serverReference),
  }
  let closing: Promise<void> | undefined
  return {
    address,
    url,
    brokers,
    connections,
    get brokerSocketsOpen() {
      return connector.openSockets
    },
    whenBrokerSocketsClosed: () => connector.whenAllClosed(),
    get routedSocketsOpen() {
      return edge.routedSocketsOpen
    },
    metrics,
    readiness,
    adminAddress,
    mqttsAddress,
    drain: () => readiness.drain(),
    reload(next) {
      // auth.keys and auth.secretFile are read again whatever TLS does.
      auth?.keys.reload('reload')
      if (tls === undefined) {
        log.info('reload requested; TLS is off, nothing to reload')
        return undefined
      }
      if (next !== undefined) logRestartOnlyChanges(config, next, log)
      return tls.reload(next === undefined ? 'reload' : 'reload with configuration', next?.tls)
    },
    close() {
      readiness.drain()
      closing ??= (async () => {
        sessions?.stop()
        tokenSessions?.stop()
        auth?.keys.close()
        tls?.close()
        await Promise.all([edge.close(shutdown), mqtts?.close(shutdown)])
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

/**
 * The URL to paste into a client. A wildcard or loopback bind is reached as localhost (the name
 * the development certificate is issued for); any other host is named as configured.
 */
export function clientUrl(scheme: string, host: string, port: number, path: string): string {
  const local = ['0.0.0.0', '::', '127.0.0.1', '::1', 'localhost'].includes(host)
  const name = local ? 'localhost' : host.includes(':') ? `[${host}]` : host
  return `${scheme}://${name}:${port}${path}`
}

/** Counts a TLS event; a successful reload also refreshes the expiry gauge. */
function countTlsEvent(metrics: Metrics, event: TlsEvent, refreshExpiry: () => void): void {
  switch (event.type) {
    case 'handshake_failed':
    case 'client_refused':
      metrics.tlsHandshakeFailure(event.reason)
      return
    case 'reload':
      if (event.result === 'ok') {
        metrics.tlsReload('success')
        refreshExpiry()
      } else if (event.result === 'failed') {
        metrics.tlsReload('failure')
      }
      return
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

// The optional mqtts listener (tcp.enabled): MQTT over TLS on a TCP port (8883 is IANA's
// "secure-mqtt"; MQTT 3.1.1 section 5.1), terminated here and piped to the same upstream brokers
// as the WebSocket listener, with the same certificates and client-certificate rules. Devices
// that speak mqtts and browsers that speak wss then share one edge, and the same Connection
// (bridge/connection.ts) carries both: the same backpressure, log lines, metrics and
// /connections entries.
import { randomBytes } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import tls from 'node:tls'
import { Connection, type ConnectionOptions, type IdentityRewrite } from '../bridge/connection.js'
import type { PermissionsPolicy } from '../bridge/topic-guard.js'
import type { ConnectionRegistry, ShutdownPolicy } from '../bridge/registry.js'
import { StreamClient } from '../bridge/stream-client.js'
import type { EdgeAuth } from '../auth/gate.js'
import type { Config } from '../config/schema.js'
import { listen } from '../listen.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { BrokerConnector } from '../upstream/connector.js'
import {
  admit,
  Capacity,
  connectDial,
  mqttsSteps,
  releaseOnClose,
  type Admission,
  type Step,
} from './admission.js'
import { AcceptGate } from './accept-gate.js'
import { peerAddress } from './client-address.js'
import type { ClientTable } from './client-limits.js'
import { describeProxyClient } from './proxy-client.js'
import { ProxyGate } from './proxy-gate.js'
import type { ProxyProtocolIn } from './proxy-protocol-in.js'
import { Refusals, Refuser } from './refusals.js'
import type { TlsManager } from './tls.js'

const LISTENER = 'mqtts'

export interface MqttsOptions {
  host: string
  port: number
  /** Open mqtts connections above which new ones are refused (counted apart from WebSockets). */
  maxConnections: number
  highWaterMark: number
  /** limits.acceptRate, messageRate and byteRate (0: off). */
  acceptRate: number
  messageRate: number
  byteRate: number
  /** The per-client limits, shared with the WebSocket listener. */
  clients?: ClientTable | undefined
  /** mqtt.*: what the connections' framers check. */
  mqtt: Config['mqtt']
  /** tls.identityAs=username (with tls.identityFrom); undefined: usernames go on unchanged. */
  identity?: IdentityRewrite | undefined
  /** auth.permissionsClaim, when set; undefined: topics are not judged. */
  permissions?: PermissionsPolicy | undefined
  /** upstream.connectOn and upstream.affinity: when and where the broker is dialled. */
  upstream: Pick<Config['upstream'], 'connectOn' | 'affinity'>
  /** listen.proxyProtocol and listen.proxyProtocolFrom: a balancer's PROXY header, before TLS. */
  proxyProtocol: ProxyProtocolIn
  proxyProtocolFrom: Config['listen']['proxyProtocolFrom']
  /** ws.handshakeTimeout: how long the PROXY header may take. */
  handshakeTimeout: number
  connections: ConnectionRegistry
  connector: BrokerConnector
  tls: TlsManager
  /** auth.mode=jwt: a certificate (auth.allowClientCert) or the CONNECT password; else none. */
  auth?: EdgeAuth | undefined
  log: Logger
  metrics: Metrics
}

export class MqttsListener {
  readonly #options: MqttsOptions
  readonly #server: tls.Server
  readonly #steps: readonly Step<Admission>[]
  readonly #refuse: Refuser
  /** listen.proxyProtocol: reads the load balancer's PROXY header first; undefined when off. */
  readonly #proxyGate: ProxyGate | undefined
  /** limits.acceptRate; undefined when off. */
  readonly #acceptGate: AcceptGate | undefined
  readonly #connectionOptions: ConnectionOptions
  readonly #idPrefix = `t${randomBytes(3).toString('hex')}`
  #nextId = 0
  #closing = false

  constructor(options: MqttsOptions) {
    this.#options = options
    this.#server = tls.createServer(options.tls.serverOptions())
    // The manager judges the client first, so its verdict is there when #onClient runs.
    options.tls.attach(this.#server, LISTENER)
    this.#server.on('secureConnection', this.#onClient)
    // The TLS handshake begins on 'connection': the gate holds it back until the header is read.
    this.#proxyGate =
      options.proxyProtocol === 'off'
        ? undefined
        : new ProxyGate({
            mode: options.proxyProtocol,
            from: options.proxyProtocolFrom,
            timeout: options.handshakeTimeout,
            listener: LISTENER,
            log: options.log,
            metrics: options.metrics,
          })
    this.#proxyGate?.install(this.#server, false)
    // Outermost: a connection over the rate is closed before its PROXY header or TLS handshake.
    this.#acceptGate =
      options.acceptRate > 0
        ? new AcceptGate({
            rate: options.acceptRate,
            listener: LISTENER,
            log: options.log,
            metrics: options.metrics,
          })
        : undefined
    this.#acceptGate?.install(this.#server)
    options.metrics.addConnectionSource(LISTENER, () => options.connections.valuesOf(LISTENER))
    this.#steps = mqttsSteps({
      tls: options.tls,
      closing: () => this.#closing,
      capacity: new Capacity(options.maxConnections, () => options.connections.sizeOf(LISTENER)),
      connector: options.connector,
      connectOn: options.upstream.connectOn,
      auth: options.auth,
      clients: options.clients,
    })
    this.#refuse = new Refuser({ log: options.log, metrics: options.metrics })
    this.#connectionOptions = {
      highWaterMark: options.highWaterMark,
      mqtt: options.mqtt,
      identity: options.identity,
      permissions: options.permissions,
      dial: connectDial(options.upstream, options.connector),
      auth: options.auth,
      rate: { messageRate: options.messageRate, byteRate: options.byteRate },
      metrics: options.metrics,
      log: options.log,
      onClose: (closed) => {
        // Same tick: the counts move from the live set to the closed totals together.
        options.metrics.connectionClosed(closed)
        options.connections.delete(closed)
      },
    }
  }

  listen(): Promise<AddressInfo> {
    return listen(this.#server, 'mqtts', this.#options.host, this.#options.port)
  }

  address(): AddressInfo {
    return this.#server.address() as AddressInfo
  }

  /**
   * Stops accepting, says the shutdown goodbye to every connection (MQTT 5: DISCONNECT, then TLS
   * close_notify + FIN; spread over shutdown.spread), cuts the rest after `grace`.
   */
  async close(shutdown: ShutdownPolicy): Promise<void> {
    this.#closing = true
    const serverClosed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    this.#proxyGate?.destroyPending()
    this.#acceptGate?.close()
    await this.#options.connections.closeAll(LISTENER, shutdown, this.#options.log)
    await serverClosed
  }

  readonly #onClient = (client: tls.TLSSocket): void => {
    // Nothing is read before the client is admitted (and, in upgrade mode, its broker connected).
    client.pause()
    this.#admit(client).catch((err: unknown) => {
      this.#options.log.error(
        { err, listener: LISTENER, remote: peerAddress(client) },
        'mqtts admission failed',
      )
      try {
        this.#refuse.stream(client, LISTENER, Refusals.internal())
      } catch {
        client.destroy()
      }
    })
  }

  async #admit(client: tls.TLSSocket): Promise<void> {
    // Named now: with upstream.proxyProtocol the PROXY header carries it (see server.ts).
    const id = `${this.#idPrefix}-${(++this.#nextId).toString(36)}`
    const admission: Admission = {
      socket: client,
      clientAddress: this.#clientOf(client).clientAddress,
      upstream: undefined,
      onEnd: [],
      onClose: [],
      proxy: this.#options.connector.proxying
        ? describeProxyClient({
            id,
            socket: client,
            ...this.#clientOf(client),
            clientPort: this.#proxyGate?.clientOf(client)?.port,
            tls: this.#options.tls.verdict(client)?.tls,
          })
        : undefined,
    }
    const outcome = await admit(this.#steps, admission, () => this.#accept(client, admission, id))
    if (outcome.ok) return
    if ('refusal' in outcome) this.#refuse.stream(client, LISTENER, outcome.refusal)
    else client.destroy()
  }

  #accept(client: tls.TLSSocket, admission: Admission, id: string): void {
    const upstream = admission.upstream
    if (upstream === undefined && this.#connectionOptions.dial === undefined)
      throw new Error('admitted an mqtts client without a broker connection')
    const verdict = this.#options.tls.verdict(client)
    const connection = new Connection(
      new StreamClient(client),
      upstream,
      {
        id,
        listener: LISTENER,
        remoteAddress: peerAddress(client),
        ...this.#clientOf(client),
        protocol: false,
        ...(verdict && { tls: verdict.tls }),
        proxy: admission.proxy,
        token: admission.auth && 'token' in admission.auth ? admission.auth.token : undefined,
        release: releaseOnClose(admission),
      },
      this.#connectionOptions,
    )
    this.#options.connections.add(connection)
    this.#options.metrics.connectionOpened(LISTENER)
  }

  /** The client's address: the PROXY header's source under listen.proxyProtocol, else the peer. */
  #clientOf(client: tls.TLSSocket): { clientAddress: string; forwarded: boolean } {
    const proxied = this.#proxyGate?.clientOf(client)
    if (proxied !== undefined) return { clientAddress: proxied.address, forwarded: true }
    return { clientAddress: client.remoteAddress ?? 'unknown', forwarded: false }
  }
}

// The public listener: an HTTP server (HTTPS when tls.enabled) whose only job is to decide
// WebSocket upgrades and hand each accepted one, with its already-open broker socket, to a
// bridge Connection.
//
// Order of an upgrade: handshake checks (pure, handshake.ts) -> capacity -> broker TCP connect
// -> 101. The broker is connected before 101 is sent so a client never sees a WebSocket that
// opens and dies: a refused broker is 502, a silent one 504.
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { WebSocketServer, type WebSocket } from 'ws'
import { Connection, type ConnectionInfo, type ConnectionOptions } from '../bridge/bridge.js'
import { CloseCode, CloseReason } from '../bridge/close-codes.js'
import { ConnectionRegistry } from '../bridge/registry.js'
import type { HostPort } from '../config/formats.js'
import type { Config } from '../config/schema.js'
import { ListenError, UpstreamTimeoutError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { connectUpstream, type Upstream } from '../upstream/connector.js'
import {
  pickSubprotocol,
  requestPath,
  validateUpgrade,
  type HandshakePolicy,
  type Refusal,
} from './handshake.js'
import { Diagnostics } from './diagnostics.js'
import { writeRefusal } from './refuse.js'
import { ClientAddressResolver, peerAddress } from './client-address.js'
import type { TlsManager } from './tls.js'

export interface EdgeOptions {
  config: Config
  brokers: readonly HostPort[]
  log: Logger
  metrics: Metrics
  /** When set, the listener speaks TLS (wss://) with this manager's material and client policy. */
  tls?: TlsManager | undefined
}

const RETRY_AFTER_SECONDS = '5'

export class EdgeServer {
  readonly connections = new ConnectionRegistry()

  readonly #config: Config
  readonly #brokers: readonly HostPort[]
  readonly #log: Logger
  readonly #metrics: Metrics
  readonly #policy: HandshakePolicy
  readonly #clientAddresses: ClientAddressResolver
  readonly #server: http.Server | https.Server
  readonly #tls: TlsManager | undefined
  readonly #wss: WebSocketServer
  /** The diagnostics page and its JSON (http.diagnostics), else undefined. */
  readonly #diagnostics: Diagnostics | undefined
  readonly #handshakeTimers = new WeakMap<Socket, NodeJS.Timeout>()
  /** Shared by every Connection: one object, not one (with a closure) per client. */
  readonly #connectionOptions: ConnectionOptions
  readonly #idPrefix = randomBytes(3).toString('hex')
  #nextId = 0
  /** Upgrades past the checks that are waiting for their broker connection. */
  #pendingUpgrades = 0
  #closing = false

  constructor(options: EdgeOptions) {
    this.#config = options.config
    this.#brokers = options.brokers
    this.#log = options.log
    this.#metrics = options.metrics
    this.#tls = options.tls
    // Live byte/frame counts are read from the registry at scrape time, never per message.
    options.metrics.addConnectionSource(this.scheme, () => this.connections.values())
    const ws = options.config.ws
    this.#policy = {
      path: ws.path,
      subprotocols: new Set(ws.subprotocols),
      requireSubprotocol: ws.requireSubprotocol,
      allowedOrigins: ws.allowedOrigins,
      requireOrigin: ws.requireOrigin,
    }
    this.#clientAddresses = new ClientAddressResolver(options.config.http.trustedProxies)
    this.#connectionOptions = {
      highWaterMark: options.config.limits.highWaterMark,
      log: options.log,
      onClose: (closed) => {
        // Same tick: the counts move from the live set to the closed totals together.
        this.#metrics.connectionClosed(closed)
        this.connections.delete(closed)
      },
    }
    this.#wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      maxPayload: ws.maxPayload,
      perMessageDeflate: ws.perMessageDeflate,
      // Text frames are refused unread [MQTT-6.0.0-1], so checking their UTF-8 is wasted work.
      skipUTF8Validation: true,
      handleProtocols: (offered) => pickSubprotocol(offered, this.#policy.subprotocols),
    })
    this.#diagnostics = options.config.http.diagnostics
      ? new Diagnostics({
          config: options.config,
          tls: options.tls,
          clientAddress: (req) => this.#clientOf(req).clientAddress,
          peerAddress: remoteOf,
        })
      : undefined
    this.#server = options.tls
      ? https.createServer(options.tls.serverOptions())
      : http.createServer()
    if (options.tls) options.tls.attach(this.#server as https.Server, 'wss')
    // Slow headers on a kept-alive connection; the first request is bounded by our own timer.
    this.#server.headersTimeout = ws.handshakeTimeout
    this.#server.requestTimeout = ws.handshakeTimeout
    // Over TLS the HTTP layer sees the TLSSocket of 'secureConnection', not the raw TCP socket
    // of 'connection' (the TLS handshake itself is bounded by the TLS handshakeTimeout).
    this.#server.on(options.tls ? 'secureConnection' : 'connection', this.#onConnection)
    this.#server.on('request', this.#onRequest)
    this.#server.on('upgrade', this.#onUpgrade)
    this.#server.on('clientError', this.#onClientError)
  }

  listen(): Promise<AddressInfo> {
    const { host, port } = this.#config.listen
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        const hint = err.code === 'EACCES' ? ' (ports below 1024 need CAP_NET_BIND_SERVICE)' : ''
        reject(
          new ListenError(`cannot listen on ${host}:${port}: ${err.code}${hint}`, { cause: err }),
        )
      }
      this.#server.once('error', onError)
      this.#server.listen(port, host, () => {
        this.#server.removeListener('error', onError)
        this.connections.startPings({
          interval: this.#config.ws.pingInterval,
          timeout: this.#config.ws.pongTimeout,
        })
        resolve(this.address())
      })
    })
  }

  /** True from listen() until close() begins: part of readiness. */
  get listening(): boolean {
    return this.#server.listening && !this.#closing
  }

  /** 'wss' when the listener speaks TLS. */
  get scheme(): 'ws' | 'wss' {
    return this.#tls ? 'wss' : 'ws'
  }

  address(): AddressInfo {
    return this.#server.address() as AddressInfo
  }

  /**
   * Stops accepting, sends every open WebSocket 1001, waits up to `grace` ms for them to close,
   * then cuts the rest.
   */
  async close(grace: number): Promise<void> {
    this.#closing = true
    this.connections.stopPings()
    const serverClosed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    this.#server.closeIdleConnections()
    const open = [...this.connections.values()]
    if (open.length > 0) {
      this.#log.info({ open: open.length, graceMs: grace }, 'closing open connections')
    }
    const allClosed = Promise.all(open.map((c) => c.whenClosed()))
    for (const connection of open) {
      connection.close(CloseCode.GOING_AWAY, CloseReason.shuttingDown, 'gateway')
    }
    let graceTimer: NodeJS.Timeout | undefined
    const graceOver = new Promise<'timeout'>((resolve) => {
      graceTimer = setTimeout(() => resolve('timeout'), grace)
    })
    if ((await Promise.race([allClosed, graceOver])) === 'timeout') {
      const left = [...this.connections.values()]
      this.#log.warn({ open: left.length }, 'shutdown.grace over; cutting remaining connections')
      for (const connection of left) connection.terminate('shutdown grace over')
      await allClosed
    }
    clearTimeout(graceTimer)
    this.#server.closeAllConnections()
    await serverClosed
    this.#wss.close()
  }

  readonly #onConnection = (socket: Socket): void => {
    // No 'close' listener to clear the timer: it would outlive the upgrade on every connection
    // (memory per idle client); a timer that fires on a socket already gone does nothing.
    const timer = setTimeout(() => {
      if (socket.destroyed) return
      this.#refuse(socket, undefined, {
        status: 408,
        reason: 'handshake_timeout',
        message: `no complete upgrade request within ${this.#config.ws.handshakeTimeout} ms`,
      })
    }, this.#config.ws.handshakeTimeout)
    // An open socket keeps the process alive by itself; the timer must not outlive it.
    timer.unref()
    this.#handshakeTimers.set(socket, timer)
  }

  #clearHandshakeTimer(socket: Socket): void {
    clearTimeout(this.#handshakeTimers.get(socket))
    this.#handshakeTimers.delete(socket)
  }

  // Plain HTTP (no Upgrade header). Only the WebSocket path means anything here.
  readonly #onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    this.#clearHandshakeTimer(req.socket)
    if (this.#refuseUntrustedClient(req.socket)) return
    if (this.#diagnostics?.handle(req, res) === true) return
    const onPath = requestPath(req.url) === this.#policy.path
    let refusal: Refusal
    if (!onPath) {
      refusal = {
        status: 404,
        reason: 'path',
        message: `not found; the WebSocket endpoint is ${this.#policy.path}`,
      }
    } else if (req.headers['sec-websocket-key'] !== undefined) {
      // The client asked for a WebSocket but the Upgrade header did not survive the trip: a
      // proxy that drops hop-by-hop headers sits in between (FIELD-NOTES 58).
      refusal = {
        status: 426,
        reason: 'not_websocket',
        message:
          'the request has Sec-WebSocket-Key but no Upgrade/Connection headers: a proxy on the way probably removed them',
        headers: { Upgrade: 'websocket' },
      }
    } else {
      refusal = {
        status: 426,
        reason: 'not_websocket',
        message: `this endpoint speaks MQTT over WebSocket (subprotocols: ${[...this.#policy.subprotocols].join(', ')})`,
        headers: { Upgrade: 'websocket' },
      }
    }
    this.#logRefusal(req, refusal)
    const body = `${refusal.message}\n`
    res.writeHead(refusal.status, {
      'Content-Type': 'text/plain; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
      ...refusal.headers,
    })
    res.end(body)
  }

  readonly #onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
    this.#clearHandshakeTimer(req.socket)
    void this.#upgrade(req, socket, head)
  }

  async #upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    if (this.#refuseUntrustedClient(socket)) return
    if (this.#closing) {
      this.#refuse(socket, req, {
        status: 503,
        reason: 'shutting_down',
        message: 'server shutting down',
      })
      return
    }
    const decision = validateUpgrade(req, this.#policy)
    if (!decision.ok) {
      this.#refuse(socket, req, decision.refusal)
      return
    }
    if (this.connections.size + this.#pendingUpgrades >= this.#config.limits.maxConnections) {
      this.#refuse(socket, req, {
        status: 503,
        reason: 'capacity',
        message: `connection limit reached (${this.#config.limits.maxConnections})`,
        headers: { 'Retry-After': RETRY_AFTER_SECONDS },
      })
      return
    }

    const upstream = await this.#connectBroker(req, socket)
    if (upstream === undefined) return
    // Shutdown may have begun while the broker connect was awaited (the rule cannot see that).
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
    if (this.#closing) {
      upstream.socket.destroy()
      this.#refuse(socket, req, {
        status: 503,
        reason: 'shutting_down',
        message: 'server shutting down',
      })
      return
    }
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      this.#accept(req, ws, upstream, decision.protocol)
    })
  }

  async #connectBroker(req: http.IncomingMessage, socket: Duplex): Promise<Upstream | undefined> {
    this.#pendingUpgrades++
    const abort = new AbortController()
    const onGone = (): void => abort.abort()
    socket.once('close', onGone)
    // A reset while we wait for the broker must not become an uncaught 'error'.
    socket.on('error', onGone)
    try {
      return await connectUpstream({
        brokers: this.#brokers,
        connectTimeout: this.#config.upstream.connectTimeout,
        signal: abort.signal,
        onAttempt: (attempt) => this.#metrics.upstreamAttempt(attempt),
      })
    } catch (err) {
      if (abort.signal.aborted) {
        this.#log.info({ remote: remoteOf(req) }, 'client left before its upgrade completed')
        socket.destroy()
        return undefined
      }
      const timeout = err instanceof UpstreamTimeoutError
      this.#refuse(socket, req, {
        status: timeout ? 504 : 502,
        reason: timeout ? 'upstream_timeout' : 'upstream_refused',
        message: err instanceof Error ? err.message : String(err),
      })
      return undefined
    } finally {
      this.#pendingUpgrades--
      socket.removeListener('close', onGone)
      socket.removeListener('error', onGone)
    }
  }

  #accept(
    req: http.IncomingMessage,
    ws: WebSocket,
    upstream: Upstream,
    protocol: string | false,
  ): void {
    const connection = new Connection(
      ws,
      upstream.socket,
      {
        id: `${this.#idPrefix}-${(++this.#nextId).toString(36)}`,
        listener: this.scheme,
        remoteAddress: remoteOf(req),
        ...this.#clientOf(req),
        origin: req.headers.origin,
        protocol,
        broker: upstream.broker,
        ...this.#tlsDetails(req.socket),
      },
      this.#connectionOptions,
    )
    this.connections.add(connection)
    this.#metrics.connectionOpened(this.scheme)
  }

  /** The client's address, from a trusted proxy's headers when the peer is one. */
  #clientOf(req: http.IncomingMessage): Pick<ConnectionInfo, 'clientAddress' | 'forwarded'> {
    const client = this.#clientAddresses.resolve(req.socket.remoteAddress ?? '', req.headers)
    return { clientAddress: client.address, forwarded: client.source !== 'peer' }
  }

  #tlsDetails(socket: Duplex): Pick<ConnectionInfo, 'tls'> {
    const verdict = this.#tls?.verdict(socket)
    return verdict ? { tls: verdict.tls } : {}
  }

  /**
   * A client whose certificate was refused at the end of its TLS handshake (logged and counted
   * there, with the reason) gets 403 and a closed socket, never a WebSocket: every request on
   * its socket stops here. The body names the reason so a non-browser client can log it.
   */
  #refuseUntrustedClient(socket: Duplex): boolean {
    if (this.#tls === undefined) return false
    const verdict = this.#tls.verdict(socket)
    if (verdict === undefined || verdict.ok) return false
    this.#metrics.handshakeRejected('client_cert')
    writeRefusal(socket, {
      status: 403,
      reason: 'client_cert',
      message: `client certificate refused: ${verdict.reason} (${verdict.detail})`,
    })
    return true
  }

  #refuse(socket: Duplex, req: http.IncomingMessage | undefined, refusal: Refusal): void {
    this.#logRefusal(req, refusal, socket)
    writeRefusal(socket, refusal)
  }

  // Every refusal passes here, so this is where handshake_rejections_total is counted.
  #logRefusal(req: http.IncomingMessage | undefined, refusal: Refusal, socket?: Duplex): void {
    this.#metrics.handshakeRejected(refusal.reason)
    if (req) this.#diagnostics?.recordRefusal(req, refusal)
    this.#log.warn(
      {
        remote: req ? remoteOf(req) : peerAddress(socket),
        ...(req && this.#forwardedClient(req)),
        path: req?.url,
        status: refusal.status,
        reason: refusal.reason,
        detail: refusal.message,
      },
      'upgrade refused',
    )
  }

  /** `{ client }` for log lines when a trusted proxy reported a client other than the peer. */
  #forwardedClient(req: http.IncomingMessage): { client: string } | undefined {
    const { clientAddress, forwarded } = this.#clientOf(req)
    return forwarded ? { client: clientAddress } : undefined
  }

  // Malformed HTTP (Node's parser gave up): answer 400 like Node would, and log it.
  readonly #onClientError = (err: NodeJS.ErrnoException, socket: Duplex): void => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy()
      return
    }
    const status =
      err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400
    this.#refuse(socket, undefined, {
      status,
      reason: status === 408 ? 'handshake_timeout' : 'malformed',
      message: `bad HTTP request: ${err.code ?? err.message}`,
    })
  }
}

function remoteOf(req: http.IncomingMessage): string {
  return peerAddress(req.socket)
}

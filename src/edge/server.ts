// The public listener: an HTTP server (HTTPS when tls.enabled) whose only job is to decide
// WebSocket upgrades and hand each accepted one, with its already-open broker socket (or, with
// upstream.connectOn=connect, none yet), to a bridge Connection. What decides an upgrade is the list of steps in admission.ts; what a
// refused client is told is the catalogue in refusals.ts. Paths under an http.routes prefix
// (not ws.path, not the diagnostics page) go to the web app's backend instead (routes.ts).
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { WebSocketServer, type WebSocket } from 'ws'
import {
  Connection,
  type ConnectionInfo,
  type ConnectionOptions,
  type IdentityRewrite,
} from '../bridge/connection.js'
import type { PermissionsPolicy } from '../bridge/topic-guard.js'
import type { ConnectionRegistry, ShutdownPolicy } from '../bridge/registry.js'
import { WebSocketClient } from '../bridge/websocket-client.js'
import type { EdgeAuth } from '../auth/gate.js'
import type { Config } from '../config/schema.js'
import { listen } from '../listen.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { BrokerConnector } from '../upstream/connector.js'
import {
  admit,
  Capacity,
  clientCertificateRefusal,
  connectDial,
  routedUpgradeSteps,
  releaseOnClose,
  websocketSteps,
  type RoutedUpgrade,
  type Step,
  type Upgrade,
} from './admission.js'
import { AcceptGate } from './accept-gate.js'
import { ClientAddressResolver, peerAddress } from './client-address.js'
import type { ClientTable } from './client-limits.js'
import { Diagnostics } from './diagnostics.js'
import { describeProxyClient } from './proxy-client.js'
import { ProxyGate } from './proxy-gate.js'
import {
  parseSubprotocols,
  pickSubprotocol,
  requestPath,
  type HandshakePolicy,
} from './handshake.js'
import { loggablePath, Refusals, Refuser, type Refusal } from './refusals.js'
import { Router, type ForwardingFacts } from './routes.js'
import type { TlsManager } from './tls.js'

export interface EdgeOptions {
  listen: Config['listen']
  ws: Config['ws']
  /** http.trustedProxies and http.diagnostics. */
  http: Config['http']
  limits: Config['limits']
  /** mqtt.*: what the connections' framers check. */
  mqtt: Config['mqtt']
  /** tls.identityAs=username (with tls.identityFrom); undefined: usernames go on unchanged. */
  identity?: IdentityRewrite | undefined
  /** auth.permissionsClaim, when set; undefined: topics are not judged. */
  permissions?: PermissionsPolicy | undefined
  /** upstream.connectOn and upstream.affinity: when and where the broker is dialled. */
  upstream: Pick<Config['upstream'], 'connectOn' | 'affinity'>
  /** The connections of every listener; this one adds its own. */
  connections: ConnectionRegistry
  connector: BrokerConnector
  /** The per-client limits (limits.perClient*), shared with the mqtts listener. */
  clients?: ClientTable | undefined
  log: Logger
  metrics: Metrics
  /** When set, the listener speaks TLS (wss://) with this manager's material and client policy. */
  tls?: TlsManager | undefined
  /** auth.mode=jwt: tokens checked before the 101 (or at the CONNECT); undefined when none. */
  auth?: EdgeAuth | undefined
}

export class EdgeServer {
  readonly #options: EdgeOptions
  readonly #connections: ConnectionRegistry
  readonly #log: Logger
  readonly #metrics: Metrics
  readonly #policy: HandshakePolicy
  readonly #steps: readonly Step<Upgrade>[]
  readonly #routedSteps: readonly Step<RoutedUpgrade>[]
  /** http.routes: the web app's backends; undefined when none is configured. */
  readonly #router: Router | undefined
  readonly #refuse: Refuser
  readonly #clientAddresses: ClientAddressResolver
  /** listen.proxyProtocol: reads the load balancer's PROXY header first; undefined when off. */
  readonly #proxyGate: ProxyGate | undefined
  /** limits.acceptRate; undefined when off. */
  readonly #acceptGate: AcceptGate | undefined
  readonly #server: http.Server | https.Server
  readonly #wss: WebSocketServer
  /** The diagnostics page and its JSON (http.diagnostics), else undefined. */
  readonly #diagnostics: Diagnostics | undefined
  readonly #handshakeTimers = new WeakMap<Socket, NodeJS.Timeout>()
  /** Shared by every Connection: one object, not one (with a closure) per client. */
  readonly #connectionOptions: ConnectionOptions
  readonly #idPrefix = randomBytes(3).toString('hex')
  #nextId = 0
  #closing = false

  constructor(options: EdgeOptions) {
    this.#options = options
    this.#connections = options.connections
    this.#log = options.log
    this.#metrics = options.metrics
    const { ws, tls } = options
    // Live byte/frame counts are read from the registry at scrape time, never per message.
    options.metrics.addConnectionSource(this.scheme, () =>
      options.connections.valuesOf(this.scheme),
    )
    this.#policy = {
      path: ws.path,
      subprotocols: new Set(ws.subprotocols),
      requireSubprotocol: ws.requireSubprotocol,
      allowedOrigins: ws.allowedOrigins,
      requireOrigin: ws.requireOrigin,
    }
    this.#steps = websocketSteps({
      tls,
      closing: () => this.#closing,
      policy: this.#policy,
      capacity: new Capacity(options.limits.maxConnections, () =>
        options.connections.sizeOf(this.scheme),
      ),
      connector: options.connector,
      connectOn: options.upstream.connectOn,
      auth: options.auth,
      clients: options.clients,
    })
    this.#routedSteps = routedUpgradeSteps({
      tls,
      closing: () => this.#closing,
      policy: this.#policy,
      auth: options.auth,
      clients: options.clients,
    })
    this.#clientAddresses = new ClientAddressResolver(options.http.trustedProxies)
    this.#router =
      options.http.routes.length === 0
        ? undefined
        : new Router({
            routes: options.http.routes,
            scheme: tls ? 'https' : 'http',
            forwarding: (req) => this.#forwardingOf(req),
            log: options.log,
            metrics: options.metrics,
          })
    this.#connectionOptions = {
      highWaterMark: options.limits.highWaterMark,
      mqtt: options.mqtt,
      identity: options.identity,
      permissions: options.permissions,
      dial: connectDial(options.upstream, options.connector),
      auth: options.auth,
      rate: options.limits,
      metrics: options.metrics,
      log: options.log,
      onClose: (closed) => {
        // Same tick: the counts move from the live set to the closed totals together.
        this.#metrics.connectionClosed(closed)
        this.#connections.delete(closed)
      },
    }
    this.#wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      maxPayload: ws.maxPayload,
      perMessageDeflate: ws.perMessageDeflate,
      // ws's UTF-8 check covers close reasons (RFC 6455 8.1: else 1007) and text frames, which
      // are refused anyway [MQTT-6.0.0-1]; binary frames, all of MQTT, are never checked, so it
      // costs the data path nothing.
      skipUTF8Validation: false,
      handleProtocols: (offered) => pickSubprotocol(offered, this.#policy.subprotocols),
    })
    this.#diagnostics = options.http.diagnostics
      ? new Diagnostics({
          ws,
          tls,
          clientAddress: (req) => this.#clientOf(req).clientAddress,
          peerAddress: (req) => peerAddress(req.socket),
        })
      : undefined
    this.#refuse = new Refuser({
      log: options.log,
      metrics: options.metrics,
      requestFields: (req) => this.#forwardedClient(req),
      onRefused: (req, refusal) => this.#diagnostics?.recordRefusal(req, refusal),
    })
    // auth.mode=jwt: room for a token several times auth.maxTokenSize, so an oversized one is
    // answered as such (431, 414) rather than as a request Node's parser gave up on.
    const maxHeaderSize = options.auth
      ? Math.max(16 * 1024, 4 * options.auth.auth.maxTokenSize)
      : undefined
    const httpOptions = maxHeaderSize === undefined ? {} : { maxHeaderSize }
    this.#server = tls
      ? https.createServer({ ...tls.serverOptions(), ...httpOptions })
      : http.createServer(httpOptions)
    if (tls) tls.attach(this.#server as https.Server, 'wss')
    // Slow headers on a kept-alive connection; the first request is bounded by our own timer.
    this.#server.headersTimeout = ws.handshakeTimeout
    this.#server.requestTimeout = ws.handshakeTimeout
    // Over TLS the HTTP layer sees the TLSSocket of 'secureConnection', not the raw TCP socket
    // of 'connection' (the TLS handshake itself is bounded by the TLS handshakeTimeout).
    this.#server.on(tls ? 'secureConnection' : 'connection', this.#onConnection)
    this.#server.on('request', this.#onRequest)
    this.#server.on('upgrade', this.#onUpgrade)
    this.#server.on('clientError', this.#onClientError)
    // A CONNECT request (a client that took us for a forward proxy) gets its answer too; without a
    // listener Node would close the socket without a word.
    this.#server.on('connect', this.#onConnect)
    // Last: the gate holds back every 'connection' listener above (and Node's own) until the
    // PROXY header is read, so the handshake timer starts after it.
    this.#proxyGate =
      options.listen.proxyProtocol === 'off'
        ? undefined
        : new ProxyGate({
            mode: options.listen.proxyProtocol,
            from: options.listen.proxyProtocolFrom,
            timeout: ws.handshakeTimeout,
            listener: this.scheme,
            log: options.log,
            metrics: options.metrics,
          })
    this.#proxyGate?.install(this.#server, tls === undefined)
    // Outermost of all: a connection over the rate costs neither a PROXY read nor TLS.
    this.#acceptGate =
      options.limits.acceptRate > 0
        ? new AcceptGate({
            rate: options.limits.acceptRate,
            listener: this.scheme,
            log: options.log,
            metrics: options.metrics,
          })
        : undefined
    this.#acceptGate?.install(this.#server)
  }

  async listen(): Promise<AddressInfo> {
    const address = await listen(
      this.#server,
      'public',
      this.#options.listen.host,
      this.#options.listen.port,
    )
    this.#connections.startPings({
      interval: this.#options.ws.pingInterval,
      timeout: this.#options.ws.pongTimeout,
    })
    // The sweep serves the mqtts listener's connections too (they share the registry).
    if (this.#options.mqtt.inspect)
      this.#connections.startConnectSweep(this.#options.mqtt.connectTimeout)
    return address
  }

  /** True from listen() until close() begins: part of readiness. */
  get listening(): boolean {
    return this.#server.listening && !this.#closing
  }

  /** Sockets to http.routes backends still open, and routed WebSockets (for leak checks). */
  get routedSocketsOpen(): { backend: number; tunnels: number } {
    return {
      backend: this.#router?.backendSocketsOpen ?? 0,
      tunnels: this.#router?.openTunnels ?? 0,
    }
  }

  /** 'wss' when the listener speaks TLS. */
  get scheme(): 'ws' | 'wss' {
    return this.#options.tls ? 'wss' : 'ws'
  }

  address(): AddressInfo {
    return this.#server.address() as AddressInfo
  }

  /**
   * Stops accepting, says the shutdown goodbye to every open WebSocket (MQTT 5: DISCONNECT, then
   * 1001; spread over shutdown.spread), waits up to `grace` ms for them to close, then cuts the
   * rest.
   */
  async close(shutdown: ShutdownPolicy): Promise<void> {
    this.#closing = true
    this.#connections.stopPings()
    this.#connections.stopConnectSweep()
    const serverClosed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    this.#server.closeIdleConnections()
    this.#proxyGate?.destroyPending()
    this.#router?.closeTunnels()
    this.#acceptGate?.close()
    await this.#connections.closeAll(this.scheme, shutdown, this.#log)
    this.#server.closeAllConnections()
    await serverClosed
    this.#wss.close()
  }

  readonly #onConnection = (socket: Socket): void => {
    // Node caches the peer address the first time it is read. Read it at accept: once the
    // client has reset, the kernel answers getpeername() with ENOTCONN even before Node has
    // seen the reset, and a line about a client that left could no longer name it.
    peerAddress(socket)
    // No 'close' listener to clear the timer: it would outlive the upgrade on every connection
    // (memory per idle client); a timer that fires on a socket already gone does nothing.
    const timer = setTimeout(() => {
      if (socket.destroyed) return
      this.#refuse.socket(
        socket,
        undefined,
        Refusals.handshakeTimeout(this.#options.ws.handshakeTimeout),
      )
    }, this.#options.ws.handshakeTimeout)
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
    const untrusted = clientCertificateRefusal(this.#options.tls, req.socket)
    if (untrusted !== undefined) {
      this.#refuse.socket(req.socket, req, untrusted)
      return
    }
    if (this.#diagnostics?.handle(req, res) === true) return
    const path = requestPath(req.url)
    const route = path === this.#policy.path ? undefined : this.#router?.match(req)
    if (route !== undefined) {
      this.#router?.web(req, res, route)
      return
    }
    let refusal: Refusal
    if (path !== this.#policy.path) refusal = Refusals.notFound(this.#policy.path)
    else if (req.headers['sec-websocket-key'] !== undefined) refusal = Refusals.upgradeStripped()
    else refusal = Refusals.notWebSocket(this.#policy.subprotocols)
    this.#refuse.response(res, req, refusal)
  }

  readonly #onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
    this.#clearHandshakeTimer(req.socket)
    this.#upgrade(req, socket, head).catch((err: unknown) => this.#upgradeFailed(err, req, socket))
  }

  readonly #onConnect = (req: http.IncomingMessage, socket: Duplex): void => {
    this.#clearHandshakeTimer(req.socket)
    this.#refuse.socket(socket, req, Refusals.method())
  }

  async #upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const route = requestPath(req.url) === this.#policy.path ? undefined : this.#router?.match(req)
    if (route !== undefined) {
      await this.#routedUpgrade(
        {
          req,
          socket,
          route,
          clientAddress: this.#clientOf(req).clientAddress,
          upstream: undefined,
          onEnd: [],
          onClose: [],
        },
        head,
      )
      return
    }
    // Read now (cached since accept): a client that resets while we wait has no address left.
    const remote = peerAddress(req.socket)
    // Named now: with upstream.proxyProtocol the PROXY header carries it, before the broker
    // step (and the Connection) exists.
    const id = `${this.#idPrefix}-${(++this.#nextId).toString(36)}`
    const upgrade: Upgrade = {
      req,
      socket,
      clientAddress: this.#clientOf(req).clientAddress,
      upstream: undefined,
      onEnd: [],
      onClose: [],
      protocol: false,
      proxy: this.#options.connector.proxying
        ? describeProxyClient({
            id,
            socket: req.socket,
            ...this.#clientOf(req),
            clientPort: this.#proxyGate?.clientOf(req.socket)?.port,
            tls: this.#tlsDetails(req.socket).tls,
          })
        : undefined,
    }
    const outcome = await admit(this.#steps, upgrade, (accepted) =>
      this.#accept(accepted, head, id),
    )
    if (outcome.ok) return
    if ('refusal' in outcome) {
      this.#refuse.socket(socket, req, outcome.refusal)
      return
    }
    this.#log.info({ remote }, 'client left before its upgrade completed')
    socket.destroy()
  }

  // The same refusals as the MQTT endpoint's; what the backend answers is its own affair.
  async #routedUpgrade(upgrade: RoutedUpgrade, head: Buffer): Promise<void> {
    const { req, socket, route } = upgrade
    const outcome = await admit(this.#routedSteps, upgrade, (accepted) => {
      // The client socket closes once, whether the tunnel ends or the backend dial fails.
      const release = releaseOnClose(accepted)
      if (release !== undefined) {
        if (socket.destroyed) release()
        else socket.once('close', release)
      }
      this.#router?.upgrade(req, socket, head, route)
    })
    if (outcome.ok) return
    if ('refusal' in outcome) this.#refuse.socket(socket, req, outcome.refusal)
    else socket.destroy()
  }

  // A fault of our own while deciding an upgrade still gets the client an answer, and is never
  // an unhandled rejection.
  #upgradeFailed(err: unknown, req: http.IncomingMessage, socket: Duplex): void {
    this.#log.error(
      { err, remote: peerAddress(req.socket), path: loggablePath(req.url) },
      'upgrade failed',
    )
    try {
      this.#refuse.socket(socket, req, Refusals.internal())
    } catch {
      socket.destroy()
    }
  }

  #accept(upgrade: Upgrade, head: Buffer, id: string): void {
    const { req, socket, protocol } = upgrade
    const upstream = upgrade.upstream
    if (upstream === undefined && this.#connectionOptions.dial === undefined)
      throw new Error('accepted an upgrade without a broker connection')
    // The last step checked the socket can read and write, so ws calls back at once, unless it
    // refuses the request itself (it answers and destroys the socket without calling back).
    let handedOver = false
    normalizeForWs(req)
    this.#wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      handedOver = true
      const connection = new Connection(
        new WebSocketClient(ws),
        upstream,
        {
          id,
          listener: this.scheme,
          remoteAddress: peerAddress(req.socket),
          ...this.#clientOf(req),
          origin: req.headers.origin,
          protocol,
          ...this.#tlsDetails(req.socket),
          proxy: upgrade.proxy,
          token: upgrade.auth && 'token' in upgrade.auth ? upgrade.auth.token : undefined,
          release: releaseOnClose(upgrade),
        },
        this.#connectionOptions,
      )
      this.#connections.add(connection)
      this.#metrics.connectionOpened(this.scheme)
    })
    // A check of ws's own that ours let through must not leave the broker socket without owner.
    // (The rule cannot see the callback above set it.)
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
    if (!handedOver) {
      upstream?.socket.destroy()
      releaseOnClose(upgrade)?.()
      this.#log.warn(
        { remote: peerAddress(req.socket), path: loggablePath(req.url) },
        'ws refused the upgrade',
      )
    }
  }

  /**
   * The client's address: the PROXY header's source under listen.proxyProtocol, else from a
   * trusted proxy's headers when the peer is one.
   */
  #clientOf(req: http.IncomingMessage): Pick<ConnectionInfo, 'clientAddress' | 'forwarded'> {
    const proxied = this.#proxyGate?.clientOf(req.socket)
    if (proxied !== undefined) return { clientAddress: proxied.address, forwarded: true }
    const client = this.#clientAddresses.resolve(req.socket.remoteAddress ?? '', req.headers)
    return { clientAddress: client.address, forwarded: client.source !== 'peer' }
  }

  /** Who a routed request came from, for the X-Forwarded-* headers its backend gets. */
  #forwardingOf(req: http.IncomingMessage): ForwardingFacts {
    const proxied = this.#proxyGate?.clientOf(req.socket)
    // The PROXY header's sender is a load balancer, not an HTTP proxy: its client is the chain.
    if (proxied !== undefined) return { chain: [proxied.address], fromTrustedProxy: false }
    const client = this.#clientAddresses.resolve(req.socket.remoteAddress ?? '', req.headers)
    return { chain: client.chain, fromTrustedProxy: client.source !== 'peer' }
  }

  #tlsDetails(socket: Duplex): Pick<ConnectionInfo, 'tls'> {
    const verdict = this.#options.tls?.verdict(socket)
    return verdict ? { tls: verdict.tls } : {}
  }

  /** `{ client }` for log lines when a trusted proxy reported a client other than the peer. */
  #forwardedClient(req: http.IncomingMessage): { client: string } | undefined {
    const { clientAddress, forwarded } = this.#clientOf(req)
    return forwarded ? { client: clientAddress } : undefined
  }

  // Malformed HTTP (Node's parser gave up): answer 400 like Node would, and log it.
  readonly #onClientError = (err: NodeJS.ErrnoException, socket: Duplex): void => {
    // A client that hung up in the middle of its request has left, like one that reset: there is
    // nobody to answer, and it is no malformed request to count.
    if (err.code === 'ECONNRESET' || err.code === 'HPE_INVALID_EOF_STATE' || !socket.writable) {
      socket.destroy()
      return
    }
    const code = err.code ?? err.message
    this.#refuse.socket(
      socket,
      undefined,
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? Refusals.requestTimeout(code)
        : Refusals.badHttp(code),
    )
  }
}

/**
 * ws reads two headers again, more strictly than RFC 6455 and RFC 9110 allow: it wants Upgrade
 * to be exactly "websocket" and refuses an empty element in the subprotocol list. The request
 * checks have accepted both forms, so ws is handed them in the form it reads.
 */
function normalizeForWs(req: http.IncomingMessage): void {
  req.headers.upgrade = 'websocket'
  const offered = parseSubprotocols(req.headers['sec-websocket-protocol'])
  if (offered !== null && offered.length > 0)
    req.headers['sec-websocket-protocol'] = offered.join(', ')
}

// http.routes: the web app and its MQTT connection on one origin. A request on the public
// listener whose path starts with a route's prefix goes to that route's backend through
// http-proxy, and so do the backend's own WebSocket upgrades (ws=true) once the routed upgrade
// steps of admission.ts have let them in. The MQTT path and the diagnostics page come first
// (server.ts asks this module only for what they did not take).
//
// What http-proxy 1.18.1 would do on its own, and what is done here instead:
// - xfwd appends to X-Forwarded-*, trusting whatever the client sent: the headers are set here,
//   from the client address server.ts resolved (http.trustedProxies, PROXY header).
// - It forwards every request header, hop-by-hop ones included, and (setConnection) echoes the
//   client's Connection header into the response: both directions are cleaned here, and the
//   response is written here (selfHandleResponse).
// - proxyTimeout aborts the request, and the abort reaches the callback as ECONNRESET, the
//   same as a backend that reset (http-party/node-http-proxy#1535): the timer is armed here so a
//   silent backend is told apart (504) from a refusing one (502). WebSocket proxying has no
//   timeout at all: the same timer covers the wait for the backend's 101.
// - Without an 'error' listener it throws; on a WebSocket it only listens for errors on the
//   client socket once the upgrade is done, and ends rather than destroys the other side
//   (node-http-proxy#1468, #1439): a socket error listener is added before the dial, and each
//   side of a tunnel destroys the other when it closes.
// - On Node 22 and later it prints one DEP0060 warning (util._extend) per process; Node 20, the
//   engine this package declares, prints none. The README says so.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import { STATUS_CODES, type ClientRequest } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import httpProxy from 'http-proxy'
import type { Route } from '../config/formats.js'
import type { Logger } from '../log.js'
import type { Metrics, RouteStatusClass } from '../metrics.js'
import { requestPath } from './handshake.js'

/** What the gateway knows about who sent a request, for the X-Forwarded-* headers. */
export interface ForwardingFacts {
  /** From the client to the TCP peer, nearest last: X-Forwarded-For. */
  readonly chain: readonly string[]
  /**
   * The peer is a trusted proxy (http.trustedProxies) that reported the client: its
   * X-Forwarded-Proto, -Host and -Port describe what the client saw, and are kept.
   */
  readonly fromTrustedProxy: boolean
}

export interface RouterOptions {
  routes: readonly Route[]
  /** The public listener's scheme: X-Forwarded-Proto unless a trusted proxy said otherwise. */
  scheme: 'http' | 'https'
  forwarding: (req: IncomingMessage) => ForwardingFacts
  log: Logger
  metrics: Metrics
}

// RFC 9110 7.6.1: meaningful for one connection only, never forwarded (plus any header the
// Connection header names).
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'transfer-encoding',
  'upgrade',
] as const

/** One routed request (or upgrade) from its start to its answer. */
interface Exchange {
  readonly route: Route
  readonly started: number
  /** The client's address, for log lines. */
  readonly client: string
  /** The request to the backend, once http-proxy has made it. */
  proxyReq: ClientRequest | undefined
  timedOut: boolean
  /** The backend's answer (or ours) has begun: a later error can only cut the connection. */
  answered: boolean
  recorded: boolean
}

export class Router {
  readonly #options: RouterOptions
  /** Longest prefix first, so /app/api/ wins over /app/. */
  readonly #routes: readonly Route[]
  readonly #proxy: httpProxy
  readonly #exchanges = new WeakMap<IncomingMessage, Exchange>()
  /** Client sockets of routed WebSockets past their 101: closed with the listener. */
  readonly #tunnels = new Set<Duplex>()
  /** The gateway's sockets to backends, open right now (plain requests and tunnels). */
  #backendSockets = 0

  constructor(options: RouterOptions) {
    this.#options = options
    this.#routes = [...options.routes].sort((a, b) => b.prefix.length - a.prefix.length)
    for (const route of this.#routes) options.metrics.routeDeclared(route.prefix)
    this.#proxy = httpProxy.createProxyServer({
      xfwd: false,
      changeOrigin: false,
      selfHandleResponse: true,
    })
    this.#proxy.on('proxyReq', (proxyReq, req) => this.#dialled(proxyReq, req))
    this.#proxy.on('proxyReqWs', (proxyReq, req, socket) => {
      this.#dialled(proxyReq, req)
      this.#watchUpgrade(proxyReq, req, socket)
    })
    this.#proxy.on('proxyRes', (proxyRes, req, res) => this.#respond(proxyRes, req, res))
    // Every call passes its own callback, so this only keeps http-proxy from throwing should one
    // of its paths emit an error without it.
    this.#proxy.on('error', (err) => this.#options.log.warn({ err }, 'route proxy error'))
  }

  get size(): number {
    return this.#routes.length
  }

  /** Routed WebSockets open through the gateway. */
  get openTunnels(): number {
    return this.#tunnels.size
  }

  /** Sockets from the gateway to route backends still open (0 once every exchange is over). */
  get backendSocketsOpen(): number {
    return this.#backendSockets
  }

  /** The route for `req`'s path, or undefined. */
  match(req: IncomingMessage): Route | undefined {
    if (this.#routes.length === 0) return undefined
    const path = requestPath(req.url)
    return this.#routes.find((route) => path.startsWith(route.prefix))
  }

  /** A plain HTTP request: proxied, answered by the backend, or 502/504 by us. */
  web(req: IncomingMessage, res: ServerResponse, route: Route): void {
    const exchange = this.#begin(req, route, false)
    res.once('close', () => {
      // A client that left stops the backend request too, not only when its body was unfinished
      // (Node emits 'aborted', which http-proxy listens for, only then).
      if (!res.writableFinished) exchange.proxyReq?.destroy()
      this.#record(req, exchange, res.writableFinished ? res.statusCode : undefined)
    })
    this.#proxy.web(
      req,
      res,
      { target: route.target, proxyTimeout: route.timeout },
      (err: NodeJS.ErrnoException) => this.#webFailed(err, req, res, exchange),
    )
  }

  /** A WebSocket upgrade the routed steps admitted: the backend answers its handshake. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, route: Route): void {
    const exchange = this.#begin(req, route, true)
    // http-proxy listens for the client socket's errors only once the backend said 101.
    socket.on('error', () => socket.destroy())
    socket.once('close', () => {
      if (!exchange.answered) {
        exchange.proxyReq?.destroy()
        this.#record(req, exchange, undefined)
      }
    })
    this.#proxy.ws(
      req,
      socket,
      head,
      { target: route.target, ws: true },
      (err: NodeJS.ErrnoException) => this.#upgradeFailed(err, req, socket, exchange),
    )
  }

  /** At shutdown: routed WebSockets end with the listener (plain requests end with it anyway). */
  closeTunnels(): void {
    for (const socket of this.#tunnels) socket.destroy()
  }

  #begin(req: IncomingMessage, route: Route, upgrade: boolean): Exchange {
    const facts = this.#options.forwarding(req)
    const exchange: Exchange = {
      route,
      started: performance.now(),
      client: facts.chain[0] ?? '',
      proxyReq: undefined,
      timedOut: false,
      answered: false,
      recorded: false,
    }
    this.#exchanges.set(req, exchange)
    this.#rewrite(req, route, upgrade, facts)
    return exchange
  }

  // Headers before the path: the forwarding facts are read from the request as it came.
  #rewrite(req: IncomingMessage, route: Route, upgrade: boolean, facts: ForwardingFacts): void {
    const headers = req.headers
    const kept = (name: string): string | undefined =>
      facts.fromTrustedProxy ? single(headers[name]) : undefined
    const proto = kept('x-forwarded-proto') ?? this.#options.scheme
    const host = kept('x-forwarded-host') ?? headers.host
    const port = kept('x-forwarded-port') ?? String((req.socket as Partial<Socket>).localPort ?? '')
    removeHopByHop(headers)
    if (upgrade) {
      headers.connection = 'Upgrade'
      headers.upgrade = 'websocket'
    }
    // Replaced, never appended to: a backend reading any of them reads what the gateway saw.
    delete headers['x-real-ip']
    const client = facts.chain[0] ?? ''
    headers['x-forwarded-for'] = facts.chain.join(', ')
    headers['x-forwarded-proto'] = proto
    headers['x-forwarded-port'] = port
    if (host === undefined) delete headers['x-forwarded-host']
    else headers['x-forwarded-host'] = host
    headers.forwarded = [
      `for=${forwardedNode(client)}`,
      ...(host === undefined ? [] : [`host="${host.replace(/["\\]/g, '')}"`]),
      `proto=${proto}`,
    ].join(';')

    if (route.stripPrefix) {
      const url = originForm(req.url)
      req.url = url.slice(route.prefix.length - 1)
    }
  }

  #dialled(proxyReq: ClientRequest, req: IncomingMessage): void {
    const exchange = this.#exchanges.get(req)
    if (exchange === undefined) return
    exchange.proxyReq = proxyReq
    proxyReq.once('socket', (socket: Socket) => {
      this.#backendSockets++
      socket.once('close', () => this.#backendSockets--)
    })
    // Idle time on the backend socket: no answer, or a response body that stalls. Emitted as
    // 'timeout', so it is told apart from a reset before the error reaches the callback.
    proxyReq.setTimeout(exchange.route.timeout, () => {
      exchange.timedOut = true
      proxyReq.destroy()
    })
  }

  #watchUpgrade(proxyReq: ClientRequest, req: IncomingMessage, socket: Duplex): void {
    const exchange = this.#exchanges.get(req)
    if (exchange === undefined) return
    // The backend refused the upgrade with a response of its own: http-proxy relays it.
    proxyReq.once('response', (res: IncomingMessage) => {
      exchange.answered = true
      this.#record(req, exchange, res.statusCode)
    })
    proxyReq.once('upgrade', (_res: IncomingMessage, backend: Socket) => {
      exchange.answered = true
      this.#record(req, exchange, 101)
      // Each side ends the other, whichever fails first, so no half of a tunnel is left open.
      backend.once('close', () => socket.destroy())
      socket.once('close', () => {
        backend.destroy()
        this.#tunnels.delete(socket)
      })
      if (socket.destroyed) backend.destroy()
      else this.#tunnels.add(socket)
    })
  }

  #respond(proxyRes: IncomingMessage, req: IncomingMessage, res: ServerResponse): void {
    const exchange = this.#exchanges.get(req)
    if (exchange === undefined || res.headersSent || res.destroyed) {
      proxyRes.destroy()
      return
    }
    exchange.answered = true
    const headers = { ...proxyRes.headers }
    removeHopByHop(headers)
    res.writeHead(proxyRes.statusCode ?? 502, proxyRes.statusMessage, headers)
    proxyRes.pipe(res)
    // A backend that dies mid-body: the client must not take a cut body for a whole one.
    proxyRes.once('close', () => {
      if (!proxyRes.complete) res.destroy()
    })
    proxyRes.on('error', () => res.destroy())
  }

  #webFailed(
    err: NodeJS.ErrnoException,
    req: IncomingMessage,
    res: ServerResponse,
    exchange: Exchange,
  ): void {
    if (exchange.answered || res.headersSent) {
      this.#options.log.warn(
        { ...this.#fields(req, exchange), err: err.code ?? err.message },
        'routed response cut: the backend failed mid-answer',
      )
      res.destroy()
      return
    }
    const answer = this.#failure(err, exchange)
    this.#options.log.warn(
      { ...this.#fields(req, exchange), status: answer.status, err: err.code ?? err.message },
      answer.message,
    )
    const body = `${answer.message}\n`
    res.writeHead(answer.status, {
      'Content-Type': 'text/plain; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
    })
    res.end(body)
  }

  #upgradeFailed(
    err: NodeJS.ErrnoException,
    req: IncomingMessage,
    socket: Duplex,
    exchange: Exchange,
  ): void {
    // Past the backend's own answer there is no status left to give: the tunnel just ends.
    if (exchange.answered || socket.destroyed) {
      socket.destroy()
      return
    }
    exchange.answered = true
    const answer = this.#failure(err, exchange)
    this.#options.log.warn(
      { ...this.#fields(req, exchange), status: answer.status, err: err.code ?? err.message },
      answer.message,
    )
    this.#record(req, exchange, answer.status)
    const body = `${answer.message}\n`
    socket.once('finish', () => socket.destroy())
    socket.end(
      [
        `HTTP/1.1 ${answer.status} ${STATUS_CODES[answer.status] ?? 'Error'}`,
        'Connection: close',
        'Content-Type: text/plain; charset=utf-8',
        `Content-Length: ${Buffer.byteLength(body)}`,
        '',
        body,
      ].join('\r\n'),
    )
  }

  /** 504 for a backend that stayed silent past the route's timeout, 502 for any other failure. */
  #failure(err: NodeJS.ErrnoException, exchange: Exchange): { status: number; message: string } {
    const { prefix, timeout } = exchange.route
    // http-proxy's own proxyTimeout (armed too, for requests it dials without a 'proxyReq'
    // event: Expect: 100-continue) shows up as a reset, after the timeout.
    const timedOut =
      exchange.timedOut ||
      (err.code === 'ECONNRESET' && performance.now() - exchange.started >= timeout)
    return timedOut
      ? { status: 504, message: `the backend of ${prefix} did not answer within ${timeout} ms` }
      : { status: 502, message: `the backend of ${prefix} failed: ${err.code ?? err.message}` }
  }

  /** One metric observation and one log line per routed request, whatever its end. */
  #record(req: IncomingMessage, exchange: Exchange, status: number | undefined): void {
    if (exchange.recorded) return
    exchange.recorded = true
    const seconds = (performance.now() - exchange.started) / 1000
    const statusClass: RouteStatusClass =
      status === undefined ? 'aborted' : (`${Math.floor(status / 100)}xx` as RouteStatusClass)
    this.#options.metrics.routeRequest(exchange.route.prefix, statusClass, seconds)
    // debug, not info: a busy web app would bury the gateway's own lines.
    this.#options.log.debug(
      {
        ...this.#fields(req, exchange),
        status: status ?? 'aborted',
        ms: Math.round(seconds * 1000),
      },
      'routed request',
    )
  }

  #fields(req: IncomingMessage, exchange: Exchange): Record<string, unknown> {
    return {
      route: exchange.route.prefix,
      method: req.method,
      path: requestPath(req.url),
      client: exchange.client,
    }
  }
}

/** Removes the hop-by-hop headers, and those the Connection header names, in place. */
export function removeHopByHop(headers: IncomingHttpHeaders): void {
  const connection = headers.connection
  const named = (Array.isArray(connection) ? connection.join(',') : (connection ?? ''))
    .split(',')
    .map((name) => name.trim().toLowerCase())
    .filter((name) => name !== '')
  // The names come from the request itself, hence no fixed keys to delete.
  for (const name of [...named, ...HOP_BY_HOP]) Reflect.deleteProperty(headers, name)
}

function single(value: string | string[] | undefined): string | undefined {
  const text = Array.isArray(value) ? value[0] : value
  return text === undefined || text.trim() === '' ? undefined : text.trim()
}

/** RFC 7239 6: an IPv6 node is bracketed and quoted; an IPv4 one is a plain token. */
function forwardedNode(address: string): string {
  return address.includes(':') ? `"[${address}]"` : address
}

/** `/path?query` of a request target, absolute-form ("GET http://host/path") included. */
function originForm(url: string | undefined): string {
  const raw = url ?? '/'
  if (!/^https?:\/\//i.test(raw)) return raw
  try {
    const parsed = new URL(raw)
    return `${parsed.pathname}${parsed.search}`
  } catch {
    return raw
  }
}

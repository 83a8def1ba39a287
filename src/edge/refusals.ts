// Every answer the gateway gives a client it will not serve, in one catalogue: the HTTP status,
// the reason label (the `reason` of the log line and of handshake_rejections_total) and the
// message of the body. The README's handshake table lists them; the Refuser below is the one
// way a refusal leaves the gateway: written, logged and counted together.
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import type { UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { peerAddress } from './client-address.js'

/** Why a client was refused; also the `reason` label of the rejection metric. */
export type RefusalReason =
  | 'path'
  | 'method'
  | 'malformed'
  | 'not_websocket'
  | 'subprotocol'
  | 'capacity'
  /** limits.perClientConnections: the client has as many open connections as it may. */
  | 'client_connections'
  /** limits.perClientRate: the client opens connections faster than it may. */
  | 'client_rate'
  /** limits.acceptRate: closed at TCP accept, before TLS or HTTP (no answer; AcceptGate logs). */
  | 'accept_rate'
  | 'shutting_down'
  | 'upstream_refused'
  | 'upstream_timeout'
  | 'handshake_timeout'
  /** The TLS client certificate was refused (the TLS layer logs the precise reason). */
  | 'client_cert'
  /** The browser's Origin is not in ws.allowedOrigins, or it is missing under ws.requireOrigin. */
  | 'origin'
  /** auth.mode=jwt: no token, or one that failed (drawbridge_auth_refusals_total says why). */
  | 'auth'
  /** A fault of the gateway's own while deciding the upgrade (logged with the error). */
  | 'internal'

// Every reason, so each has a metric series from the first scrape. A Record keyed by the union
// fails the build when a reason is added above and not here.
export const REFUSAL_REASONS = Object.keys({
  path: true,
  method: true,
  malformed: true,
  not_websocket: true,
  subprotocol: true,
  capacity: true,
  client_connections: true,
  client_rate: true,
  accept_rate: true,
  shutting_down: true,
  upstream_refused: true,
  upstream_timeout: true,
  handshake_timeout: true,
  client_cert: true,
  origin: true,
  auth: true,
  internal: true,
} satisfies Record<RefusalReason, true>) as RefusalReason[]

export interface Refusal {
  status: number
  reason: RefusalReason
  /** Short text for the response body and the log line. */
  message: string
  headers?: Record<string, string>
}

/** Seconds a client refused for capacity is asked to wait before it tries again. */
const RETRY_AFTER_SECONDS = '5'

function refusal(
  status: number,
  reason: RefusalReason,
  message: string,
  headers?: Record<string, string>,
): Refusal {
  return headers ? { status, reason, message, headers } : { status, reason, message }
}

/** The catalogue, in the order the upgrade meets them (README "The WebSocket handshake"). */
export const Refusals = {
  clientCert: (why: string, detail: string) =>
    refusal(403, 'client_cert', `client certificate refused: ${why} (${detail})`),
  notFound: (path: string) => refusal(404, 'path', `not found; the WebSocket endpoint is ${path}`),
  wrongPath: (path: string) => refusal(404, 'path', `no WebSocket endpoint here; use ${path}`),
  /** A WebSocket upgrade under an http.routes prefix whose route has ws=false. */
  routeWithoutWebSocket: (prefix: string) =>
    refusal(404, 'path', `the route ${prefix} does not take WebSocket upgrades (ws=false)`),
  method: () => refusal(405, 'method', 'WebSocket upgrades must use GET', { Allow: 'GET' }),
  notWebSocket: (subprotocols: Iterable<string>) =>
    refusal(
      426,
      'not_websocket',
      `this endpoint speaks MQTT over WebSocket (subprotocols: ${[...subprotocols].join(', ')})`,
      { Upgrade: 'websocket' },
    ),
  // The client asked for a WebSocket but the Upgrade header did not survive the trip: a proxy
  // that drops hop-by-hop headers sits in between (FIELD-NOTES 58).
  upgradeStripped: () =>
    refusal(
      426,
      'not_websocket',
      'the request has Sec-WebSocket-Key but no Upgrade/Connection headers: a proxy on the way probably removed them',
      { Upgrade: 'websocket' },
    ),
  httpVersion: (version: string) =>
    refusal(400, 'malformed', `WebSocket upgrades need HTTP/1.1 or later, not HTTP/${version}`),
  noHost: () => refusal(400, 'malformed', 'the request has no Host header'),
  badHost: () =>
    refusal(400, 'malformed', 'the request needs exactly one Host header with a valid host'),
  upgradeBody: () =>
    refusal(
      400,
      'malformed',
      'an upgrade request carries no body (Content-Length, Transfer-Encoding)',
    ),
  badUpgradeHeader: () => refusal(400, 'malformed', 'invalid Upgrade header: expected "websocket"'),
  badKey: () => refusal(400, 'malformed', 'missing or invalid Sec-WebSocket-Key header'),
  badVersion: () =>
    refusal(400, 'malformed', 'missing or invalid Sec-WebSocket-Version header', {
      'Sec-WebSocket-Version': '13, 8',
    }),
  badSubprotocolHeader: () => refusal(400, 'malformed', 'invalid Sec-WebSocket-Protocol header'),
  /** Node's HTTP parser gave up on the request (`code` is its error code). */
  badHttp: (code: string) =>
    refusal(code === 'HPE_HEADER_OVERFLOW' ? 431 : 400, 'malformed', `bad HTTP request: ${code}`),
  originRequired: () =>
    refusal(403, 'origin', 'an Origin header is required here (ws.requireOrigin)'),
  originRefused: (origin: string) =>
    refusal(403, 'origin', `origin ${origin} is not allowed (ws.allowedOrigins)`),
  subprotocol: (offered: readonly string[], accepted: Iterable<string>) => {
    const what = offered.length === 0 ? 'none was offered' : `offered: ${offered.join(', ')}`
    return refusal(
      400,
      'subprotocol',
      `no acceptable subprotocol (${what}); accepted: ${[...accepted].join(', ')}`,
    )
  },
  capacity: (max: number) =>
    refusal(503, 'capacity', `connection limit reached (${max})`, {
      'Retry-After': RETRY_AFTER_SECONDS,
    }),
  clientConnections: (client: string, max: number) =>
    refusal(
      429,
      'client_connections',
      `client ${client} has ${max} open connections, the most it may (limits.perClientConnections)`,
      { 'Retry-After': RETRY_AFTER_SECONDS },
    ),
  /** `retryAfter`: whole seconds until the client's next token, at least 1. */
  clientRate: (client: string, rate: number, retryAfter: number) =>
    refusal(
      429,
      'client_rate',
      `client ${client} opens connections faster than ${rate} per second (limits.perClientRate)`,
      { 'Retry-After': String(retryAfter) },
    ),
  shuttingDown: () => refusal(503, 'shutting_down', 'server shutting down'),
  /** 502 or 504, as the error class says (UpstreamRefusedError, UpstreamTimeoutError). */
  upstream: (err: UpstreamError) => refusal(err.status, err.reason, err.message),
  handshakeTimeout: (ms: number) =>
    refusal(408, 'handshake_timeout', `no complete upgrade request within ${ms} ms`),
  requestTimeout: (code: string) => refusal(408, 'handshake_timeout', `bad HTTP request: ${code}`),
  // auth.mode=jwt (RFC 6750 3: the challenge names what was wrong with the token, never it).
  tokenMissing: () =>
    refusal(401, 'auth', 'a token is required (see auth.tokenFrom for where it may be sent)', {
      'WWW-Authenticate': 'Bearer realm="drawbridge"',
    }),
  tokenInvalid: (why: string) =>
    refusal(401, 'auth', `token refused: ${why}`, {
      'WWW-Authenticate': `Bearer error="invalid_token", error_description="${quotable(why)}"`,
    }),
  /** 431 in a header or cookie, 414 in the query (RFC 9110 15.5.15, RFC 6585 5). */
  tokenTooLarge: (status: 401 | 414 | 431, max: number) =>
    refusal(status, 'auth', `token over ${max} bytes (auth.maxTokenSize)`, {
      'WWW-Authenticate': `Bearer error="invalid_token", error_description="token over ${max} bytes"`,
    }),
  tokenKeysUnavailable: (why: string) =>
    refusal(503, 'auth', `tokens cannot be checked now: ${why}`, {
      'Retry-After': RETRY_AFTER_SECONDS,
    }),
  internal: () => refusal(500, 'internal', 'internal error; the gateway log has the details'),
} as const

export interface RefuserOptions {
  log: Logger
  metrics: Metrics
  /** Fields the log line adds for a request (the client a trusted proxy reported). */
  requestFields?: (req: IncomingMessage) => Record<string, unknown> | undefined
  /** Told about every refusal of a request (the diagnostics page remembers some). */
  onRefused?: (req: IncomingMessage, refusal: Refusal) => void
}

/**
 * Writes, logs and counts refusals. An HTTP client gets a real response with a status line and a
 * reason it can log, never a bare reset (as ws's abortHandshake() does); an mqtts client, which
 * has no HTTP to read, is disconnected.
 */
export class Refuser {
  readonly #options: RefuserOptions

  constructor(options: RefuserOptions) {
    this.#options = options
  }

  /** On a raw socket: an upgrade, or a connection whose request never completed. */
  socket(socket: Duplex, req: IncomingMessage | undefined, refusal: Refusal): void {
    this.#record(refusal, req, socket, 'upgrade refused')
    writeRefusal(socket, refusal)
  }

  /** A plain HTTP request (no Upgrade), answered through Node's response. */
  response(res: ServerResponse, req: IncomingMessage, refusal: Refusal): void {
    this.#record(refusal, req, req.socket, 'upgrade refused')
    const body = `${refusal.message}\n`
    res.writeHead(refusal.status, {
      'Content-Type': 'text/plain; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
      ...refusal.headers,
    })
    res.end(body)
  }

  /** An mqtts client: no HTTP to answer with, so the socket is closed. */
  stream(socket: Duplex, listener: string, refusal: Refusal): void {
    this.#record(refusal, undefined, socket, 'mqtts connection refused', { listener })
    socket.destroy()
  }

  #record(
    refusal: Refusal,
    req: IncomingMessage | undefined,
    socket: Duplex,
    message: string,
    extra?: Record<string, unknown>,
  ): void {
    this.#options.metrics.handshakeRejected(refusal.reason)
    if (req) this.#options.onRefused?.(req, refusal)
    this.#options.log.warn(
      {
        ...extra,
        remote: peerAddress(req?.socket ?? socket),
        ...(req && this.#options.requestFields?.(req)),
        ...(req && { path: loggablePath(req.url) }),
        status: refusal.status,
        reason: refusal.reason,
        detail: refusal.message,
      },
      message,
    )
  }
}

/**
 * A request target as log lines show it: an access_token in the query (auth.tokenFrom query)
 * is a credential: its value is replaced by "[redacted]".
 */
export function loggablePath(url: string | undefined): string | undefined {
  if (url === undefined || !url.includes('?')) return url
  return url.replace(/([?&]access_token=)[^&#]*/gi, '$1[redacted]')
}

/** `text` as a quoted-string's content: no quotes, backslashes or control characters. */
function quotable(text: string): string {
  // eslint-disable-next-line no-control-regex -- the control characters are what it replaces
  return text.replace(/["\\\u0000-\u001f\u007f]/g, ' ')
}

/** The response bytes for `refusal`, then the socket closed once they are written. */
function writeRefusal(socket: Duplex, refusal: Refusal): void {
  if (socket.destroyed) return
  const body = `${refusal.message}\n`
  const head = [
    `HTTP/1.1 ${refusal.status} ${STATUS_CODES[refusal.status] ?? 'Error'}`,
    'Connection: close',
    'Content-Type: text/plain; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    ...Object.entries(refusal.headers ?? {}).map(([name, value]) => `${name}: ${value}`),
  ]
  socket.once('finish', () => socket.destroy())
  // A client that resets before reading its answer must not become an uncaught error.
  socket.on('error', () => socket.destroy())
  socket.end(`${head.join('\r\n')}\r\n\r\n${body}`)
}

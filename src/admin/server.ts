// The admin listener: a second HTTP server, never the public port, for operators and their tools.
//   GET    /healthz            200 while the event loop runs (liveness)          always open
//   GET    /readyz             200 or 503 with the reason (readiness)            always open
//   GET    /metrics            Prometheus text format                            token
//   GET    /connections        JSON array, one object per open connection        token
//   GET    /connections/{id}   one connection, or 404                            token
//   DELETE /connections/{id}   close it with 1008 and a reason, logged           token
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Connection } from '../bridge/connection.js'
import { CloseCode, CloseReason } from '../bridge/close-codes.js'
import { listen } from '../listen.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { bearerMatches } from './auth.js'
import { describeConnection } from './connections.js'
import type { Readiness } from './readiness.js'

export interface AdminOptions {
  host: string
  port: number
  /** Empty: no token is asked for. */
  token: string
  log: Logger
  metrics: Metrics
  readiness: Readiness
  connections: {
    get: (id: string) => Connection | undefined
    values: () => Iterable<Connection>
  }
}

/** Paths a load balancer or kubelet probes; they never need the token. */
const OPEN_PATHS = new Set(['/healthz', '/readyz'])
const CONNECTION_PATH = /^\/connections\/([^/]+)$/
// A close reason must fit a control frame: 125 payload bytes minus the 2-byte code
// (RFC 6455 sections 5.5 and 5.5.1).
const MAX_CLOSE_REASON_BYTES = 123

export class AdminServer {
  readonly #options: AdminOptions
  readonly #server: http.Server

  constructor(options: AdminOptions) {
    this.#options = options
    this.#server = http.createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        options.log.error({ err, path: req.url }, 'admin request failed')
        if (!res.headersSent) send(res, 500, 'internal error\n')
        else res.destroy()
      })
    })
  }

  async listen(): Promise<AddressInfo> {
    const { host, port, token, log } = this.#options
    const address = await listen(this.#server, 'admin', host, port)
    log.info({ admin: `${address.address}:${address.port}` }, 'admin listening')
    if (token === '' && !isLoopback(address.address)) {
      log.warn(
        { admin: address.address },
        'admin listener is reachable beyond loopback without admin.token: anyone who can reach it can list and close connections',
      )
    }
    return address
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve())
      this.#server.closeAllConnections()
    })
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin')
    const path = url.pathname
    const method = req.method ?? 'GET'

    if (!OPEN_PATHS.has(path) && this.#options.token !== '') {
      if (!bearerMatches(req.headers.authorization, this.#options.token)) {
        send(res, 401, 'missing or wrong bearer token\n', {
          'WWW-Authenticate': 'Bearer realm="drawbridge-admin"',
        })
        return
      }
    }

    if (path === '/healthz') {
      if (allow(req, res, 'GET')) send(res, 200, 'ok\n')
      return
    }
    if (path === '/readyz') {
      if (!allow(req, res, 'GET')) return
      const status = this.#options.readiness.status()
      send(
        res,
        status.ready ? 200 : 503,
        `${status.ready ? 'ready' : 'not ready'}: ${status.reason}\n`,
      )
      return
    }
    if (path === '/metrics') {
      if (!allow(req, res, 'GET')) return
      const body = await this.#options.metrics.render()
      send(res, 200, body, { 'Content-Type': this.#options.metrics.contentType })
      return
    }
    if (path === '/connections') {
      if (!allow(req, res, 'GET')) return
      const now = Date.now()
      const all = [...this.#options.connections.values()].map((c) => describeConnection(c, now))
      sendJson(res, 200, all)
      return
    }
    const match = CONNECTION_PATH.exec(path)
    if (match) {
      const id = safeDecode(match[1] ?? '')
      const connection = this.#options.connections.get(id)
      if (method === 'DELETE') {
        if (connection === undefined) sendJson(res, 404, { error: `no open connection ${id}` })
        else this.#closeConnection(req, res, connection, url.searchParams.get('reason'))
        return
      }
      if (!allow(req, res, 'GET, DELETE')) return
      if (connection === undefined) sendJson(res, 404, { error: `no open connection ${id}` })
      else sendJson(res, 200, describeConnection(connection))
      return
    }
    send(res, 404, 'not found; try /metrics, /healthz, /readyz or /connections\n')
  }

  #closeConnection(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    connection: Connection,
    requested: string | null,
  ): void {
    const reason = truncateUtf8(
      requested === null || requested.trim() === ''
        ? CloseReason.closedByOperator
        : `${CloseReason.closedByOperator}: ${requested.trim()}`,
      MAX_CLOSE_REASON_BYTES,
    )
    this.#options.log.warn(
      {
        conn: connection.id,
        remote: connection.remoteAddress,
        by: req.socket.remoteAddress ?? 'unknown',
        code: CloseCode.POLICY_VIOLATION,
        reason,
      },
      'connection closed by operator',
    )
    connection.close(CloseCode.POLICY_VIOLATION, reason, 'gateway')
    // 202: the close handshake is under way; the connection leaves /connections when it ends.
    sendJson(res, 202, { id: connection.id, code: CloseCode.POLICY_VIOLATION, reason })
  }
}

function allow(req: http.IncomingMessage, res: http.ServerResponse, methods: string): boolean {
  const method = req.method ?? 'GET'
  if (methods.split(', ').includes(method)) return true
  send(res, 405, `method not allowed; use ${methods}\n`, { Allow: methods })
  return false
}

function send(
  res: http.ServerResponse,
  status: number,
  body: string,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    // Probes and scrapes must always see the current state, never a cached one.
    'Cache-Control': 'no-store',
    ...headers,
  })
  res.end(body)
}

function sendJson(res: http.ServerResponse, status: number, value: unknown): void {
  send(res, status, `${JSON.stringify(value, null, 2)}\n`, {
    'Content-Type': 'application/json; charset=utf-8',
  })
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text)
  } catch {
    return text // a malformed escape cannot name a connection; the lookup then gives 404
  }
}

function truncateUtf8(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text) <= maxBytes) return text
  let out = ''
  for (const char of text) {
    if (Buffer.byteLength(out + char) > maxBytes) break
    out += char
  }
  return out
}

function isLoopback(address: string): boolean {
  return address === '::1' || address.startsWith('127.') || address === '::ffff:127.0.0.1'
}

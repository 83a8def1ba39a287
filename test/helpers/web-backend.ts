// A small web app for the http.routes tests: a real node HTTP server on loopback with a ws
// WebSocketServer next to it, telling each request what it saw (method, path, headers, body),
// with paths that misbehave on purpose, and a count of its open sockets so a test can show that
// nothing the gateway opened to it is left.
import http from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { WebSocketServer } from 'ws'
import type { Teardown } from './broker.js'
import type { TestGateway } from './gateway.js'
import { eventually } from './scrape.js'
import type { StaticEntry } from './static-server.js'
import { readFileSync } from 'node:fs'

export interface Seen {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  body: string
}

export interface WebBackend {
  port: number
  /** http://127.0.0.1:PORT */
  origin: string
  /** Every request (plain and upgrade) as the backend received it, in order. */
  seen: Seen[]
  /** Sockets open on the backend right now. */
  readonly openSockets: number
  /** Resolves once no socket is open on the backend (rejects after `timeoutMs`). */
  whenIdle: (timeoutMs?: number) => Promise<void>
}

/**
 * Paths: anything under /silent/ never answers (a backend that hangs); an upgrade to a path
 * with "refuse" in it is answered 403 by the backend itself; other upgrades echo messages back.
 * `files` serves fixed paths first (the browser test's page and bundles).
 */
export async function startWebBackend(
  t: Teardown,
  files: Record<string, StaticEntry> = {},
): Promise<WebBackend> {
  const bodies = new Map<string, { type: string; body: Buffer }>()
  for (const [path, entry] of Object.entries(files)) {
    const body = entry.file !== undefined ? readFileSync(entry.file) : Buffer.from(entry.body ?? '')
    bodies.set(path, { type: entry.type, body })
  }
  const seen: Seen[] = []
  const sockets = new Set<Socket>()
  /** The last request each open socket carried, for the message of a leak. */
  const lastUrl = new WeakMap<Socket, string>()
  const idleWaiters = new Set<() => void>()
  const server = http.createServer((req, res) => {
    lastUrl.set(req.socket, req.url ?? '')
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const entry = { method: req.method ?? '', url: req.url ?? '', headers: req.headers }
      seen.push({ ...entry, body: Buffer.concat(chunks).toString() })
      if ((req.url ?? '').includes('/silent/')) return
      const file = bodies.get(new URL(req.url ?? '/', 'http://x').pathname)
      if (file !== undefined) {
        res.writeHead(200, { 'Content-Type': file.type, 'Content-Length': file.body.length })
        res.end(file.body)
        return
      }
      const body = JSON.stringify({ ...entry, body: Buffer.concat(chunks).toString() })
      res.writeHead(200, {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(body),
        // Hop-by-hop on the way back: the gateway must not pass these on to the client.
        Connection: 'X-Backend-Hop',
        'X-Backend-Hop': 'for the gateway only',
        'Keep-Alive': 'timeout=99',
        'X-Backend-End': 'for the client',
      })
      res.end(body)
    })
  })
  server.on('connection', (socket: Socket) => {
    sockets.add(socket)
    socket.once('close', () => {
      sockets.delete(socket)
      if (sockets.size === 0) for (const wake of idleWaiters) wake()
    })
  })
  const wss = new WebSocketServer({ noServer: true })
  server.on('upgrade', (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
    seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: '' })
    lastUrl.set(socket, `upgrade ${req.url ?? ''}`)
    // Node leaves an upgraded socket half-open when the peer ends it; a hanging app still lets
    // the connection go once the gateway has given up on it.
    socket.on('error', () => socket.destroy())
    socket.once('end', () => socket.destroy())
    if ((req.url ?? '').includes('/silent/')) return
    if ((req.url ?? '').includes('refuse')) {
      socket.end(
        'HTTP/1.1 403 Forbidden\r\nContent-Length: 8\r\nConnection: close\r\n\r\nrefused\n',
      )
      return
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('message', (data, binary) => ws.send(data, { binary }))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        wss.close()
        server.close(() => resolve())
      }),
  )
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    seen,
    get openSockets() {
      return sockets.size
    },
    whenIdle: (timeoutMs = 3_000) =>
      new Promise<void>((resolve, reject) => {
        if (sockets.size === 0) {
          resolve()
          return
        }
        const timer = setTimeout(() => {
          idleWaiters.delete(wake)
          const urls = [...sockets].map((socket) => lastUrl.get(socket) ?? 'no request').join(', ')
          reject(new Error(`backend socket(s) still open after ${timeoutMs} ms: ${urls}`))
        }, timeoutMs)
        const wake = (): void => {
          clearTimeout(timer)
          idleWaiters.delete(wake)
          resolve()
        }
        idleWaiters.add(wake)
      }),
  }
}

/**
 * The gateway side of the same check: throws unless every socket each of `gateways` opened to a
 * backend, and every routed tunnel, has closed within 3 s.
 */
export async function noRoutedSocketsLeft(gateways: readonly TestGateway[]): Promise<void> {
  for (const gw of gateways) {
    const closed = await eventually(async () => {
      const open = gw.gateway.routedSocketsOpen
      return open.backend === 0 && open.tunnels === 0
    }, 3_000)
    if (!closed) {
      throw new Error(`gateway side: ${JSON.stringify(gw.gateway.routedSocketsOpen)} still open`)
    }
  }
}

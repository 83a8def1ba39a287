// The diagnostics page (http.diagnostics): GET / on the public listener serves a self-contained
// page (static/diagnostics/) that checks, from the user's own browser, each hop an MQTT
// connection needs: TLS, the WebSocket upgrade, the subprotocol, CONNECT/CONNACK, a round trip
// and an idle spell, and gives a plain-text report for a support ticket (FIELD-NOTES 39-41:
// browsers hide why a WebSocket failed; 57: proxies that probe for a real page on 443).
//
// A page cannot see the certificate its browser was served, nor the HTTP status of a refused
// WebSocket. So the gateway tells it what it knows, in GET /diagnostics.json: the certificate it
// served on that very connection, the TLS version and cipher, the peer and the forwarding
// headers it received, and, for an upgrade that carried ?diag=TOKEN and was refused, the status
// and reason it answered with.
import { readFileSync } from 'node:fs'
import type http from 'node:http'
import { TLSSocket } from 'node:tls'
import type { Config } from '../config/schema.js'
import { packageVersion } from '../version.js'
import { requestPath } from './handshake.js'
import type { Refusal } from './refusals.js'
import type { TlsManager } from './tls.js'

/** Headers that only a proxy adds. Inside TLS, only one that decrypted the traffic can add them. */
export const FORWARDING_HEADERS = [
  'via',
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-real-ip',
  'x-bluecoat-via',
] as const

/** How many refused upgrades (with a ?diag= token) are remembered, and for how long. */
const REFUSALS_KEPT = 256
const REFUSAL_TTL_MS = 60_000
const TOKEN_PATTERN = /^[A-Za-z0-9_-]{8,64}$/

const STATIC_DIR = new URL('../../static/diagnostics/', import.meta.url)

interface Asset {
  type: string
  body: Buffer
}

export interface DiagnosticsOptions {
  /** The WebSocket settings the report shows. */
  ws: Config['ws']
  tls: TlsManager | undefined
  /** The client's address as the gateway reports it everywhere else (logs, /connections). */
  clientAddress: (req: http.IncomingMessage) => string
  /** The TCP peer (the last hop: the client, or the proxy in front of it). */
  peerAddress: (req: http.IncomingMessage) => string
}

export interface RecordedRefusal {
  status: number
  reason: string
  message: string
  at: string
}

export interface DiagnosticsReport {
  gateway: { name: 'drawbridge'; version: string }
  generatedAt: string
  request: {
    clientAddress: string
    peerAddress: string
    host: string | null
    userAgent: string | null
    httpVersion: string
    /** The forwarding headers received, by lower-case name; empty when none. */
    forwardingHeaders: Record<string, string>
  }
  /** null when the gateway did not terminate TLS itself (tls.enabled=false). */
  tls: {
    protocol: string | null
    cipher: string
    alpn: string | false | null
    servername: string | null
    certificate: {
      subject: string
      issuer: string
      serialNumber: string
      fingerprint256: string
      validFrom: string
      validTo: string
    } | null
  } | null
  websocket: {
    path: string
    subprotocols: string[]
    requireSubprotocol: boolean
    pingIntervalMs: number
    pongTimeoutMs: number
  }
  /** Only with ?refusal=TOKEN: what the gateway answered the upgrade that carried that token. */
  refusal?: RecordedRefusal | null
}

export class Diagnostics {
  readonly #options: DiagnosticsOptions
  readonly #assets: Map<string, Asset>
  readonly #version = packageVersion()
  readonly #refusals = new Map<string, RecordedRefusal & { expires: number }>()

  /** Reads the page once; a missing file fails start-up rather than the first visitor. */
  constructor(options: DiagnosticsOptions) {
    this.#options = options
    const read = (name: string): Buffer => readFileSync(new URL(name, STATIC_DIR))
    this.#assets = new Map([
      ['/', { type: 'text/html; charset=utf-8', body: read('index.html') }],
      ['/diagnostics.js', { type: 'text/javascript; charset=utf-8', body: read('diagnostics.js') }],
    ])
  }

  /**
   * Answers `req` when it is one of the diagnostics routes and returns true; false leaves it to
   * the caller. With ws.path "/", GET / is the page unless it asks for a WebSocket (carries
   * Sec-WebSocket-Key), so the header-stripping proxy diagnosis still applies there.
   */
  handle(req: http.IncomingMessage, res: http.ServerResponse): boolean {
    const path = requestPath(req.url)
    const isJson = path === '/diagnostics.json'
    if (!isJson && !this.#assets.has(path)) return false
    if (path === '/' && req.headers['sec-websocket-key'] !== undefined) return false
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      this.#send(req, res, 405, 'text/plain; charset=utf-8', 'use GET\n', { Allow: 'GET, HEAD' })
      return true
    }
    if (isJson) {
      const body = `${JSON.stringify(this.report(req), null, 2)}\n`
      this.#send(req, res, 200, 'application/json; charset=utf-8', body)
      return true
    }
    const asset = this.#assets.get(path) as Asset
    this.#send(req, res, 200, asset.type, asset.body)
    return true
  }

  /** What GET /diagnostics.json answers for `req`. */
  report(req: http.IncomingMessage): DiagnosticsReport {
    const ws = this.#options.ws
    const forwardingHeaders: Record<string, string> = {}
    for (const name of FORWARDING_HEADERS) {
      const value = req.headers[name]
      if (value !== undefined)
        forwardingHeaders[name] = Array.isArray(value) ? value.join(', ') : value
    }
    const report: DiagnosticsReport = {
      gateway: { name: 'drawbridge', version: this.#version },
      generatedAt: new Date().toISOString(),
      request: {
        clientAddress: this.#options.clientAddress(req),
        peerAddress: this.#options.peerAddress(req),
        host: req.headers.host ?? null,
        userAgent: req.headers['user-agent'] ?? null,
        httpVersion: req.httpVersion,
        forwardingHeaders,
      },
      tls: this.#tlsOf(req),
      websocket: {
        path: ws.path,
        subprotocols: [...ws.subprotocols],
        requireSubprotocol: ws.requireSubprotocol,
        pingIntervalMs: ws.pingInterval,
        pongTimeoutMs: ws.pongTimeout,
      },
    }
    const token = new URL(req.url ?? '/', 'http://x').searchParams.get('refusal')
    if (token !== null) report.refusal = this.#takeRefusal(token)
    return report
  }

  /**
   * Remembers a refused upgrade whose URL carried ?diag=TOKEN, for the page to fetch: a browser
   * shows a refused WebSocket only as close code 1006, never the status or body.
   */
  recordRefusal(req: http.IncomingMessage, refusal: Refusal): void {
    const token = diagToken(req.url)
    if (token === undefined) return
    const now = Date.now()
    for (const [key, entry] of this.#refusals) {
      if (entry.expires > now && this.#refusals.size < REFUSALS_KEPT) break
      this.#refusals.delete(key)
    }
    this.#refusals.set(token, {
      status: refusal.status,
      reason: refusal.reason,
      message: refusal.message,
      at: new Date(now).toISOString(),
      expires: now + REFUSAL_TTL_MS,
    })
  }

  #takeRefusal(token: string): RecordedRefusal | null {
    const entry = this.#refusals.get(token)
    if (entry === undefined || entry.expires < Date.now()) return null
    const { status, reason, message, at } = entry
    return { status, reason, message, at }
  }

  #tlsOf(req: http.IncomingMessage): DiagnosticsReport['tls'] {
    const socket = req.socket
    if (this.#options.tls === undefined || !(socket instanceof TLSSocket)) return null
    // The certificate served on this very connection (a reload since then does not change it).
    const local = socket.getX509Certificate()
    const served = this.#options.tls.served
    const oneLine = (name: string): string => name.replace(/\n/g, ', ')
    return {
      protocol: socket.getProtocol(),
      cipher: socket.getCipher().name,
      alpn: socket.alpnProtocol ?? null,
      servername: typeof socket.servername === 'string' ? socket.servername : null,
      certificate: local
        ? {
            subject: oneLine(local.subject),
            issuer: oneLine(local.issuer),
            serialNumber: local.serialNumber,
            fingerprint256: local.fingerprint256,
            validFrom: new Date(local.validFrom).toISOString(),
            validTo: new Date(local.validTo).toISOString(),
          }
        : {
            subject: served.subject,
            issuer: served.issuer,
            serialNumber: served.serial,
            fingerprint256: served.fingerprint256,
            validFrom: '',
            validTo: served.validTo,
          },
    }
  }

  #send(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    status: number,
    type: string,
    body: string | Buffer,
    headers: Record<string, string> = {},
  ): void {
    res.writeHead(status, {
      'Content-Type': type,
      'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'no-referrer',
      // Everything the page needs comes from this origin; it may only talk to this gateway.
      'Content-Security-Policy':
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
      ...headers,
    })
    res.end(req.method === 'HEAD' ? undefined : body)
  }
}

function diagToken(url: string | undefined): string | undefined {
  const query = (url ?? '').indexOf('?')
  if (query === -1) return undefined
  const token = new URLSearchParams(url?.slice(query + 1)).get('diag')
  return token !== null && TOKEN_PATTERN.test(token) ? token : undefined
}

// Decides a WebSocket upgrade request before anything is opened upstream. Pure: the same
// request and policy always give the same answer, so the table in test/handshake.test.ts can
// cover every branch without sockets. Checks run in a fixed order, each with its own status,
// following ws's lib/websocket-server.js handleUpgrade() (RFC 6455 section 4.2.1).
import type { IncomingMessage } from 'node:http'
import { Refusals, type Refusal } from './refusals.js'
import { parseOrigin, type OriginRule } from '../config/origin.js'

export interface HandshakePolicy {
  path: string
  /** Accepted subprotocols. */
  subprotocols: ReadonlySet<string>
  requireSubprotocol: boolean
  /** ws.allowedOrigins as loadConfig compiles them; empty allows any origin. */
  allowedOrigins: readonly OriginRule[]
  /** Refuse upgrades without an Origin header. */
  requireOrigin: boolean
}

export type HandshakeDecision =
  { ok: true; protocol: string | false } | { ok: false; refusal: Refusal }

// Sec-WebSocket-Key is 16 random bytes in base64 (RFC 6455 section 4.1, item 7).
const KEY_PATTERN = /^[+/0-9A-Za-z]{22}==$/
// RFC 3986 3.2.2-3.2.3: an IP literal in brackets, or a reg-name (an IPv4 address is one too),
// then an optional port.
const HOST_PATTERN = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::\d*)?$/
// RFC 7230 token characters: what a subprotocol name may be made of.
const TOKEN_PATTERN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

export function requestPath(url: string | undefined): string {
  const raw = url ?? '/'
  const end = raw.search(/[?#]/)
  const path = end === -1 ? raw : raw.slice(0, end)
  // Absolute-form request targets ("GET http://host/mqtt") come from some proxies.
  if (/^https?:\/\//i.test(path)) {
    try {
      return new URL(path).pathname
    } catch {
      return path
    }
  }
  return path
}

export function validateUpgrade(req: IncomingMessage, policy: HandshakePolicy): HandshakeDecision {
  if (requestPath(req.url) !== policy.path) return refuse(Refusals.wrongPath(policy.path))
  if (req.method !== 'GET') return refuse(Refusals.method())
  // RFC 6455 4.1: the opening handshake is an HTTP/1.1 (or later) request, with a Host header
  // (RFC 9112 3.2: a request without one is answered 400).
  if (req.httpVersionMajor < 1 || (req.httpVersionMajor === 1 && req.httpVersionMinor < 1)) {
    return refuse(Refusals.httpVersion(req.httpVersion))
  }
  if (req.headers.host === undefined || req.headers.host.trim() === '') {
    return refuse(Refusals.noHost())
  }
  // Node keeps the first of several Host lines; RFC 9112 3.2 answers such a request 400.
  if (countHeader(req.rawHeaders, 'host') > 1 || !HOST_PATTERN.test(req.headers.host.trim())) {
    return refuse(Refusals.badHost())
  }
  // Bytes after the headers of an upgrade are read as WebSocket frames: a body would be
  // smuggled into the connection (RFC 9112 6.3 makes them the request's content).
  const length = req.headers['content-length']
  if (
    (length !== undefined && length.trim() !== '0') ||
    req.headers['transfer-encoding'] !== undefined
  ) {
    return refuse(Refusals.upgradeBody())
  }
  // A list may offer several protocols (RFC 9110 7.8); it must include websocket (RFC 6455 4.1).
  const upgrade = (req.headers.upgrade ?? '').split(',').map((name) => name.trim().toLowerCase())
  if (!upgrade.includes('websocket')) return refuse(Refusals.badUpgradeHeader())
  const key = req.headers['sec-websocket-key']
  if (key === undefined || !KEY_PATTERN.test(key)) return refuse(Refusals.badKey())
  const version = req.headers['sec-websocket-version']
  if (version !== '13' && version !== '8') return refuse(Refusals.badVersion())
  // After the WebSocket checks, so a plain malformed request is still reported as malformed.
  const wrongOrigin = originRefusal(req, policy)
  if (wrongOrigin !== undefined) return refuse(wrongOrigin)

  const offered = parseSubprotocols(req.headers['sec-websocket-protocol'])
  if (offered === null) return refuse(Refusals.badSubprotocolHeader())
  const protocol = pickSubprotocol(offered, policy.subprotocols)
  if (protocol === false && policy.requireSubprotocol) {
    return refuse(Refusals.subprotocol(offered, policy.subprotocols))
  }
  return { ok: true, protocol }
}

/**
 * ws.allowedOrigins and ws.requireOrigin for one upgrade request: the MQTT endpoint's, and (the
 * same rules) a routed backend's (src/edge/admission.ts, allowedOrigin()).
 */
export function originRefusal(
  req: IncomingMessage,
  policy: Pick<HandshakePolicy, 'allowedOrigins' | 'requireOrigin'>,
): Refusal | undefined {
  const origin = req.headers.origin
  if (origin === undefined) return policy.requireOrigin ? Refusals.originRequired() : undefined
  if (sameOrigin(origin, req.headers.host) || originAllowed(origin, policy.allowedOrigins)) {
    return undefined
  }
  return Refusals.originRefused(origin)
}

/**
 * Whether a browser's Origin header matches one of the rules: the same scheme, host and port
 * (browsers omit the scheme's default port, and so do the patterns), where a pattern host
 * `*.example.com` stands for any subdomain of example.com but not example.com itself. Matching
 * is on the parsed parts, never a substring, so `https://example.com.evil.net` matches nothing.
 */
export function originAllowed(origin: string, rules: readonly OriginRule[]): boolean {
  if (rules.length === 0) return true
  const asked = parseOrigin(origin)
  if (asked === undefined) return false
  if (asked === 'null') return rules.includes('null')
  return rules.some(
    (rule) =>
      rule !== 'null' &&
      rule.scheme === asked.scheme &&
      rule.port === asked.port &&
      (rule.anySubdomain ? asked.host.endsWith(rule.host) : rule.host === asked.host),
  )
}

/**
 * A page the gateway served itself (the diagnostics page): its Origin names the host the browser
 * sent the request to. A browser sets both headers itself, so another site's page cannot match.
 */
export function sameOrigin(origin: string, host: string | undefined): boolean {
  if (host === undefined) return false
  const parts = parseOrigin(origin)
  if (parts === undefined || parts === 'null') return false
  const authority = parts.port === undefined ? parts.host : `${parts.host}:${parts.port}`
  return authority === host.trim().toLowerCase()
}

/**
 * Splits a Sec-WebSocket-Protocol value ("mqtt, mqttv3.1"; Node joins repeated headers with
 * ", "). Returns null when an entry is not a token or appears twice, as ws does.
 */
export function parseSubprotocols(header: string | undefined): string[] | null {
  if (header === undefined || header.trim() === '') return []
  // Empty list elements are ignored, as RFC 9110 5.6.1.2 asks of a recipient.
  const names = header
    .split(',')
    .map((name) => name.trim())
    .filter((name) => name !== '')
  const seen = new Set<string>()
  for (const name of names) {
    if (!TOKEN_PATTERN.test(name) || seen.has(name)) return null
    seen.add(name)
  }
  return names
}

/** The first offered protocol that is accepted, in the client's order of preference. */
export function pickSubprotocol(
  offered: Iterable<string>,
  accepted: ReadonlySet<string>,
): string | false {
  for (const name of offered) if (accepted.has(name)) return name
  return false
}

/** How many header lines named `name` (lower case) the request had. */
function countHeader(rawHeaders: readonly string[], name: string): number {
  let count = 0
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]?.toLowerCase() === name) count++
  }
  return count
}

function refuse(refusal: Refusal): HandshakeDecision {
  return { ok: false, refusal }
}

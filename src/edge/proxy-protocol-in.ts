// Reading the PROXY protocol header (v1 text, v2 binary) a load balancer puts before the first
// byte of a connection (listen.proxyProtocol). Our own parser, not an npm one: the header is two
// small fixed formats (haproxy's proxy-protocol.txt), the maintained packages parse whole buffers
// without saying when they need more bytes, and here the decision has to be made on the bytes
// seen so far without ever holding more than the header's maximum.
import { isIP } from 'node:net'

/** listen.proxyProtocol. */
export type ProxyProtocolIn = 'off' | 'v1' | 'v2' | 'any'

/** Why a connection was dropped before it was served; a closed set so the label stays bounded. */
export const PROXY_REFUSAL_REASONS = [
  'unlisted_peer',
  'missing',
  'malformed',
  'wrong_version',
  'timeout',
] as const
export type ProxyRefusalReason = (typeof PROXY_REFUSAL_REASONS)[number]

/** What the header said: LOCAL (the balancer's own connection, a health check) or a client. */
export type ProxyHeader =
  | { command: 'local' }
  | { command: 'proxy'; address: string; port: number }
  /** PROXY with an address family we do not carry (UNKNOWN, AF_UNIX): served as the peer. */
  | { command: 'unknown' }

export type ParseResult =
  | { state: 'incomplete' }
  | { state: 'refused'; reason: ProxyRefusalReason }
  | { state: 'done'; header: ProxyHeader; length: number }

/** v1 is at most 107 bytes, CRLF included. */
export const V1_MAX = 107
const V1_PREFIX = Buffer.from('PROXY ', 'latin1')
const V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
])

/** Decides on the first bytes of a connection: `buf` holds everything read so far. */
export function parseProxyHeader(buf: Buffer, mode: Exclude<ProxyProtocolIn, 'off'>): ParseResult {
  if (startsLike(buf, V1_PREFIX)) {
    if (mode === 'v2') return buf.length >= V1_PREFIX.length ? wrong() : incomplete()
    if (buf.length < V1_PREFIX.length) return incomplete()
    return parseV1(buf)
  }
  if (startsLike(buf, V2_SIGNATURE)) {
    if (buf.length < V2_SIGNATURE.length) return incomplete()
    if (mode === 'v1') return wrong()
    return parseV2(buf)
  }
  return { state: 'refused', reason: 'missing' }
}

function incomplete(): ParseResult {
  return { state: 'incomplete' }
}

function wrong(): ParseResult {
  return { state: 'refused', reason: 'wrong_version' }
}

function malformed(): ParseResult {
  return { state: 'refused', reason: 'malformed' }
}

/** True when the bytes so far agree with `prefix` (as far as either goes). */
function startsLike(buf: Buffer, prefix: Buffer): boolean {
  const n = Math.min(buf.length, prefix.length)
  return n > 0 && buf.subarray(0, n).equals(prefix.subarray(0, n))
}

function parseV1(buf: Buffer): ParseResult {
  const end = buf.indexOf('\r\n', 0, 'latin1')
  if (end === -1) return buf.length >= V1_MAX ? malformed() : incomplete()
  if (end + 2 > V1_MAX) return malformed()
  const parts = buf.subarray(0, end).toString('latin1').split(' ')
  const length = end + 2
  if (parts[1] === 'UNKNOWN') return { state: 'done', header: { command: 'unknown' }, length }
  if (parts.length !== 6) return malformed()
  const [, family, source, , sourcePort] = parts
  const wanted = family === 'TCP4' ? 4 : family === 'TCP6' ? 6 : 0
  if (wanted === 0 || source === undefined || isIP(source) !== wanted) return malformed()
  if (isIP(parts[3] ?? '') !== wanted) return malformed()
  const port = v1Port(sourcePort)
  if (port === undefined || v1Port(parts[5]) === undefined) return malformed()
  return { state: 'done', header: { command: 'proxy', address: source, port }, length }
}

function v1Port(text: string | undefined): number | undefined {
  if (text === undefined || !/^(0|[1-9]\d{0,4})$/.test(text)) return undefined
  const port = Number(text)
  return port <= 65535 ? port : undefined
}

function parseV2(buf: Buffer): ParseResult {
  if (buf.length < 16) return incomplete()
  const versionCommand = buf[12] ?? 0
  if (versionCommand >> 4 !== 2) return malformed()
  const command = versionCommand & 0x0f
  const length = 16 + buf.readUInt16BE(14)
  if (buf.length < length) return incomplete()
  if (command === 0) return { state: 'done', header: { command: 'local' }, length }
  if (command !== 1) return malformed()
  const family = (buf[13] ?? 0) >> 4
  const body = buf.subarray(16, length)
  if (family === 1) {
    if (body.length < 12) return malformed()
    const address = [...body.subarray(0, 4)].join('.')
    return {
      state: 'done',
      header: { command: 'proxy', address, port: body.readUInt16BE(8) },
      length,
    }
  }
  if (family === 2) {
    if (body.length < 36) return malformed()
    const groups: string[] = []
    for (let i = 0; i < 16; i += 2) groups.push(body.readUInt16BE(i).toString(16))
    const address = compactIPv6(groups)
    return {
      state: 'done',
      header: { command: 'proxy', address, port: body.readUInt16BE(32) },
      length,
    }
  }
  // AF_UNSPEC or AF_UNIX: nothing we can use as an IP address.
  return { state: 'done', header: { command: 'unknown' }, length }
}

/** `2001:db8:0:0:0:0:0:7` as `2001:db8::7` (the longest run of zero groups compressed). */
function compactIPv6(groups: string[]): string {
  let bestStart = -1
  let bestLength = 0
  for (let i = 0; i < groups.length;) {
    if (groups[i] !== '0') {
      i++
      continue
    }
    let j = i
    while (j < groups.length && groups[j] === '0') j++
    if (j - i > bestLength && j - i > 1) {
      bestStart = i
      bestLength = j - i
    }
    i = j
  }
  if (bestStart === -1) return groups.join(':')
  const head = groups.slice(0, bestStart).join(':')
  const tail = groups.slice(bestStart + bestLength).join(':')
  return `${head}::${tail}`
}

/** The most bytes to hold before a decision must have been made, for `mode`. */
export function headerMaximum(mode: Exclude<ProxyProtocolIn, 'off'>): number {
  return mode === 'v1' ? V1_MAX : 16 + 0xffff
}

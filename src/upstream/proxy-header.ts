// The PROXY protocol header a broker connection starts with (upstream.proxyProtocol): who the
// client is, in the form brokers behind an L4 proxy read (Mosquitto 2.1, EMQX, VerneMQ, HiveMQ,
// RabbitMQ). Encoded from a plain description, as the spec lays it out:
// https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
//
// v1 is one text line: "PROXY TCP4 <src> <dst> <sport> <dport>\r\n" (TCP6 for IPv6), or
// "PROXY UNKNOWN\r\n" when the addresses are not of one family (or not addresses at all).
// v2 is binary: a 16-byte preamble, the addresses, then TLVs: PP2_TYPE_UNIQUE_ID (the
// connection id, so a broker log line can be matched to ours) and, for a client that came over
// TLS, PP2_TYPE_SSL with its client bits, its verify result and the sub-TLVs VERSION, CN (inside
// the SSL TLV, never top-level: EMQX reads only that one, emqx#12840) and CIPHER.
//
// A LOCAL header (v2 command LOCAL; v1 "PROXY UNKNOWN", see V1_UNKNOWN) says "this connection is the proxy's
// own" (a health check): a strict broker drops a connection that starts without any header.
import { isIPv4, isIPv6 } from 'node:net'

export type ProxyProtocolVersion = 'v1' | 'v2'

/** upstream.proxyProtocol */
export type ProxyProtocol = 'off' | ProxyProtocolVersion

export interface ProxyEndpoint {
  /** An IPv4 or IPv6 address (an IPv4-mapped IPv6 address counts as IPv4). */
  address: string
  port: number
}

/** The client's TLS session, for the v2 PP2_TYPE_SSL TLV. */
export interface ProxyTls {
  /** Negotiated version, e.g. TLSv1.3 (PP2_SUBTYPE_SSL_VERSION). */
  version: string
  /** OpenSSL's cipher name (PP2_SUBTYPE_SSL_CIPHER). */
  cipher: string
  /**
   * The subject CN of the client certificate that was presented and verified; undefined when
   * none was (PP2_CLIENT_CERT_* are then clear and verify is non-zero).
   */
  verifiedCn: string | undefined
}

/** Who the broker connection is for. */
export interface ProxyClient {
  source: ProxyEndpoint
  /** The gateway address the client connected to. */
  destination: ProxyEndpoint
  /** v2 only: undefined for a plain (ws://) client. */
  tls?: ProxyTls | undefined
  /** v2 only: PP2_TYPE_UNIQUE_ID (at most 128 bytes by the spec; longer is cut). */
  uniqueId?: string | undefined
}

/**
 * v1's UNKNOWN line, with a space before the CRLF. The spec's receiver ignores whatever follows
 * UNKNOWN up to the CRLF, so both forms mean the same; Mosquitto 2.1.2 compares the first 14
 * bytes with "PROXY UNKNOWN " and calls the bare "PROXY UNKNOWN\r\n" a corrupt header.
 */
export const V1_UNKNOWN = 'PROXY UNKNOWN \r\n'

/** Mosquitto refuses a longer header (PROXY_PACKET_LIMIT); every header here stays below it. */
export const PROXY_HEADER_LIMIT = 500

export const V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
])

export const PP2 = {
  CMD_LOCAL: 0x0,
  CMD_PROXY: 0x1,
  AF_UNSPEC: 0x00,
  TCP4: 0x11,
  TCP6: 0x21,
  TYPE_UNIQUE_ID: 0x05,
  TYPE_SSL: 0x20,
  SUBTYPE_SSL_VERSION: 0x21,
  SUBTYPE_SSL_CN: 0x22,
  SUBTYPE_SSL_CIPHER: 0x23,
  CLIENT_SSL: 0x01,
  CLIENT_CERT_CONN: 0x02,
  CLIENT_CERT_SESS: 0x04,
} as const

const UNIQUE_ID_MAX = 128

/** What encoding left out to stay under PROXY_HEADER_LIMIT (the caller logs it). */
export interface ProxyHeader {
  bytes: Buffer
  /** Sub-TLVs dropped for size, in the order dropped: 'cipher', then 'cn'. */
  omitted: ('cipher' | 'cn')[]
}

/** The header for a client's broker connection. */
export function encodeProxyHeader(version: ProxyProtocolVersion, client: ProxyClient): ProxyHeader {
  return version === 'v1'
    ? { bytes: Buffer.from(proxyLineV1(client), 'latin1'), omitted: [] }
    : encodeV2(client)
}

/** The header of a connection that is the gateway's own (the readiness check). */
export function encodeLocalHeader(version: ProxyProtocolVersion): Buffer {
  if (version === 'v1') return Buffer.from(V1_UNKNOWN, 'latin1')
  return Buffer.concat([V2_SIGNATURE, Buffer.from([0x20 | PP2.CMD_LOCAL, PP2.AF_UNSPEC, 0, 0])])
}

type Family = 4 | 6

/** `::ffff:10.0.0.1` is 10.0.0.1 here: that is how a dual-stack socket reports an IPv4 peer. */
function plain(raw: string): { address: string; family: Family } | undefined {
  // A zone (fe80::1%eth0) means nothing beyond this host.
  const address = raw.replace(/%.*$/, '')
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1]
  if (mapped !== undefined) return { address: mapped, family: 4 }
  if (isIPv4(address)) return { address, family: 4 }
  if (isIPv6(address)) return { address, family: 6 }
  return undefined
}

function validPort(port: number): boolean {
  return Number.isInteger(port) && port >= 0 && port <= 65535
}

function proxyLineV1({ source, destination }: ProxyClient): string {
  const src = plain(source.address)
  const dst = plain(destination.address)
  if (
    src === undefined ||
    dst === undefined ||
    src.family !== dst.family ||
    !validPort(source.port) ||
    !validPort(destination.port)
  ) {
    return V1_UNKNOWN
  }
  return `PROXY TCP${src.family} ${src.address} ${dst.address} ${source.port} ${destination.port}\r\n`
}

function ipv4Bytes(address: string): number[] {
  return address.split('.').map(Number)
}

/** The 16 bytes of an IPv6 address (or of an IPv4 one, mapped). */
function ipv6Bytes(address: string, family: Family): number[] {
  if (family === 4) return [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...ipv4Bytes(address)]
  let text = address
  // A trailing dotted quad (::ffff:1.2.3.4 aside, which plain() unmapped) becomes two groups.
  const quad = /(\d+\.\d+\.\d+\.\d+)$/.exec(text)?.[1]
  if (quad !== undefined) {
    const [a = 0, b = 0, c = 0, d = 0] = ipv4Bytes(quad)
    text =
      text.slice(0, -quad.length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head = '', tail] = text.split('::')
  const groups = (part: string): string[] => (part === '' ? [] : part.split(':'))
  const first = groups(head)
  const last = tail === undefined ? [] : groups(tail)
  const middle = new Array<string>(8 - first.length - last.length).fill('0')
  const bytes: number[] = []
  for (const group of [...first, ...middle, ...last]) {
    const value = parseInt(group, 16)
    bytes.push(value >> 8, value & 0xff)
  }
  return bytes
}

function tlv(type: number, value: Buffer): Buffer {
  const head = Buffer.from([type, value.length >> 8, value.length & 0xff])
  return Buffer.concat([head, value])
}

/** The address block and its family byte; AF_UNSPEC (no addresses) when they are not usable. */
function addressBlock({ source, destination }: ProxyClient): { family: number; block: Buffer } {
  const src = plain(source.address)
  const dst = plain(destination.address)
  if (
    src === undefined ||
    dst === undefined ||
    !validPort(source.port) ||
    !validPort(destination.port)
  ) {
    return { family: PP2.AF_UNSPEC, block: Buffer.alloc(0) }
  }
  const ports = [
    source.port >> 8,
    source.port & 0xff,
    destination.port >> 8,
    destination.port & 0xff,
  ]
  if (src.family === 4 && dst.family === 4) {
    const block = Buffer.from([...ipv4Bytes(src.address), ...ipv4Bytes(dst.address), ...ports])
    return { family: PP2.TCP4, block }
  }
  // Families differ: both as IPv6, the IPv4 one mapped (what HAProxy sends), so the client's
  // address still gets through.
  const block = Buffer.from([
    ...ipv6Bytes(src.address, src.family),
    ...ipv6Bytes(dst.address, dst.family),
    ...ports,
  ])
  return { family: PP2.TCP6, block }
}

function sslTlv(tls: ProxyTls, parts: { cn: boolean; cipher: boolean }): Buffer {
  const cn = tls.verifiedCn
  const verified = cn !== undefined
  const client = PP2.CLIENT_SSL | (verified ? PP2.CLIENT_CERT_CONN | PP2.CLIENT_CERT_SESS : 0)
  const head = Buffer.alloc(5)
  head.writeUInt8(client, 0)
  // The spec: zero when a certificate was presented and verified, non-zero otherwise.
  head.writeUInt32BE(verified ? 0 : 1, 1)
  const subs = [tlv(PP2.SUBTYPE_SSL_VERSION, Buffer.from(tls.version, 'utf8'))]
  if (cn !== undefined && cn !== '' && parts.cn)
    subs.push(tlv(PP2.SUBTYPE_SSL_CN, Buffer.from(cn, 'utf8')))
  if (parts.cipher) subs.push(tlv(PP2.SUBTYPE_SSL_CIPHER, Buffer.from(tls.cipher, 'utf8')))
  return tlv(PP2.TYPE_SSL, Buffer.concat([head, ...subs]))
}

function encodeV2(client: ProxyClient): ProxyHeader {
  const { family, block } = addressBlock(client)
  const fixed: Buffer[] = [block]
  if (client.uniqueId !== undefined && client.uniqueId !== '') {
    const id = Buffer.from(client.uniqueId, 'utf8').subarray(0, UNIQUE_ID_MAX)
    fixed.push(tlv(PP2.TYPE_UNIQUE_ID, id))
  }
  const omitted: ProxyHeader['omitted'] = []
  const build = (ssl: Buffer | undefined): Buffer => {
    const body = Buffer.concat(ssl === undefined ? fixed : [...fixed, ssl])
    const preamble = Buffer.from([
      0x20 | PP2.CMD_PROXY,
      family,
      body.length >> 8,
      body.length & 0xff,
    ])
    return Buffer.concat([V2_SIGNATURE, preamble, body])
  }
  const tls = client.tls
  if (tls === undefined) return { bytes: build(undefined), omitted }
  // Over the limit (a very long CN, or version and cipher strings): the cipher goes first (it
  // is only informative), then the CN. A CN is never cut short: a shortened name is someone
  // else's identity. Without it, a broker that takes the username from it has none (Mosquitto
  // with use_identity_as_username and require_certificate then refuses the client).
  const parts = { cn: true, cipher: true }
  let bytes = build(sslTlv(tls, parts))
  if (bytes.length >= PROXY_HEADER_LIMIT) {
    parts.cipher = false
    omitted.push('cipher')
    bytes = build(sslTlv(tls, parts))
  }
  if (bytes.length >= PROXY_HEADER_LIMIT && tls.verifiedCn !== undefined) {
    parts.cn = false
    omitted.push('cn')
    bytes = build(sslTlv(tls, parts))
  }
  return { bytes, omitted }
}

// Who the client is when Drawbridge sits behind a load balancer or reverse proxy: the TCP peer is
// then the proxy, and the client's address arrives in a header the proxy added. Such headers are
// only believed from peers listed in http.trustedProxies; anyone else could write them
// (FIELD-NOTES 28: EMQX trusting the leftmost X-Forwarded-For lets clients pick their address).
//
// The chain of addresses is read from the right (nearest hop first) and the first address that
// is not itself a trusted proxy is the client, so entries a client prepends are never reached.
import type { IncomingHttpHeaders } from 'node:http'
import { BlockList, isIP, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { Cidr } from '../config/formats.js'

export interface ClientAddress {
  /** The client's IP address (no port). */
  address: string
  /** Which header it came from, or 'peer' when it is the TCP peer itself. */
  source: 'peer' | 'forwarded' | 'x-forwarded-for' | 'x-real-ip'
  /**
   * The addresses from the client to the TCP peer, nearest last: what a proxied request's
   * X-Forwarded-For says. Hops a trusted proxy vouched for are kept; anything left of the
   * client (which the client itself could have written) is not.
   */
  chain: string[]
}

/** The TCP peer of `socket` as logs show it: `203.0.113.7:51234`, `[2001:db8::7]:51234`. */
export function peerAddress(socket: Duplex | undefined): string {
  const { remoteAddress, remotePort } = (socket ?? {}) as Partial<Socket>
  if (remoteAddress === undefined) return 'unknown'
  const host = remoteAddress.includes(':') ? `[${remoteAddress}]` : remoteAddress
  return `${host}:${remotePort}`
}

export class ClientAddressResolver {
  readonly #trusted = new BlockList()
  readonly #enabled: boolean

  constructor(trustedProxies: readonly Cidr[]) {
    for (const cidr of trustedProxies) {
      this.#trusted.addSubnet(cidr.address, cidr.prefix, cidr.family)
    }
    this.#enabled = trustedProxies.length > 0
  }

  /** The client address for a request whose TCP peer is `peer` (an IP, no port). */
  resolve(peer: string, headers: IncomingHttpHeaders): ClientAddress {
    const peerAddress = unmapIPv4(peer)
    const alone: ClientAddress = { address: peerAddress, source: 'peer', chain: [peerAddress] }
    if (!this.#enabled || !this.isTrusted(peerAddress)) return alone
    const reported = reportedChain(headers)
    if (reported === undefined) return alone
    let client = peerAddress
    const hops: string[] = []
    for (let i = reported.chain.length - 1; i >= 0; i--) {
      const hop = reported.chain[i]
      // An unknown or obfuscated hop ("unknown", "_hidden"): nothing beyond it can be checked,
      // so the last address we could vouch for stands.
      if (hop === undefined) break
      client = hop
      hops.unshift(hop)
      if (!this.isTrusted(hop)) break
    }
    return client === peerAddress
      ? alone
      : { address: client, source: reported.source, chain: [...hops, peerAddress] }
  }

  isTrusted(address: string): boolean {
    const family = isIP(address)
    if (family === 0) return false
    return this.#trusted.check(address, family === 4 ? 'ipv4' : 'ipv6')
  }
}

/**
 * The addresses a proxy reported, nearest last, from the first header present of: Forwarded
 * (RFC 7239, the standard), X-Forwarded-For, X-Real-IP. An entry that is not an IP address is
 * `undefined`. Repeated headers arrive joined with ", " by Node, which keeps their order.
 */
function reportedChain(
  headers: IncomingHttpHeaders,
): { chain: (string | undefined)[]; source: ClientAddress['source'] } | undefined {
  const forwarded = headerText(headers.forwarded)
  if (forwarded !== undefined) {
    return { chain: forwarded.split(',').map(forwardedFor), source: 'forwarded' }
  }
  const xff = headerText(headers['x-forwarded-for'])
  if (xff !== undefined) {
    return { chain: xff.split(',').map(addressOnly), source: 'x-forwarded-for' }
  }
  const realIp = headerText(headers['x-real-ip'])
  if (realIp !== undefined) {
    return { chain: [addressOnly(realIp)], source: 'x-real-ip' }
  }
  return undefined
}

function headerText(value: string | string[] | undefined): string | undefined {
  const text = Array.isArray(value) ? value.join(', ') : value
  return text === undefined || text.trim() === '' ? undefined : text
}

/** The `for=` node of one Forwarded element: `for=192.0.2.60;proto=https`, `for="[2001:db8::1]:4711"`. */
function forwardedFor(element: string): string | undefined {
  for (const pair of element.split(';')) {
    const eq = pair.indexOf('=')
    if (eq === -1) continue
    if (pair.slice(0, eq).trim().toLowerCase() !== 'for') continue
    return addressOnly(
      pair
        .slice(eq + 1)
        .trim()
        .replace(/^"(.*)"$/, '$1'),
    )
  }
  return undefined
}

/** An IP address from `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:443` or `2001:db8::1`. */
function addressOnly(text: string): string | undefined {
  const value = text.trim()
  if (isIP(value) !== 0) return unmapIPv4(value)
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(value)
  if (bracketed?.[1] !== undefined && isIP(bracketed[1]) === 6) return unmapIPv4(bracketed[1])
  const withPort = /^([\d.]+):\d+$/.exec(value)
  if (withPort?.[1] !== undefined && isIP(withPort[1]) === 4) return withPort[1]
  return undefined
}

/** `::ffff:10.0.0.1` (an IPv4 client on a dual-stack socket) is 10.0.0.1 for every purpose here. */
export function unmapIPv4(address: string): string {
  const match = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
  return match?.[1] ?? address
}

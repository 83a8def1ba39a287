// Limits per client (limits.perClientConnections, perClientRate/perClientBurst): one table of
// the clients the gateway has seen, by resolved client address, shared by every listener, so a
// client is one client whether it comes over wss or mqtts. IPv6 clients are counted by their
// limits.ipv6Prefix (a /64 is one subscriber, who can pick any address inside it).
//
// The table is bounded (limits.trackedClients): the least recently seen client is forgotten
// first, so a flood from many source addresses costs a fixed amount of memory. A forgotten
// client starts again with no open connections counted and a full bucket; the slot a forgotten
// client holds is still given back to its own (forgotten) entry, never to a newer one.
import { isIP } from 'node:net'
import { TokenBucket } from '../bridge/rate.js'
import type { Config } from '../config/schema.js'
import type { Metrics } from '../metrics.js'
import type { Admission, Step } from './admission.js'
import { unmapIPv4 } from './client-address.js'
import { Refusals } from './refusals.js'

type LimitsConfig = Pick<
  Config['limits'],
  'perClientConnections' | 'perClientRate' | 'perClientBurst' | 'ipv6Prefix' | 'trackedClients'
>

interface Tracked {
  open: number
  /** limits.perClientRate; undefined when it is off. */
  bucket: TokenBucket | undefined
}

export class ClientTable {
  readonly #limits: LimitsConfig
  readonly #metrics: Metrics
  /** In order of last sight, oldest first (a Map keeps insertion order). */
  readonly #clients = new Map<string, Tracked>()
  readonly #burst: number
  evicted = 0

  constructor(limits: LimitsConfig, metrics: Metrics) {
    this.#limits = limits
    this.#metrics = metrics
    this.#burst =
      limits.perClientBurst > 0 ? limits.perClientBurst : Math.max(1, limits.perClientRate)
    metrics.setTrackedClientsSource(() => this.#clients.size)
  }

  /** True when a per-client limit is on; else the listeners leave the step out. */
  get enabled(): boolean {
    return this.#limits.perClientConnections > 0 || this.#limits.perClientRate > 0
  }

  get size(): number {
    return this.#clients.size
  }

  /** The key a client address is counted under: IPv4 whole, IPv6 by limits.ipv6Prefix. */
  keyOf(address: string): string {
    const plain = unmapIPv4(address)
    return isIP(plain) === 6 ? ipv6Prefix(plain, this.#limits.ipv6Prefix) : plain
  }

  /**
   * Lets a new connection from `address` in, or says why not. On success the returned release
   * gives its slot back; it does something only the first time it is called.
   */
  admit(
    address: string,
  ): { ok: true; release: () => void } | ReturnType<typeof Refusals.clientRate> {
    const key = this.keyOf(address)
    const client = this.#touch(key)
    const max = this.#limits.perClientConnections
    if (max > 0 && client.open >= max) return Refusals.clientConnections(key, max)
    if (client.bucket !== undefined) {
      const wait = client.bucket.take()
      if (wait > 0) {
        return Refusals.clientRate(
          key,
          this.#limits.perClientRate,
          Math.max(1, Math.ceil(wait / 1000)),
        )
      }
    }
    client.open++
    let released = false
    return {
      ok: true,
      release: () => {
        if (released) return
        released = true
        client.open--
        // Nothing left to remember without a rate: the entry goes (if it is still this one).
        if (client.open === 0 && client.bucket === undefined && this.#clients.get(key) === client)
          this.#clients.delete(key)
      },
    }
  }

  #touch(key: string): Tracked {
    let client = this.#clients.get(key)
    if (client !== undefined) {
      this.#clients.delete(key)
    } else {
      if (this.#clients.size >= this.#limits.trackedClients) this.#evictOldest()
      client = {
        open: 0,
        bucket:
          this.#limits.perClientRate > 0
            ? new TokenBucket(this.#limits.perClientRate, this.#burst)
            : undefined,
      }
    }
    this.#clients.set(key, client)
    return client
  }

  #evictOldest(): void {
    const oldest = this.#clients.keys().next()
    if (oldest.done === true) return
    this.#clients.delete(oldest.value)
    this.evicted++
    this.#metrics.clientEvicted()
  }
}

/** The per-client step; both listeners put it before the capacity step. */
export function withinClientLimits(table: ClientTable): Step<Admission> {
  return {
    name: 'client limits',
    run(admission) {
      const verdict = table.admit(admission.clientAddress)
      if (!('ok' in verdict)) return verdict
      admission.onClose.push(verdict.release)
      return undefined
    },
  }
}

/** `address` (IPv6) cut to its first `bits` bits, as "prefix/bits". */
function ipv6Prefix(address: string, bits: number): string {
  const groups = expandIPv6(address)
  const out: string[] = []
  for (let i = 0; i < 8; i++) {
    const keep = Math.max(0, Math.min(16, bits - i * 16))
    const mask = keep === 0 ? 0 : (0xffff << (16 - keep)) & 0xffff
    out.push(((groups[i] ?? 0) & mask).toString(16))
  }
  return `${out.join(':')}/${bits}`
}

/** The eight 16-bit groups of an IPv6 address (an embedded IPv4 tail included). */
function expandIPv6(address: string): number[] {
  let text = address.split('%')[0] ?? ''
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text)
  if (v4 !== null) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number]
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head = '', tail] = text.split('::')
  const parse = (part: string): number[] =>
    part === '' ? [] : part.split(':').map((group) => parseInt(group, 16))
  const left = parse(head)
  const right = tail === undefined ? [] : parse(tail)
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right]
}

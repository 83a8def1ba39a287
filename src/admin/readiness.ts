// Readiness: may a load balancer send this gateway new clients? Yes only while
// - the public listener is listening,
// - shutdown has not begun (drain() flips this first thing on SIGTERM, before connections are
//   closed, so the balancer stops routing here while open clients are still being served), and
// - the latest upstream check, at most one interval (plus its own timeout) old, reached a broker
//   over TCP. A gateway whose brokers are all down would only answer 502 to every client.
import type { Socket } from 'node:net'
import type { HostPort } from '../config/formats.js'
import type { Logger } from '../log.js'
import { connectUpstream } from '../upstream/connector.js'
import { encodeLocalHeader, type ProxyProtocol } from '../upstream/proxy-header.js'

export interface ReadinessOptions {
  brokers: readonly HostPort[]
  /** upstream.connectTimeout: how long one check waits for each broker. */
  connectTimeout: number
  /** admin.readinessInterval */
  interval: number
  /** upstream.proxyProtocol: when on, each check opens with a LOCAL header. */
  proxyProtocol?: ProxyProtocol
  isListening: () => boolean
  log: Logger
}

export interface ReadinessStatus {
  ready: boolean
  /** Why not ready, or "ready". */
  reason: string
  /** The latest upstream check reached a broker. */
  upstreamUp: boolean
}

interface UpstreamCheck {
  ok: boolean
  at: number
  detail: string
}

export class Readiness {
  readonly #options: ReadinessOptions
  #draining = false
  #last: UpstreamCheck | undefined
  #timer: NodeJS.Timeout | undefined
  #checking = false
  #stopped = false

  constructor(options: ReadinessOptions) {
    this.#options = options
  }

  /** Checks the upstream now and then every interval until stop(). */
  start(): void {
    void this.#check()
    this.#timer = setInterval(() => void this.#check(), this.#options.interval)
    this.#timer.unref()
  }

  stop(): void {
    this.#stopped = true
    clearInterval(this.#timer)
  }

  /** Shutdown has begun: not ready from now on, whatever else holds. */
  drain(): void {
    this.#draining = true
  }

  get draining(): boolean {
    return this.#draining
  }

  status(now = Date.now()): ReadinessStatus {
    const upstreamUp = this.#last?.ok === true
    const notReady = (reason: string): ReadinessStatus => ({ ready: false, reason, upstreamUp })
    if (this.#draining) return notReady('shutting down')
    if (!this.#options.isListening()) return notReady('public listener is not listening')
    if (this.#last === undefined) return notReady('no upstream check has completed yet')
    if (!this.#last.ok) return notReady(`no upstream broker reachable: ${this.#last.detail}`)
    const maxAge = this.#options.interval + this.#options.connectTimeout
    if (now - this.#last.at > maxAge) {
      return notReady(`last successful upstream check is ${now - this.#last.at} ms old`)
    }
    return { ready: true, reason: 'ready', upstreamUp }
  }

  async #check(): Promise<void> {
    // A check still waiting on a silent broker is not doubled up; its timeout bounds it.
    if (this.#checking || this.#stopped) return
    this.#checking = true
    let result: UpstreamCheck
    try {
      const proxy = this.#options.proxyProtocol ?? 'off'
      const { socket, broker } = await connectUpstream({
        brokers: this.#options.brokers,
        connectTimeout: this.#options.connectTimeout,
        // A broker that expects PROXY drops (and may log) a connection without a header: the
        // LOCAL header says this one is the gateway's own, with no client behind it.
        ...(proxy !== 'off' && { preface: encodeLocalHeader(proxy) }),
      })
      // Only the TCP accept is checked; no MQTT is spoken, so the broker sees a bare close.
      if (proxy === 'off') socket.destroy()
      else closeAfterHeader(socket)
      result = { ok: true, at: Date.now(), detail: broker }
    } catch (err) {
      result = {
        ok: false,
        at: Date.now(),
        detail: err instanceof Error ? err.message : String(err),
      }
    } finally {
      this.#checking = false
    }
    // stop() may have run while the check was awaited (the rule cannot see that).
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
    if (this.#stopped) return
    const was = this.#last?.ok
    this.#last = result
    // Every check, at debug: the state changes below are what info shows.
    this.#options.log.debug({ ok: result.ok, detail: result.detail }, 'upstream check')
    if (was !== result.ok) {
      if (result.ok) this.#options.log.info({ broker: result.detail }, 'upstream reachable: ready')
      else this.#options.log.warn({ detail: result.detail }, 'upstream unreachable: not ready')
    }
  }
}

/** A FIN after the LOCAL header (destroy() could drop it unsent); cut if no close follows. */
function closeAfterHeader(socket: Socket): void {
  socket.on('error', () => socket.destroy())
  socket.end()
  setTimeout(() => socket.destroy(), 2_000).unref()
}

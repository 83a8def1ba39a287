// Opens the TCP connection to a broker for one client: brokers are tried in the configured
// order, each for at most `connectTimeout`; the first that accepts wins. BrokerConnector is what
// the listeners use: it stops the attempt when the client goes away while it waits, and keeps
// count of the broker sockets it opened that are still open (the tests' leak check).
import net from 'node:net'
import { performance } from 'node:perf_hooks'
import type { Duplex } from 'node:stream'
import type { HostPort } from '../config/formats.js'
import { UpstreamError, UpstreamRefusedError, UpstreamTimeoutError } from '../errors.js'
import type { Logger } from '../log.js'
import { encodeProxyHeader, type ProxyClient, type ProxyProtocol } from './proxy-header.js'

export interface Upstream {
  socket: net.Socket
  broker: string
}

/**
 * Stops a connect in flight when its client goes away. Every upgrade makes one, so it is a plain
 * flag and one callback rather than an AbortController (an EventTarget and its listener list:
 * about 40 µs of CPU per connection set-up in the profile).
 */
export class Cancellation {
  #cancelled = false
  #onCancel: (() => void) | undefined

  get cancelled(): boolean {
    return this.#cancelled
  }

  cancel(): void {
    if (this.#cancelled) return
    this.#cancelled = true
    const onCancel = this.#onCancel
    this.#onCancel = undefined
    onCancel?.()
  }

  /** What cancel() runs: one attempt at a time waits on it; undefined clears it. */
  set onCancel(fn: (() => void) | undefined) {
    this.#onCancel = fn
  }
}

export interface ConnectOptions {
  brokers: readonly HostPort[]
  connectTimeout: number
  /** Cancelled when the client goes away mid-handshake: the attempt stops and its socket closes. */
  cancel?: Cancellation
  /** Told about every attempt that ended (not those aborted by the client leaving). */
  onAttempt?: (attempt: ConnectAttempt) => void
  /** Told about every socket as soon as it is created, before it has connected. */
  onSocket?: (socket: net.Socket) => void
  /**
   * Written the moment a broker accepts, before the socket is handed to anyone: the PROXY
   * header (upstream.proxyProtocol) is then the first bytes the broker reads, ahead of a held
   * CONNECT or anything else the client sends.
   */
  preface?: Buffer | undefined
}

/** One broker connect attempt, for the upstream metrics. */
export type ConnectAttempt =
  | { broker: string; ok: true; seconds: number }
  | { broker: string; ok: false; seconds: number; reason: ConnectFailureReason }

/** Why a connect failed, from a closed set (it becomes a metric label). */
export type ConnectFailureReason = 'refused' | 'timeout' | 'unreachable' | 'dns' | 'reset' | 'other'

const FAILURE_BY_ERRNO: Record<string, ConnectFailureReason> = {
  ECONNREFUSED: 'refused',
  EHOSTUNREACH: 'unreachable',
  ENETUNREACH: 'unreachable',
  EHOSTDOWN: 'unreachable',
  ENOTFOUND: 'dns',
  EAI_AGAIN: 'dns',
  ECONNRESET: 'reset',
  ETIMEDOUT: 'timeout',
}

export function failureReason(err: unknown): ConnectFailureReason {
  if (err instanceof UpstreamTimeoutError) return 'timeout'
  const code = (err as { cause?: { code?: unknown } } | undefined)?.cause?.code
  return typeof code === 'string' ? (FAILURE_BY_ERRNO[code] ?? 'other') : 'other'
}

export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

/**
 * Resolves with the first broker that accepts. Rejects with UpstreamTimeoutError when at least
 * one broker did not answer in time (504), else with UpstreamRefusedError (502); the message
 * names every broker tried and what happened.
 */
export async function connectUpstream(options: ConnectOptions): Promise<Upstream> {
  const failures: string[] = []
  let timedOut = false
  for (const broker of options.brokers) {
    const address = formatHostPort(broker)
    const started = performance.now()
    const seconds = (): number => (performance.now() - started) / 1000
    let socket: net.Socket
    try {
      socket = await connectOne(broker, options)
    } catch (err) {
      if (options.cancel?.cancelled === true) throw err
      options.onAttempt?.({
        broker: address,
        ok: false,
        seconds: seconds(),
        reason: failureReason(err),
      })
      if (err instanceof UpstreamTimeoutError) timedOut = true
      failures.push(`${address} ${err instanceof Error ? err.message : String(err)}`)
      continue
    }
    try {
      options.onAttempt?.({ broker: address, ok: true, seconds: seconds() })
    } catch (err) {
      // Nobody would own the socket: a fault in the hook must not leak it.
      socket.destroy()
      throw err
    }
    return { socket, broker: address }
  }
  const summary = failures.join('; ')
  throw timedOut
    ? new UpstreamTimeoutError(`no broker answered: ${summary}`)
    : new UpstreamRefusedError(`no broker accepted the connection: ${summary}`)
}

function connectOne(broker: HostPort, options: ConnectOptions): Promise<net.Socket> {
  const { connectTimeout: timeout, cancel, onSocket, preface } = options
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: broker.host, port: broker.port, noDelay: true })
    onSocket?.(socket)
    const timer = setTimeout(() => {
      fail(new UpstreamTimeoutError(`did not accept within ${timeout} ms`))
    }, timeout)

    const onCancel = (): void => {
      fail(new UpstreamRefusedError('the client went away while its broker was dialled'))
    }
    if (cancel !== undefined) cancel.onCancel = onCancel
    if (cancel?.cancelled === true) onCancel()

    function settle(): void {
      clearTimeout(timer)
      if (cancel !== undefined) cancel.onCancel = undefined
      socket.removeListener('error', onError)
      socket.removeListener('connect', onConnect)
    }
    function fail(err: Error): void {
      settle()
      socket.destroy()
      reject(err)
    }
    function onError(err: NodeJS.ErrnoException): void {
      fail(new UpstreamRefusedError(err.code ?? err.message, { cause: err }))
    }
    function onConnect(): void {
      settle()
      // Detect a broker host that vanished without a FIN on otherwise idle connections.
      socket.setKeepAlive(true, 30_000)
      if (preface !== undefined) socket.write(preface)
      resolve(socket)
    }
    socket.once('error', onError)
    socket.once('connect', onConnect)
  })
}

export interface BrokerConnectorOptions {
  brokers: readonly HostPort[]
  connectTimeout: number
  /** Told about every attempt that ended (the upstream metrics). */
  onAttempt?: (attempt: ConnectAttempt) => void
  /** upstream.proxyProtocol: off, or the PROXY header version each broker connection opens with. */
  proxyProtocol?: ProxyProtocol
  /** Where a PROXY header that had to leave something out is reported. */
  log?: Logger
}

/** How a connect made for a client ended. */
export type ClientConnectOutcome =
  | { ok: true; upstream: Upstream }
  /** The client closed or reset its socket while we waited: nobody is left to answer. */
  | { ok: false; clientLeft: true }
  /** No broker could be had; the error carries the HTTP status and the reason label. */
  | { ok: false; clientLeft: false; error: UpstreamError }

export class BrokerConnector {
  readonly #options: BrokerConnectorOptions
  #open = 0
  #idleWaiters: (() => void)[] = []
  /** One listener shared by every broker socket, not a closure per connection. */
  readonly #onSocketClose = (): void => {
    if (--this.#open > 0) return
    for (const resolve of this.#idleWaiters) resolve()
    this.#idleWaiters = []
  }

  // Counted from creation, not from 'connect': a socket still dialling when its client leaves
  // must be seen closing too, or a leak of one would go unnoticed.
  readonly #onSocket = (socket: net.Socket): void => {
    this.#open++
    socket.once('close', this.#onSocketClose)
  }

  constructor(options: BrokerConnectorOptions) {
    this.#options = options
  }

  /** upstream.proxyProtocol is v1 or v2: callers describe their client (a ProxyClient). */
  get proxying(): boolean {
    return (this.#options.proxyProtocol ?? 'off') !== 'off'
  }

  #preface(proxy: ProxyClient | undefined): Buffer | undefined {
    const version = this.#options.proxyProtocol ?? 'off'
    if (version === 'off') return undefined
    if (proxy === undefined)
      throw new TypeError('upstream.proxyProtocol is on: describe the client')
    const header = encodeProxyHeader(version, proxy)
    if (header.omitted.length > 0) {
      this.#options.log?.warn(
        { conn: proxy.uniqueId, omitted: header.omitted, bytes: header.bytes.length },
        'PROXY header over its size limit: left out what did not fit',
      )
    }
    return header.bytes
  }

  /** The configured brokers, in the configured order. */
  get brokers(): readonly HostPort[] {
    return this.#options.brokers
  }

  /** Broker sockets opened here, connecting or connected, that have not closed yet. */
  get openSockets(): number {
    return this.#open
  }

  /** Resolves once no broker socket opened here is open (at once when none is). */
  whenAllClosed(): Promise<void> {
    if (this.#open === 0) return Promise.resolve()
    return new Promise((resolve) => this.#idleWaiters.push(resolve))
  }

  /**
   * Connects a broker for `client`. A client that ends, closes or resets meanwhile aborts the attempt
   * (its socket is destroyed); an 'error' on the client is absorbed so it cannot go uncaught.
   * `proxy` describes the client for the PROXY header (upstream.proxyProtocol).
   */
  async connectFor(client: Duplex, proxy?: ProxyClient): Promise<ClientConnectOutcome> {
    const cancel = new Cancellation()
    const onGone = (): void => cancel.cancel()
    // 'end' too: the public listener's sockets allow half-open connections, so a client that
    // leaves with a FIN is not closed until we close it, and nobody would while we wait.
    client.once('end', onGone)
    client.once('close', onGone)
    client.on('error', onGone)
    try {
      return await this.#dial(this.#options.brokers, cancel, proxy)
    } finally {
      client.removeListener('end', onGone)
      client.removeListener('close', onGone)
      client.removeListener('error', onGone)
    }
  }

  /**
   * Connects the first of `brokers` that accepts (upstream.connectOn=connect, where the
   * Connection knows when its client leaves and aborts `signal`; the brokers may be in the
   * order upstream.affinity picked). An aborted attempt's socket is destroyed.
   */
  async dial(
    brokers: readonly HostPort[],
    signal: AbortSignal,
    proxy?: ProxyClient,
  ): Promise<ClientConnectOutcome> {
    const cancel = new Cancellation()
    const onAbort = (): void => cancel.cancel()
    signal.addEventListener('abort', onAbort, { once: true })
    if (signal.aborted) cancel.cancel()
    try {
      return await this.#dial(brokers, cancel, proxy)
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }

  async #dial(
    brokers: readonly HostPort[],
    cancel: Cancellation,
    proxy: ProxyClient | undefined,
  ): Promise<ClientConnectOutcome> {
    try {
      const upstream = await connectUpstream({
        brokers,
        connectTimeout: this.#options.connectTimeout,
        cancel,
        onSocket: this.#onSocket,
        preface: this.#preface(proxy),
        ...(this.#options.onAttempt && { onAttempt: this.#options.onAttempt }),
      })
      return { ok: true, upstream }
    } catch (err) {
      if (cancel.cancelled) return { ok: false, clientLeft: true }
      if (err instanceof UpstreamError) return { ok: false, clientLeft: false, error: err }
      throw err
    }
  }
}

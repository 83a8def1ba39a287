// The optional mqtts listener (tcp.enabled): MQTT over TLS on a TCP port (8883 is IANA's
// "secure-mqtt"; MQTT 3.1.1 section 5.1), terminated here and piped to the same upstream brokers
// as the WebSocket listener, with the same certificates and client-certificate rules. Devices
// that speak mqtts and browsers that speak wss then share one edge.
//
// Unlike a WebSocket there is no framing to translate: once the broker socket is open the two
// TCP streams are piped, and stream.pipe() supplies the backpressure (a full broker socket
// pauses the client socket and the reverse), so memory per connection stays bounded by the
// sockets' high-water marks.
import { randomBytes } from 'node:crypto'
import type { AddressInfo, Socket } from 'node:net'
import tls from 'node:tls'
import { clientIdentityOf } from '../bridge/bridge.js'
import type { HostPort } from '../config/formats.js'
import { ListenError, UpstreamTimeoutError } from '../errors.js'
import type { Logger } from '../log.js'
import type { FinishedConnection, Metrics } from '../metrics.js'
import { connectUpstream } from '../upstream/connector.js'
import { peerAddress } from './client-address.js'
import type { TlsManager } from './tls.js'

// How long one side may stay half-open after the other closed before it is destroyed.
const HALF_OPEN_TIMEOUT_MS = 2_000

export interface MqttsOptions {
  host: string
  port: number
  brokers: readonly HostPort[]
  connectTimeout: number
  /** Open mqtts connections above which new ones are refused (counted apart from WebSockets). */
  maxConnections: number
  tls: TlsManager
  log: Logger
  metrics: Metrics
}

/**
 * One mqtts connection as the metrics see it, like a WebSocket Connection: bytes are read from
 * the broker socket's own counters at scrape time (the streams are piped, nothing counts them
 * per chunk). There are no frames, pauses or WebSocket close codes on this listener.
 */
class Pipe implements FinishedConnection {
  readonly listener = 'mqtts'
  readonly openedAt = Date.now()
  readonly framesToBroker = 0
  readonly framesToClient = 0
  readonly pausesToBroker = 0
  readonly pausesToClient = 0
  readonly pingTimedOut = false
  readonly closed = undefined

  constructor(
    readonly id: string,
    readonly client: tls.TLSSocket,
    readonly upstream: Socket,
    readonly clientIdentity: string,
    readonly whenClosed: Promise<void>,
  ) {}

  get bytesToBroker(): number {
    return this.upstream.bytesWritten
  }

  get bytesToClient(): number {
    return this.upstream.bytesRead
  }
}

export class MqttsListener {
  readonly #options: MqttsOptions
  readonly #server: tls.Server
  readonly #open = new Set<Pipe>()
  readonly #idPrefix = `t${randomBytes(3).toString('hex')}`
  #nextId = 0
  #pending = 0
  #closing = false

  constructor(options: MqttsOptions) {
    this.#options = options
    this.#server = tls.createServer(options.tls.serverOptions())
    // The manager judges the client first, so its verdict is there when #onClient runs.
    options.tls.attach(this.#server, 'mqtts')
    this.#server.on('secureConnection', this.#onClient)
    options.metrics.addConnectionSource('mqtts', () => this.#open)
  }

  get size(): number {
    return this.#open.size
  }

  listen(): Promise<AddressInfo> {
    const { host, port } = this.#options
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(
          new ListenError(`mqtts listener cannot listen on ${host}:${port}: ${err.code}`, {
            cause: err,
          }),
        )
      }
      this.#server.once('error', onError)
      this.#server.listen(port, host, () => {
        this.#server.removeListener('error', onError)
        resolve(this.address())
      })
    })
  }

  address(): AddressInfo {
    return this.#server.address() as AddressInfo
  }

  /** Stops accepting, ends every connection (TLS close_notify + FIN), cuts the rest after `grace`. */
  async close(grace: number): Promise<void> {
    this.#closing = true
    const serverClosed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    const open = [...this.#open]
    for (const pipe of open) pipe.client.end()
    let timer: NodeJS.Timeout | undefined
    const graceOver = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), grace)
    })
    const allClosed = Promise.all(open.map((pipe) => pipe.whenClosed))
    if ((await Promise.race([allClosed, graceOver])) === 'timeout') {
      for (const pipe of this.#open) pipe.client.destroy()
      await allClosed
    }
    clearTimeout(timer)
    await serverClosed
  }

  readonly #onClient = (client: tls.TLSSocket): void => {
    // A reset before we are done with it must not become an uncaught 'error'.
    client.on('error', () => undefined)
    const verdict = this.#options.tls.verdict(client)
    if (verdict === undefined || !verdict.ok) {
      // Logged and counted with its reason by the TLS manager.
      client.destroy()
      return
    }
    const remote = peerAddress(client)
    if (this.#closing || this.#open.size + this.#pending >= this.#options.maxConnections) {
      const reason = this.#closing ? 'shutting_down' : 'capacity'
      this.#options.metrics.handshakeRejected(reason)
      this.#options.log.warn({ listener: 'mqtts', remote, reason }, 'mqtts connection refused')
      client.destroy()
      return
    }
    client.pause()
    void this.#connect(client, remote, verdict.tls)
  }

  async #connect(
    client: tls.TLSSocket,
    remote: string,
    tlsDetails: NonNullable<ReturnType<TlsManager['verdict']>>['tls'],
  ): Promise<void> {
    this.#pending++
    const abort = new AbortController()
    const onGone = (): void => abort.abort()
    client.once('close', onGone)
    let upstream
    try {
      upstream = await connectUpstream({
        brokers: this.#options.brokers,
        connectTimeout: this.#options.connectTimeout,
        signal: abort.signal,
        onAttempt: (attempt) => this.#options.metrics.upstreamAttempt(attempt),
      })
    } catch (err) {
      if (!abort.signal.aborted) {
        const reason = err instanceof UpstreamTimeoutError ? 'upstream_timeout' : 'upstream_refused'
        this.#options.metrics.handshakeRejected(reason)
        this.#options.log.warn(
          {
            listener: 'mqtts',
            remote,
            reason,
            detail: err instanceof Error ? err.message : String(err),
          },
          'mqtts connection refused',
        )
      }
      client.destroy()
      return
    } finally {
      this.#pending--
      client.removeListener('close', onGone)
    }
    this.#bridge(client, upstream.socket, remote, upstream.broker, tlsDetails)
  }

  #bridge(
    client: tls.TLSSocket,
    upstream: Socket,
    remote: string,
    broker: string,
    tlsDetails: NonNullable<ReturnType<TlsManager['verdict']>>['tls'],
  ): void {
    const id = `${this.#idPrefix}-${(++this.#nextId).toString(36)}`
    const log = this.#options.log
    let initiator: 'client' | 'broker' | undefined
    let error: string | undefined
    let clientClosed = false
    let upstreamClosed = false
    let resolveClosed = (): void => undefined
    const whenClosed = new Promise<void>((resolve) => (resolveClosed = resolve))
    const identity = clientIdentityOf(tlsDetails, client.remoteAddress ?? 'unknown')
    const pipe = new Pipe(id, client, upstream, identity, whenClosed)
    this.#open.add(pipe)
    this.#options.metrics.connectionOpened('mqtts')
    log.info(
      { conn: id, listener: 'mqtts', remote, protocol: 'mqtts', broker, tls: tlsDetails },
      'connection opened',
    )

    const finish = (): void => {
      if (!clientClosed || !upstreamClosed) return
      // Same tick: the counts move from the live set to the closed totals together.
      this.#options.metrics.connectionClosed(pipe)
      this.#open.delete(pipe)
      log.info(
        {
          conn: id,
          listener: 'mqtts',
          remote,
          broker,
          bytesToBroker: upstream.bytesWritten,
          bytesToClient: upstream.bytesRead,
          durationMs: Date.now() - pipe.openedAt,
          initiator: initiator ?? 'gateway',
          reason: error ?? 'closed',
        },
        'connection closed',
      )
      resolveClosed()
    }
    upstream.on(
      'error',
      (err: NodeJS.ErrnoException) => (error ??= `broker: ${err.code ?? err.message}`),
    )
    client.on(
      'error',
      (err: NodeJS.ErrnoException) => (error ??= `client: ${err.code ?? err.message}`),
    )
    // pipe() ends the other side when one side ends (FIN), after the buffered bytes: a client's
    // last DISCONNECT still reaches the broker.
    client.pipe(upstream)
    upstream.pipe(client)
    client.once('end', () => (initiator ??= 'client'))
    upstream.once('end', () => (initiator ??= 'broker'))
    client.once('close', () => {
      clientClosed = true
      initiator ??= 'client'
      upstream.end()
      setTimeout(() => upstream.destroy(), HALF_OPEN_TIMEOUT_MS).unref()
      finish()
    })
    upstream.once('close', () => {
      upstreamClosed = true
      initiator ??= 'broker'
      client.end()
      setTimeout(() => client.destroy(), HALF_OPEN_TIMEOUT_MS).unref()
      finish()
    })
    client.resume()
  }
}

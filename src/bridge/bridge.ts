// One client connection: a WebSocket on one side, the broker's TCP socket on the other, bytes
// piped both ways unchanged. A WebSocket frame may carry part of an MQTT packet or several
// [MQTT-6.0.0-2], so the bridge never re-frames or inspects: it forwards the byte stream.
//
// Memory per connection is bounded in both directions:
// - client -> broker: when the broker socket's write buffer passes highWaterMark, the
//   WebSocket stops reading (ws.pause() stops the TCP socket) until 'drain'.
// - broker -> client: when the WebSocket's buffered amount would pass highWaterMark, the broker
//   socket stops reading until the buffer is down to about half the mark.
import type { Socket } from 'node:net'
import type { RawData, WebSocket } from 'ws'
import type { Logger } from '../log.js'
import { CloseCode, CloseReason, type Initiator } from './close-codes.js'

// How long a broker socket may stay half-open after the client left before it is destroyed.
const UPSTREAM_END_TIMEOUT_MS = 2_000

// Each socket points back to its Connection through this key, so the event listeners can be
// shared functions (static methods below) instead of a dozen closures per connection, which
// held about 0.9 KiB of heap per idle client (6.1 -> 5.2 KiB per connection after GC).
const OWNER = Symbol('drawbridge.connection')

interface Owned {
  [OWNER]: Connection
}

/** A verified client certificate, as it travels with its connection (log lines, /connections). */
export interface ClientCertInfo {
  /** Subject common name ('' when the subject has none). */
  subject: string
  /** subjectAltName entries as OpenSSL prints them: "DNS:device-7", "IP Address:10.0.0.7". */
  sans: string[]
  /** Hex, upper case, as Node prints it. */
  serial: string
  fingerprint256: string
  issuer: string
  validTo: string
}

/** TLS details of a connection that arrived over wss:// (or mqtts). */
export interface ConnectionTls {
  /** Negotiated version, e.g. TLSv1.3. */
  protocol: string
  cipher: string
  /** Present only when the client sent a certificate that tls.ca verified. */
  clientCert?: ClientCertInfo
}

export interface ConnectionInfo {
  id: string
  /** Name of the listener that accepted it (the `listener` label of the metrics). */
  listener: string
  /** The TCP peer, host:port. */
  remoteAddress: string
  /** The client's IP: the peer's, or the one a trusted proxy reported (http.trustedProxies). */
  clientAddress: string
  /** True when clientAddress came from a trusted proxy's header rather than the TCP peer. */
  forwarded: boolean
  /** The browser's Origin header, when one was sent. */
  origin?: string | undefined
  protocol: string | false
  broker: string
  /** Absent on plain ws:// connections. */
  tls?: ConnectionTls
}

export interface ConnectionOptions {
  highWaterMark: number
  log: Logger
  /** Called once, after both sides are closed. */
  onClose: (connection: Connection) => void
}

/** What the close log line (and later the metrics) report about a finished connection. */
export interface CloseSummary {
  code: number
  initiator: Initiator
  reason: string
}

export class Connection {
  readonly id: string
  readonly listener: string
  readonly remoteAddress: string
  readonly clientAddress: string
  readonly forwarded: boolean
  readonly origin: string | undefined
  readonly protocol: string | false
  readonly broker: string
  readonly tls: ConnectionTls | undefined
  readonly openedAt = Date.now()

  bytesToBroker = 0
  bytesToClient = 0
  framesToBroker = 0
  framesToClient = 0
  lastActivity = this.openedAt
  /** Client -> broker paused because the broker socket is full. */
  pausedToBroker = false
  /** Broker -> client paused because the WebSocket is backed up. */
  pausedToClient = false
  /** How many times each direction was paused (backpressure_pauses_total). */
  pausesToBroker = 0
  pausesToClient = 0
  /** Ended by the ping sweep (ping_timeouts_total). */
  pingTimedOut = false
  closed: CloseSummary | undefined

  readonly #ws: WebSocket
  readonly #upstream: Socket
  readonly #options: ConnectionOptions
  #pingSentAt = 0
  #pending: CloseSummary | undefined
  #finished = false
  #closeWaiters: (() => void)[] | undefined
  /** A send with the low-water callback is in flight (see #brokerData). */
  #lowWaterPending = false
  /** Broker socket corked until the end of this tick (see #onClientMessage). */
  #corked = false

  constructor(ws: WebSocket, upstream: Socket, info: ConnectionInfo, options: ConnectionOptions) {
    this.id = info.id
    this.listener = info.listener
    this.remoteAddress = info.remoteAddress
    this.clientAddress = info.clientAddress
    this.forwarded = info.forwarded
    this.origin = info.origin
    this.protocol = info.protocol
    this.broker = info.broker
    this.tls = info.tls
    this.#ws = ws
    this.#upstream = upstream
    this.#options = options

    ;(ws as unknown as Owned)[OWNER] = this
    ;(upstream as unknown as Owned)[OWNER] = this
    ws.on('message', Connection.#onClientMessage)
    ws.on('pong', Connection.#onPong)
    ws.on('error', Connection.#onClientError)
    ws.on('close', Connection.#onClientClose)
    upstream.on('data', Connection.#onBrokerData)
    upstream.on('end', Connection.#onBrokerEnd)
    upstream.on('error', Connection.#onBrokerError)
    upstream.on('close', Connection.#onBrokerClose)
    upstream.on('drain', Connection.#onBrokerDrain)

    options.log.info(
      {
        conn: this.id,
        remote: this.remoteAddress,
        ...(this.forwarded && { client: this.clientAddress }),
        ...(this.origin !== undefined && { origin: this.origin }),
        protocol: this.protocol,
        broker: this.broker,
        ...(this.tls && { tls: this.tls }),
      },
      'connection opened',
    )
  }

  /**
   * Who the client is for per-client metrics: its IP address without the port (a port is new on
   * every connection). A verified TLS client certificate's CN takes precedence.
   */
  get clientIdentity(): string {
    return clientIdentityOf(this.tls, this.clientAddress)
  }

  /** Resolves once both sides are closed and the close has been logged. */
  whenClosed(): Promise<void> {
    if (this.#finished) return Promise.resolve()
    return new Promise((resolve) => (this.#closeWaiters ??= []).push(resolve))
  }

  /** Starts a close handshake with `code`; the client's answer (or ws's timeout) ends it. */
  close(code: number, reason: string, initiator: Initiator): void {
    this.#pending ??= { code, initiator, reason }
    this.#ws.close(code, reason)
  }

  /** Cuts the connection at once, without a close handshake (shutdown grace ran out). */
  terminate(reason: string): void {
    this.#pending ??= { code: 1006, initiator: 'gateway', reason }
    this.#ws.terminate()
  }

  /** Sends a ping unless one is outstanding; terminates a peer whose pong is overdue. */
  ping(now: number, timeout: number): void {
    if (this.#pingSentAt !== 0) {
      if (this.pongOverdue(now, timeout)) this.terminateForPingTimeout()
      return
    }
    if (this.#ws.readyState !== this.#ws.OPEN) return
    this.#pingSentAt = now
    this.#ws.ping()
  }

  pongOverdue(now: number, timeout: number): boolean {
    return this.#pingSentAt !== 0 && now - this.#pingSentAt >= timeout
  }

  terminateForPingTimeout(): void {
    this.#options.log.warn({ conn: this.id }, 'no pong within ws.pongTimeout; terminating')
    this.pingTimedOut = true
    this.terminate('ping timeout')
  }

  // The shared listeners: `this` is the emitting socket, whose OWNER is the connection.
  static #onClientMessage(this: WebSocket, message: RawData, isBinary: boolean): void {
    ownerOf(this).#clientMessage(message, isBinary)
  }

  static #onPong(this: WebSocket): void {
    ownerOf(this).#pong()
  }

  static #onClientError(this: WebSocket, err: Error & { code?: string }): void {
    ownerOf(this).#clientError(err)
  }

  static #onClientClose(this: WebSocket, code: number, reason: Buffer): void {
    ownerOf(this).#clientClose(code, reason)
  }

  static #onBrokerData(this: Socket, chunk: Buffer): void {
    ownerOf(this).#brokerData(chunk)
  }

  static #onBrokerDrain(this: Socket): void {
    ownerOf(this).#brokerDrain()
  }

  static #onBrokerEnd(this: Socket): void {
    ownerOf(this).#brokerEnd()
  }

  static #onBrokerError(this: Socket, err: NodeJS.ErrnoException): void {
    ownerOf(this).#brokerError(err)
  }

  static #onBrokerClose(this: Socket): void {
    ownerOf(this).#brokerClose()
  }

  #clientMessage(message: RawData, isBinary: boolean): void {
    // The server sets no binaryType, so ws hands over 'nodebuffer': always one Buffer.
    const data = message as Buffer
    if (!isBinary) {
      // [MQTT-6.0.0-1]: a non-binary data frame means the connection must be closed.
      this.close(CloseCode.UNSUPPORTED_DATA, CloseReason.textFrame, 'gateway')
      return
    }
    this.framesToBroker++
    this.bytesToBroker += data.length
    this.lastActivity = Date.now()
    // ws emits every frame of one socket read in the same tick: cork so they reach the broker
    // in one writev instead of one syscall per frame (the byte stream is unchanged).
    if (!this.#corked) {
      this.#corked = true
      this.#upstream.cork()
      process.nextTick(Connection.#uncorkUpstream, this)
    }
    // Pause at limits.highWaterMark, not at the socket's own 16 KiB mark. Only when write()
    // also said false: that is what makes the socket emit the 'drain' that resumes us.
    if (
      !this.#upstream.write(data) &&
      this.#upstream.writableLength >= this.#options.highWaterMark &&
      !this.pausedToBroker
    ) {
      this.pausedToBroker = true
      this.pausesToBroker++
      this.#ws.pause()
    }
  }

  static #uncorkUpstream(connection: Connection): void {
    connection.#corked = false
    connection.#upstream.uncork()
  }

  #brokerDrain(): void {
    if (!this.pausedToBroker) return
    this.pausedToBroker = false
    this.#ws.resume()
  }

  #brokerData(chunk: Buffer): void {
    this.framesToClient++
    this.bytesToClient += chunk.length
    this.lastActivity = Date.now()
    const buffered = this.#ws.bufferedAmount + chunk.length
    const mark = this.#options.highWaterMark
    if (buffered <= mark) {
      // The first send past half the mark carries a callback: once it is flushed at most about
      // half is left, so a paused broker resumes before the WebSocket runs dry (resuming only on
      // an empty buffer stalled the pipe on every pause: 16 KiB messages over wss cost 1.3x).
      if (buffered > mark / 2 && !this.#lowWaterPending) this.#sendWithLowWater(chunk)
      else this.#ws.send(chunk)
      return
    }
    // This send crosses the mark: stop reading the broker until the pending low-water send (or,
    // without one, this send) has been flushed; sends are flushed in order.
    this.pausedToClient = true
    this.pausesToClient++
    this.#upstream.pause()
    if (this.#lowWaterPending) this.#ws.send(chunk)
    else this.#sendWithLowWater(chunk)
  }

  #sendWithLowWater(chunk: Buffer): void {
    this.#lowWaterPending = true
    this.#ws.send(chunk, (err) => this.#lowWaterReached(err))
  }

  // net.Socket write callbacks pass null, not undefined, on success.
  #lowWaterReached(err?: Error | null): void {
    this.#lowWaterPending = false
    if (err instanceof Error || !this.pausedToClient) return
    this.pausedToClient = false
    this.#upstream.resume()
  }

  #pong(): void {
    this.#pingSentAt = 0
  }

  #clientError(err: Error & { code?: string }): void {
    // ws closes the connection itself after these (1009 too big, 1002 protocol errors).
    if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') {
      this.#pending ??= {
        code: CloseCode.MESSAGE_TOO_BIG,
        initiator: 'gateway',
        reason: CloseReason.tooBig,
      }
    } else {
      this.#pending ??= { code: 1002, initiator: 'gateway', reason: err.message }
    }
  }

  #clientClose(code: number, reason: Buffer): void {
    this.closed = this.#pending ?? { code, initiator: 'client', reason: reason.toString() }
    // end(), not destroy(): bytes the client sent last (an MQTT DISCONNECT) must still reach
    // the broker. A broker that keeps its side open is cut after a short wait.
    this.#upstream.end()
    setTimeout(() => this.#upstream.destroy(), UPSTREAM_END_TIMEOUT_MS).unref()
    this.#finishIfBothClosed()
  }

  #brokerEnd(): void {
    this.close(CloseCode.NORMAL, CloseReason.brokerClosed, 'broker')
  }

  #brokerError(err: NodeJS.ErrnoException): void {
    const code = err.code ?? 'error'
    this.#options.log.warn({ conn: this.id, err: err.message }, 'broker connection error')
    this.close(CloseCode.INTERNAL_ERROR, CloseReason.upstreamError(code), 'broker')
  }

  #brokerClose(): void {
    // A socket destroyed without 'end' or 'error' (e.g. by the timer above) still closes the
    // client side.
    if (this.closed === undefined) {
      this.close(CloseCode.INTERNAL_ERROR, CloseReason.upstreamError('closed'), 'broker')
    }
    this.#finishIfBothClosed()
  }

  #finishIfBothClosed(): void {
    if (this.closed === undefined || !this.#upstream.destroyed) return
    if (this.#finished) return
    this.#finished = true
    this.#options.log.info(
      {
        conn: this.id,
        remote: this.remoteAddress,
        protocol: this.protocol,
        broker: this.broker,
        bytesToBroker: this.bytesToBroker,
        bytesToClient: this.bytesToClient,
        framesToBroker: this.framesToBroker,
        framesToClient: this.framesToClient,
        durationMs: Date.now() - this.openedAt,
        code: this.closed.code,
        initiator: this.closed.initiator,
        reason: this.closed.reason,
      },
      'connection closed',
    )
    this.#options.onClose(this)
    for (const resolve of this.#closeWaiters ?? []) resolve()
    this.#closeWaiters = undefined
  }
}

/** A verified client certificate's CN when there is one, else the client's IP address. */
export function clientIdentityOf(tls: ConnectionTls | undefined, clientAddress: string): string {
  const cn = tls?.clientCert?.subject
  return cn !== undefined && cn !== '' ? cn : clientAddress
}

function ownerOf(emitter: WebSocket | Socket): Connection {
  return (emitter as unknown as Owned)[OWNER]
}

// limits.acceptRate: new TCP connections per second one listener accepts. Past it a connection
// is closed as it is accepted, before its TLS handshake or HTTP request: during a reconnect
// storm that is the cheapest answer the gateway has (no TLS handshake paid for a client that
// would be refused anyway), and clients back off and retry on their own.
//
// A storm would write one log line per socket; the gate writes at most one line a second, with
// how many it dropped, and counts each one (handshake_rejections_total{reason="accept_rate"}).
import type { Server, Socket } from 'node:net'
import { secondBucket, type TokenBucket } from '../bridge/rate.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { peerAddress } from './client-address.js'

const SUMMARY_EVERY_MS = 1_000
/** Client addresses a summary line names (the first ones dropped since the last line). */
const SAMPLE_SIZE = 10

export interface AcceptGateOptions {
  /** limits.acceptRate; above 0. */
  rate: number
  listener: 'ws' | 'wss' | 'mqtts'
  log: Logger
  metrics: Metrics
}

type ConnectionListener = (this: Server, socket: Socket) => void

export class AcceptGate {
  readonly #options: AcceptGateOptions
  readonly #bucket: TokenBucket
  /** Dropped since the last summary line. */
  #dropped = 0
  #sample: string[] = []
  #summaryTimer: NodeJS.Timeout | undefined
  /** Dropped since start, for tests and the closing line. */
  droppedTotal = 0

  constructor(options: AcceptGateOptions) {
    this.#options = options
    this.#bucket = secondBucket(options.rate)
  }

  /**
   * Puts the gate in front of every 'connection' listener `server` has now (install it last, so
   * a PROXY header is not even read from a connection that is dropped).
   */
  install(server: Server): void {
    const listeners = server.listeners('connection') as ConnectionListener[]
    server.removeAllListeners('connection')
    server.on('connection', (socket: Socket) => {
      if (this.#bucket.take() > 0) {
        this.#drop(socket)
        return
      }
      for (const listener of listeners) listener.call(server, socket)
    })
  }

  /** Writes the last summary line now; the listener is closing. */
  close(): void {
    clearTimeout(this.#summaryTimer)
    this.#summaryTimer = undefined
    this.#summarize()
  }

  #drop(socket: Socket): void {
    if (this.#sample.length < SAMPLE_SIZE) this.#sample.push(peerAddress(socket))
    socket.destroy()
    this.#dropped++
    this.droppedTotal++
    this.#options.metrics.handshakeRejected('accept_rate')
    if (this.#summaryTimer !== undefined) return
    this.#summaryTimer = setTimeout(() => {
      this.#summaryTimer = undefined
      this.#summarize()
    }, SUMMARY_EVERY_MS)
    this.#summaryTimer.unref()
  }

  #summarize(): void {
    if (this.#dropped === 0) return
    this.#options.log.warn(
      {
        listener: this.#options.listener,
        dropped: this.#dropped,
        acceptRate: this.#options.rate,
        reason: 'accept_rate',
        clients: this.#sample,
      },
      'connections closed at accept: over limits.acceptRate',
    )
    this.#dropped = 0
    this.#sample = []
  }
}

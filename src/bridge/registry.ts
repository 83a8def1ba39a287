// The live connections of one gateway, from every listener: for shutdown, capacity checks, the
// ping sweep, the metrics and the admin /connections view. Pings are driven by two timers for
// all connections together rather than one timer per connection, which keeps an idle
// connection small.
import type { Logger } from '../log.js'
import { CloseCode, CloseReason } from './close-codes.js'
import type { Connection } from './connection.js'

export interface PingPolicy {
  /** 0 disables pings. */
  interval: number
  timeout: number
}

export class ConnectionRegistry {
  readonly #connections = new Map<string, Connection>()
  /** The same connections by listener, for per-listener capacity and metrics. */
  readonly #byListener = new Map<string, Set<Connection>>()
  #pingTimer: NodeJS.Timeout | undefined
  /** Inspected connections whose CONNECT has not been read yet (mqtt.connectTimeout). */
  readonly #awaitingConnect = new Set<Connection>()
  #connectTimer: NodeJS.Timeout | undefined
  #pongTimer: NodeJS.Timeout | undefined

  get size(): number {
    return this.#connections.size
  }

  /** Open connections accepted by `listener`. */
  sizeOf(listener: string): number {
    return this.#byListener.get(listener)?.size ?? 0
  }

  add(connection: Connection): void {
    this.#connections.set(connection.id, connection)
    let set = this.#byListener.get(connection.listener)
    if (set === undefined) {
      set = new Set()
      this.#byListener.set(connection.listener, set)
    }
    set.add(connection)
    if (connection.awaitingConnect) this.#awaitingConnect.add(connection)
  }

  delete(connection: Connection): void {
    this.#connections.delete(connection.id)
    this.#byListener.get(connection.listener)?.delete(connection)
    this.#awaitingConnect.delete(connection)
  }

  get(id: string): Connection | undefined {
    return this.#connections.get(id)
  }

  values(): IterableIterator<Connection> {
    return this.#connections.values()
  }

  valuesOf(listener: string): Iterable<Connection> {
    return this.#byListener.get(listener) ?? []
  }

  /**
   * Closes the connections of `listener` with 1001 (mqtts: close_notify and FIN), waits up to
   * `grace` ms for them to finish, then cuts the rest. Resolves once every one has closed.
   */
  async closeAll(listener: string, grace: number, log: Logger): Promise<void> {
    const open = [...this.valuesOf(listener)]
    if (open.length === 0) return
    log.info({ listener, open: open.length, graceMs: grace }, 'closing open connections')
    const allClosed = Promise.all(open.map((c) => c.whenClosed()))
    for (const connection of open) {
      connection.close(CloseCode.GOING_AWAY, CloseReason.shuttingDown, 'gateway')
    }
    let graceTimer: NodeJS.Timeout | undefined
    const graceOver = new Promise<'timeout'>((resolve) => {
      graceTimer = setTimeout(() => resolve('timeout'), grace)
    })
    if ((await Promise.race([allClosed, graceOver])) === 'timeout') {
      const left = [...this.valuesOf(listener)]
      log.warn(
        { listener, open: left.length },
        'shutdown.grace over; cutting remaining connections',
      )
      for (const connection of left) connection.terminate('shutdown grace over')
      await allClosed
    }
    clearTimeout(graceTimer)
  }

  startPings({ interval, timeout }: PingPolicy): void {
    if (interval <= 0 || this.#pingTimer !== undefined) return
    this.#pingTimer = setInterval(() => {
      const now = Date.now()
      for (const connection of this.#connections.values()) connection.ping(now, timeout)
      clearTimeout(this.#pongTimer)
      this.#pongTimer = setTimeout(() => {
        this.#expireSilent(timeout)
      }, timeout)
      this.#pongTimer.unref()
    }, interval)
    this.#pingTimer.unref()
  }

  stopPings(): void {
    clearInterval(this.#pingTimer)
    clearTimeout(this.#pongTimer)
    this.#pingTimer = undefined
  }

  /**
   * One timer for every listener's connections: a connection that has not sent a complete
   * CONNECT within `timeout` ms of opening is closed. It runs every quarter of the timeout (at
   * most every second), so a client gets between `timeout` and about 1.25 times it. Only the
   * connections still waiting are visited.
   */
  startConnectSweep(timeout: number): void {
    if (timeout <= 0 || this.#connectTimer !== undefined) return
    const every = Math.max(10, Math.min(1_000, Math.floor(timeout / 4)))
    this.#connectTimer = setInterval(() => {
      this.#sweepConnects(timeout)
    }, every)
    this.#connectTimer.unref()
  }

  stopConnectSweep(): void {
    clearInterval(this.#connectTimer)
    this.#connectTimer = undefined
  }

  #sweepConnects(timeout: number): void {
    const now = Date.now()
    for (const connection of this.#awaitingConnect) {
      if (!connection.awaitingConnect) this.#awaitingConnect.delete(connection)
      else if (now - connection.openedAt >= timeout) {
        this.#awaitingConnect.delete(connection)
        connection.connectTimedOut(timeout)
      }
    }
  }

  #expireSilent(timeout: number): void {
    const now = Date.now()
    for (const connection of this.#connections.values()) {
      if (connection.pongOverdue(now, timeout)) connection.terminateForPingTimeout()
    }
  }
}

// The live connections of one gateway, from every listener: for shutdown, capacity checks, the
// ping sweep, the metrics and the admin /connections view. Pings are driven by two timers for
// all connections together rather than one timer per connection, which keeps an idle
// connection small.
import type { Logger } from '../log.js'
import type { Connection } from './connection.js'
import { Goodbyes, type Goodbye } from './goodbyes.js'

export interface PingPolicy {
  /** 0 disables pings. */
  interval: number
  timeout: number
}

/** How a listener's connections are closed when the gateway stops (shutdown.*). */
export interface ShutdownPolicy {
  /** From the start of the shutdown, how long until the connections still open are cut. */
  grace: number
  /** The closes go out evenly over this long from the start (0: all at once); below grace. */
  spread?: number
  /** What each client is told; default 0x8B Server shutting down, then 1001. */
  goodbye?: Goodbye
}

const SHUTTING_DOWN = Goodbyes.shuttingDown('')

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
   * Says the shutdown goodbye to the connections of `listener` (MQTT 5: DISCONNECT; then 1001,
   * mqtts: close_notify and FIN), spread evenly over `spread` ms when set, so the clients do
   * not all reconnect elsewhere in the same moment. `grace` counts from the start, spread
   * included: what is still open then is cut. Resolves once every one has closed.
   */
  async closeAll(
    listener: string,
    { grace, spread = 0, goodbye = SHUTTING_DOWN }: ShutdownPolicy,
    log: Logger,
  ): Promise<void> {
    const open = [...this.valuesOf(listener)]
    if (open.length === 0) return
    log.info(
      { listener, open: open.length, graceMs: grace, spreadMs: spread },
      'closing open connections',
    )
    const allClosed = Promise.all(open.map((c) => c.whenClosed()))
    const stopSpread = spreadOver(open, spread, (connection) => connection.goodbye(goodbye))
    let graceTimer: NodeJS.Timeout | undefined
    const graceOver = new Promise<'timeout'>((resolve) => {
      graceTimer = setTimeout(() => resolve('timeout'), grace)
    })
    if ((await Promise.race([allClosed, graceOver])) === 'timeout') {
      stopSpread()
      const left = [...this.valuesOf(listener)]
      log.warn(
        { listener, open: left.length },
        'shutdown.grace over; cutting remaining connections',
      )
      for (const connection of left) connection.terminate('shutdown grace over')
      await allClosed
    }
    stopSpread()
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

/**
 * Calls `each` on item i of `items` at i * spread / items.length ms from now (the first at
 * once, the last a step before `spread`), with one timer at a time rather than one per item.
 * A late timer catches up on every item whose time has come. Returns a function that stops it.
 */
function spreadOver<T>(items: readonly T[], spread: number, each: (item: T) => void): () => void {
  const start = performance.now()
  const step = spread / items.length
  let next = 0
  let timer: NodeJS.Timeout | undefined
  const run = (): void => {
    const elapsed = performance.now() - start
    while (next < items.length && next * step <= elapsed) each(items[next++] as T)
    if (next < items.length) timer = setTimeout(run, Math.ceil(next * step - elapsed))
  }
  run()
  return () => clearTimeout(timer)
}

// The live connections of one gateway: for shutdown, capacity checks, the ping sweep and (later)
// the admin /connections view. Pings are driven by two timers for all connections together
// rather than one timer per connection, which keeps an idle connection small.
import type { Connection } from './bridge.js'

export interface PingPolicy {
  /** 0 disables pings. */
  interval: number
  timeout: number
}

export class ConnectionRegistry {
  readonly #connections = new Map<string, Connection>()
  #pingTimer: NodeJS.Timeout | undefined
  #pongTimer: NodeJS.Timeout | undefined

  get size(): number {
    return this.#connections.size
  }

  add(connection: Connection): void {
    this.#connections.set(connection.id, connection)
  }

  delete(connection: Connection): void {
    this.#connections.delete(connection.id)
  }

  get(id: string): Connection | undefined {
    return this.#connections.get(id)
  }

  values(): IterableIterator<Connection> {
    return this.#connections.values()
  }

  startPings({ interval, timeout }: PingPolicy): void {
    if (interval <= 0) return
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
  }

  #expireSilent(timeout: number): void {
    const now = Date.now()
    for (const connection of this.#connections.values()) {
      if (connection.pongOverdue(now, timeout)) connection.terminateForPingTimeout()
    }
  }
}

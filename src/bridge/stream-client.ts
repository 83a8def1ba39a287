// A bare byte stream as the client side of a connection: the TLS socket of an mqtts client.
// There is no framing and no close code; MQTT's own keepalive takes the place of pings.
import type { Socket } from 'node:net'
import type { ClientEvents, ClientSide } from './client-side.js'
import { HALF_OPEN_TIMEOUT_MS } from './connection.js'

const OWNER = Symbol('drawbridge.stream-client')

interface Owned {
  [OWNER]: StreamClient
}

export class StreamClient implements ClientSide {
  readonly framed = false
  readonly #socket: Socket
  #events: ClientEvents | undefined
  /** The first error the socket reported, for the close summary. */
  #error: string | undefined
  #halfOpenTimer: NodeJS.Timeout | undefined

  constructor(socket: Socket) {
    this.#socket = socket
  }

  get bufferedAmount(): number {
    return this.#socket.writableLength
  }

  bind(events: ClientEvents): void {
    this.#events = events
    const socket = this.#socket
    ;(socket as unknown as Owned)[OWNER] = this
    socket.on('data', StreamClient.#onData)
    socket.on('error', StreamClient.#onError)
    socket.on('close', StreamClient.#onClose)
    // The listener paused the socket while it connected the broker.
    socket.resume()
  }

  send(chunk: Buffer, onWritten?: (err?: Error | null) => void): void {
    this.#socket.write(chunk, onWritten)
  }

  pause(): void {
    this.#socket.pause()
  }

  resume(): void {
    this.#socket.resume()
  }

  // end() writes what is queued first, then TLS close_notify and FIN; a client that keeps its
  // side open after that is cut.
  close(): void {
    if (this.#halfOpenTimer !== undefined) return
    this.#socket.end()
    this.#halfOpenTimer = setTimeout(() => this.#socket.destroy(), HALF_OPEN_TIMEOUT_MS)
    this.#halfOpenTimer.unref()
  }

  terminate(): void {
    this.#socket.destroy()
  }

  ping(): boolean {
    return false
  }

  // bind() sets #events before any listener can run.
  get #to(): ClientEvents {
    return this.#events as ClientEvents
  }

  static #onData(this: Socket, chunk: Buffer): void {
    ownerOf(this).#to.clientData(chunk)
  }

  static #onError(this: Socket, err: NodeJS.ErrnoException): void {
    const client = ownerOf(this)
    client.#error ??= `client: ${err.code ?? err.message}`
  }

  static #onClose(this: Socket): void {
    const client = ownerOf(this)
    clearTimeout(client.#halfOpenTimer)
    client.#to.clientClosed(undefined, client.#error ?? 'closed')
  }
}

function ownerOf(socket: Socket): StreamClient {
  return (socket as unknown as Owned)[OWNER]
}

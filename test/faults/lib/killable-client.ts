// A killable WebSocket client on a bare TCP socket, for cases that must stop at an exact point
// of the exchange (half a request, the 101 read and nothing sent, half a frame) and then vanish
// the way a real client does: a FIN (destroy), a RST (resetAndDestroy) or a half-close (end).
// Frames are written and read with lib/rawws.ts, the fault tables' codec.
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { parseResponse, upgradeRequest, type RawResponse } from '../../helpers/raw.js'
import { frame, Opcode, parseServerFrame } from './rawws.js'

export type Kill = 'destroy' | 'reset' | 'end'

/** socket.resetAndDestroy() (a RST) exists from Node 16.17/18.3; where it does not, no resets. */
export const CAN_RESET = typeof net.Socket.prototype.resetAndDestroy === 'function'

/** The bytes of a well-formed upgrade request for the gateway's /mqtt. */
export function upgradeBytes(): Buffer {
  const key = randomBytes(16).toString('base64')
  return Buffer.from(
    `${upgradeRequest('/mqtt', { 'Sec-WebSocket-Key': key }).join('\r\n')}\r\n\r\n`,
    'latin1',
  )
}

/** A masked client frame (RFC 6455 5.2); opcode 2 is binary, 8 is close. */
export function clientFrame(payload: Buffer, opcode: number = Opcode.BINARY): Buffer {
  return frame({ opcode, payload })
}

export class RawWsClient {
  readonly socket: net.Socket
  /** Resolves when the socket has closed, whoever closed it. */
  readonly closed: Promise<void>
  /** Every byte received, response head included. */
  received = Buffer.alloc(0)
  head: RawResponse | undefined
  /** The MQTT bytes of the binary frames received after the 101. */
  mqtt = Buffer.alloc(0)
  /** The code of a close frame received, if one was. */
  closeCode: number | undefined
  closeReason = ''
  closedAt: number | undefined
  connectedAt: number | undefined
  /** The client's port, as the gateway's log lines name it (127.0.0.1:PORT). */
  localPort = 0
  error: string | undefined
  readonly openedAt = Date.now()
  #frames = Buffer.alloc(0)
  readonly #wakers = new Set<() => void>()

  constructor(port: number) {
    this.socket = net.connect(port, '127.0.0.1')
    this.socket.on('error', (err: NodeJS.ErrnoException) => {
      this.error = err.code ?? err.message
    })
    this.socket.once('connect', () => {
      this.connectedAt = Date.now()
      this.localPort = this.socket.localPort ?? 0
      this.#wake()
    })
    this.socket.on('data', (chunk: Buffer) => this.#onData(chunk))
    this.closed = new Promise((resolve) => {
      this.socket.once('close', () => {
        this.closedAt = Date.now()
        this.#wake()
        resolve()
      })
    })
  }

  get isClosed(): boolean {
    return this.closedAt !== undefined
  }

  /** Resolves once the TCP connect completed; rejects if the socket closed before. */
  connected(): Promise<void> {
    return this.until(() => this.connectedAt !== undefined)
  }

  /** Resolves with the response head (status line and headers). */
  async response(): Promise<RawResponse> {
    await this.until(() => this.head !== undefined)
    return this.head as RawResponse
  }

  /** Resolves once a CONNACK (0x20) is the first MQTT packet received. */
  connack(): Promise<void> {
    return this.until(() => this.mqtt.length >= 4 && this.mqtt[0] === 0x20)
  }

  write(bytes: Buffer | string): void {
    this.socket.write(bytes)
  }

  kill(how: Kill): void {
    if (how === 'reset' && CAN_RESET) this.socket.resetAndDestroy()
    else if (how === 'end') this.socket.end()
    else this.socket.destroy()
  }

  /** Resolves when `check` holds; rejects if the socket closes first. */
  until(check: () => boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      const test = (): void => {
        if (check()) {
          this.#wakers.delete(test)
          resolve()
        } else if (this.isClosed) {
          this.#wakers.delete(test)
          reject(
            new Error(
              `socket closed first (${this.error ?? 'no error'}; got ${JSON.stringify(this.received.toString('latin1').slice(0, 80))})`,
            ),
          )
        }
      }
      this.#wakers.add(test)
      test()
    })
  }

  #wake(): void {
    for (const wake of [...this.#wakers]) wake()
  }

  #onData(chunk: Buffer): void {
    this.received = Buffer.concat([this.received, chunk])
    if (this.head === undefined) {
      const text = this.received.toString('latin1')
      const end = text.indexOf('\r\n\r\n')
      if (end !== -1) {
        this.head = parseResponse(text)
        if (this.head.status === 101) this.#frames = this.received.subarray(end + 4)
      }
    } else if (this.head.status === 101) {
      this.#frames = Buffer.concat([this.#frames, chunk])
    }
    this.#parseFrames()
    this.#wake()
  }

  #parseFrames(): void {
    for (;;) {
      const parsed = parseServerFrame(this.#frames)
      if (parsed === undefined) return
      this.#frames = this.#frames.subarray(parsed.size)
      const { opcode, payload } = parsed.frame
      if (opcode === Opcode.BINARY || opcode === Opcode.CONTINUATION)
        this.mqtt = Buffer.concat([this.mqtt, payload])
      if (opcode === Opcode.CLOSE) {
        this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005
        this.closeReason = payload.subarray(2).toString()
      }
    }
  }
}

// A WebSocket client spoken by hand over a plain TCP socket, for the fault tables: the bytes of
// the upgrade request and of every frame are the test's own (malformed ones included), and what
// the gateway answers is read back byte for byte (status line and headers, then its frames).
// No library on the client side would send these requests or frames.
import { createHash } from 'node:crypto'
import net from 'node:net'
import type { Teardown } from '../../helpers/broker.js'
import { parseResponse, type RawResponse } from '../../helpers/raw.js'

/** RFC 6455 section 1.3. */
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

/** The Sec-WebSocket-Accept a server must answer `key` with (RFC 6455 section 4.2.2). */
export function acceptFor(key: string): string {
  return createHash('sha1')
    .update(key + WS_GUID)
    .digest('base64')
}

export const Opcode = {
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa,
} as const

export interface FrameSpec {
  opcode: number
  payload?: Buffer
  /** Default true. */
  fin?: boolean
  /** RSV1..RSV3 as a 3-bit number (4 = RSV1, 2 = RSV2, 1 = RSV3); default 0. */
  rsv?: number
  /** Default true: every client frame must be masked (RFC 6455 section 5.3). */
  mask?: boolean
  /**
   * The length written in the header instead of the payload's own, always in the 64-bit form
   * (for lengths no payload is sent for).
   */
  declaredLength64?: bigint
}

/** The bytes of one client frame (RFC 6455 section 5.2), masked with a fixed key. */
export function frame(spec: FrameSpec): Buffer {
  const payload = spec.payload ?? Buffer.alloc(0)
  const masked = spec.mask ?? true
  const first = ((spec.fin ?? true) ? 0x80 : 0) | ((spec.rsv ?? 0) << 4) | (spec.opcode & 0x0f)
  const maskBit = masked ? 0x80 : 0
  let header: Buffer
  if (spec.declaredLength64 !== undefined) {
    header = Buffer.alloc(10)
    header[1] = maskBit | 127
    header.writeBigUInt64BE(spec.declaredLength64, 2)
  } else if (payload.length < 126) {
    header = Buffer.alloc(2)
    header[1] = maskBit | payload.length
  } else if (payload.length < 0x10000) {
    header = Buffer.alloc(4)
    header[1] = maskBit | 126
    header.writeUInt16BE(payload.length, 2)
  } else {
    header = Buffer.alloc(10)
    header[1] = maskBit | 127
    header.writeBigUInt64BE(BigInt(payload.length), 2)
  }
  header[0] = first
  if (!masked) return Buffer.concat([header, payload])
  const key = Buffer.from([0x37, 0xfa, 0x21, 0x3d])
  const body = Buffer.allocUnsafe(payload.length)
  for (let i = 0; i < payload.length; i++) body[i] = (payload[i] ?? 0) ^ (key[i % 4] ?? 0)
  return Buffer.concat([header, key, body])
}

/** A close frame's payload: the code, then the reason's bytes. */
export function closePayload(code: number, reason: Buffer | string = ''): Buffer {
  const out = Buffer.alloc(2)
  out.writeUInt16BE(code, 0)
  return Buffer.concat([out, typeof reason === 'string' ? Buffer.from(reason) : reason])
}

/** A frame from the server. */
export interface ServerFrame {
  fin: boolean
  rsv: number
  opcode: number
  masked: boolean
  payload: Buffer
}

/** The close code of a close frame (undefined for an empty one), and its reason. */
export function closeOf(f: ServerFrame): { code: number | undefined; reason: string } {
  if (f.payload.length < 2) return { code: undefined, reason: '' }
  return { code: f.payload.readUInt16BE(0), reason: f.payload.subarray(2).toString('utf8') }
}

/**
 * One raw TCP connection to the gateway: everything it receives is kept, the HTTP response head
 * parsed once complete and, after a 101, the server's frames. Every wait is bounded.
 */
export class RawPeer {
  readonly socket: net.Socket
  /** The response head, once its blank line has arrived. */
  head: RawResponse | undefined
  /** Bytes after the head: the body of a refusal, or the frames of an accepted upgrade. */
  readonly frames: ServerFrame[] = []
  /** The server ended its side (FIN), or the socket was reset. */
  ended = false
  closed = false
  /** Everything received, for error messages. */
  #received = Buffer.alloc(0)
  #pending = Buffer.alloc(0)
  #body = Buffer.alloc(0)
  readonly #waiters = new Set<() => void>()

  private constructor(socket: net.Socket) {
    this.socket = socket
    socket.on('data', (chunk: Buffer) => {
      this.#received = Buffer.concat([this.#received, chunk])
      this.#pending = Buffer.concat([this.#pending, chunk])
      this.#parse()
      this.#wake()
    })
    // A reset after the server's answer is one of the ways a refused connection ends.
    socket.on('error', () => undefined)
    socket.on('end', () => {
      this.ended = true
      this.#wake()
    })
    socket.on('close', () => {
      this.ended = true
      this.closed = true
      this.#wake()
    })
  }

  /** Connects to 127.0.0.1:`port`; the teardown destroys the socket whatever happened. */
  static async connect(t: Teardown, port: number): Promise<RawPeer> {
    const socket = net.connect(port, '127.0.0.1')
    const peer = new RawPeer(socket)
    t.teardown(() => socket.destroy())
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', reject)
    })
    // Read now: a closed socket no longer knows its port.
    peer.remote = `${socket.localAddress ?? ''}:${socket.localPort ?? 0}`
    return peer
  }

  /** "127.0.0.1:PORT" as the gateway's log lines name this client (`remote`), once connected. */
  remote = ''

  /** The body bytes of a refusal received so far. */
  get body(): string {
    return this.#body.toString('utf8')
  }

  write(data: Buffer | string): void {
    if (this.socket.destroyed || !this.socket.writable) return
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data)
  }

  /**
   * The answer to the request: at once for a 101 (the connection stays open), else once its
   * whole body (Content-Length) has arrived or the server closed the connection. Status 0: it
   * closed without an answer.
   */
  async response(timeoutMs: number): Promise<RawResponse> {
    await this.#until('an HTTP response', timeoutMs, () => {
      if (this.closed || this.head?.status === 101) return true
      const length = Number(this.head?.headers['content-length'] ?? NaN)
      return this.#body.length >= length ? true : undefined
    })
    const head = this.head ?? parseResponse(this.#received.toString('latin1'))
    return { ...head, body: this.body }
  }

  /** The next server frame (from `from` on) that `match` accepts. */
  async frame(
    match: (f: ServerFrame) => boolean,
    timeoutMs: number,
    from = 0,
  ): Promise<ServerFrame> {
    return this.#until('a matching frame', timeoutMs, () => this.frames.slice(from).find(match))
  }

  /** Resolves once the connection is fully closed (both FINs, or a reset). */
  async whenClosed(timeoutMs: number): Promise<void> {
    await this.#until('the connection to close', timeoutMs, () => (this.closed ? true : undefined))
  }

  destroy(): void {
    this.socket.destroy()
  }

  #until<T>(what: string, timeoutMs: number, pick: () => T | undefined): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = pick()
        if (found === undefined) return
        this.#waiters.delete(check)
        clearTimeout(timer)
        resolve(found)
      }
      const timer = setTimeout(() => {
        this.#waiters.delete(check)
        reject(
          new Error(
            `no ${what} within ${timeoutMs} ms; received ${JSON.stringify(this.#received.toString('latin1').slice(0, 300))}`,
          ),
        )
      }, timeoutMs)
      this.#waiters.add(check)
      check()
    })
  }

  #wake(): void {
    for (const wake of this.#waiters) wake()
  }

  #parse(): void {
    if (this.head === undefined) {
      const end = this.#pending.indexOf('\r\n\r\n')
      if (end === -1) return
      this.head = parseResponse(this.#pending.subarray(0, end + 4).toString('latin1'))
      this.#pending = this.#pending.subarray(end + 4)
    }
    if (this.head.status !== 101) {
      this.#body = Buffer.concat([this.#body, this.#pending])
      this.#pending = Buffer.alloc(0)
      return
    }
    for (;;) {
      const parsed = parseServerFrame(this.#pending)
      if (parsed === undefined) return
      this.frames.push(parsed.frame)
      this.#pending = this.#pending.subarray(parsed.size)
    }
  }
}

/** The first whole server frame in `buf` and its size in bytes, or undefined: not all there. */
export function parseServerFrame(buf: Buffer): { frame: ServerFrame; size: number } | undefined {
  if (buf.length < 2) return undefined
  const b0 = buf[0] ?? 0
  const b1 = buf[1] ?? 0
  let length = b1 & 0x7f
  let offset = 2
  if (length === 126) {
    if (buf.length < 4) return undefined
    length = buf.readUInt16BE(2)
    offset = 4
  } else if (length === 127) {
    if (buf.length < 10) return undefined
    length = Number(buf.readBigUInt64BE(2))
    offset = 10
  }
  const masked = (b1 & 0x80) !== 0
  const keyLength = masked ? 4 : 0
  if (buf.length < offset + keyLength + length) return undefined
  const key = buf.subarray(offset, offset + keyLength)
  const payload = Buffer.from(buf.subarray(offset + keyLength, offset + keyLength + length))
  if (masked)
    for (let i = 0; i < payload.length; i++) payload[i] = (payload[i] ?? 0) ^ (key[i % 4] ?? 0)
  return {
    frame: { fin: (b0 & 0x80) !== 0, rsv: (b0 >> 4) & 0x07, opcode: b0 & 0x0f, masked, payload },
    size: offset + keyLength + length,
  }
}

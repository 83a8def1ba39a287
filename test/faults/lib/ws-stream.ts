// Raw MQTT 3.1.1 over a `ws` WebSocket for the fault cases: a hand-written encoder (cheap enough
// to push 10^6 QoS 1 messages from one test process), a packet reader that takes any chunking,
// and a client whose outgoing byte stream is cut into WebSocket frames at random: one MQTT
// packet split over several frames, several packets in one frame, both allowed by
// [MQTT-6.0.0-2], and now and then one WebSocket message sent as continuation frames.
import { once } from 'node:events'
import { WebSocket } from 'ws'
import type { Teardown } from '../../helpers/broker.js'
import { prng, type Prng } from './suite.js'

// ---- the encoder ---------------------------------------------------------------------------

/** The variable-length "remaining length" [MQTT-2.2.3]. */
function remainingLength(n: number): number[] {
  const bytes: number[] = []
  do {
    let digit = n % 128
    n = Math.floor(n / 128)
    if (n > 0) digit |= 0x80
    bytes.push(digit)
  } while (n > 0)
  return bytes
}

function utf8(s: string): Buffer {
  const body = Buffer.from(s, 'utf8')
  const out = Buffer.allocUnsafe(2 + body.length)
  out.writeUInt16BE(body.length, 0)
  body.copy(out, 2)
  return out
}

function packet(firstByte: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([firstByte, ...remainingLength(body.length)]), body])
}

/** CONNECT, MQTT 3.1.1, clean session; keep-alive 0 turns the broker's keep-alive timer off. */
export function connectPacket(clientId: string, keepAlive = 0): Buffer {
  const head = Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, 0, 0])
  head.writeUInt16BE(keepAlive, 8)
  return packet(0x10, Buffer.concat([head, utf8(clientId)]))
}

export function subscribePacket(packetId: number, topic: string, qos: 0 | 1 = 1): Buffer {
  const id = Buffer.allocUnsafe(2)
  id.writeUInt16BE(packetId, 0)
  return packet(0x82, Buffer.concat([id, utf8(topic), Buffer.from([qos])]))
}

/** A QoS 1 PUBLISH; `topic` is the encoded topic (utf8Topic) so a hot loop encodes it once. */
export function publishQos1(topic: Buffer, packetId: number, payload: Buffer): Buffer {
  const bodyLength = topic.length + 2 + payload.length
  const rl = remainingLength(bodyLength)
  const out = Buffer.allocUnsafe(1 + rl.length + bodyLength)
  out[0] = 0x32
  let at = 1
  for (const b of rl) out[at++] = b
  at += topic.copy(out, at)
  out.writeUInt16BE(packetId, at)
  payload.copy(out, at + 2)
  return out
}

export const utf8Topic = utf8

export function pubackPacket(packetId: number): Buffer {
  return Buffer.from([0x40, 0x02, packetId >> 8, packetId & 0xff])
}

export const DISCONNECT = Buffer.from([0xe0, 0x00])

export const PacketType = {
  CONNACK: 2,
  PUBLISH: 3,
  PUBACK: 4,
  SUBACK: 9,
} as const

/** A PUBLISH's parts; `payload` is a view into the received bytes, valid during the callback. */
export interface Publish {
  topic: string
  qos: number
  dup: boolean
  retain: boolean
  packetId: number
  payload: Buffer
}

export function parsePublish(header: number, body: Buffer): Publish {
  const topicLength = body.readUInt16BE(0)
  const topic = body.toString('utf8', 2, 2 + topicLength)
  const qos = (header >> 1) & 3
  let at = 2 + topicLength
  let packetId = 0
  if (qos > 0) {
    packetId = body.readUInt16BE(at)
    at += 2
  }
  return {
    topic,
    qos,
    dup: (header & 0x08) !== 0,
    retain: (header & 0x01) !== 0,
    packetId,
    payload: body.subarray(at),
  }
}

// ---- the reader ----------------------------------------------------------------------------

/**
 * Splits a byte stream into MQTT packets whatever its chunking. `onPacket` gets the first byte
 * of the fixed header and the body (a view, valid during the call). A malformed remaining length
 * throws.
 */
export class PacketReader {
  #buf: Buffer = Buffer.alloc(0)
  readonly #onPacket: (header: number, body: Buffer) => void

  constructor(onPacket: (header: number, body: Buffer) => void) {
    this.#onPacket = onPacket
  }

  /** Bytes of an unfinished packet held back. */
  get pending(): number {
    return this.#buf.length
  }

  push(chunk: Buffer): void {
    const buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk])
    const end = buf.length
    let pos = 0
    for (;;) {
      if (end - pos < 2) break
      let length = 0
      let multiplier = 1
      let i = pos + 1
      let complete = false
      for (let n = 0; n < 4 && i < end; n++) {
        const b = buf[i++] ?? 0
        length += (b & 0x7f) * multiplier
        multiplier *= 128
        if ((b & 0x80) === 0) {
          complete = true
          break
        }
        if (n === 3) throw new Error('malformed remaining length')
      }
      if (!complete || end - i < length) break
      this.#onPacket(buf[pos] ?? 0, buf.subarray(i, i + length))
      pos = i + length
    }
    // What stays must not alias a buffer ws may reuse.
    this.#buf = pos === end ? Buffer.alloc(0) : Buffer.from(buf.subarray(pos))
  }
}

// Sub-parts of a case draw from streams of the suite's one seeded generator (mulberry32),
// derived from the case's printed seed; re-exported for this module's users.
export { prng, type Prng }

// ---- the client ----------------------------------------------------------------------------

/** How the outgoing byte stream is cut into WebSocket frames. */
export type Framing =
  /** Each write() is one frame. */
  | { kind: 'whole' }
  /** Random cuts: tiny frames, packet-sized ones, and ones packing several packets. */
  | {
      kind: 'random'
      rng: Prng
      /** About one packet's size: frame sizes are drawn around it. */
      typical: number
      /** Share of messages sent as several continuation frames (RFC 6455 5.4). */
      fragmented?: number
    }

export interface FramingStats {
  frames: number
  /** WebSocket messages sent as continuation frames. */
  fragmentedMessages: number
  /** Packets whose bytes went out in more than one frame. */
  splitPackets: number
  /** Frames carrying bytes of more than one packet. */
  packedFrames: number
  /** Flushes that kept a packet's tail back for the next one. */
  heldTails: number
  packets: number
  bytes: number
}

export interface CloseEvent {
  code: number
  reason: string
}

export class StreamClient {
  readonly ws: WebSocket
  readonly closed: Promise<CloseEvent>
  readonly stats: FramingStats = {
    frames: 0,
    fragmentedMessages: 0,
    splitPackets: 0,
    packedFrames: 0,
    heldTails: 0,
    packets: 0,
    bytes: 0,
  }

  /** Bytes received (binary messages), for cases that look at the raw stream. */
  bytesIn = 0
  readonly #framing: Framing
  #pending: Buffer[] = []
  #pendingBytes = 0
  /** Stream offsets: how far has been handed to ws, and where each unsent packet ends. */
  #sentOffset = 0
  #writtenOffset = 0
  #packetEnds: number[] = []
  #packetHead = 0
  /** Index of the packet last counted as split, so a packet is counted once. */
  #lastSplit = -1
  /** Packets whose last byte has been handed to ws. */
  completePackets = 0

  private constructor(ws: WebSocket, framing: Framing, closed: Promise<CloseEvent>) {
    this.ws = ws
    this.#framing = framing
    this.closed = closed
  }

  /**
   * Opens a WebSocket with the mqtt subprotocol. `onData` gets every binary message as it came
   * (give it a PacketReader's push to read packets).
   */
  static async open(
    t: Teardown,
    url: string,
    framing: Framing,
    onData: (data: Buffer) => void,
  ): Promise<StreamClient> {
    const ws = new WebSocket(url, ['mqtt'], { perMessageDeflate: false, handshakeTimeout: 10_000 })
    t.teardown(() => ws.terminate())
    // A refused upgrade's status is in ws's error message ("Unexpected server response: 502").
    let failure = ''
    ws.on('error', (err) => (failure ||= err.message))
    const closed = new Promise<CloseEvent>((resolve) => {
      ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))
    })
    const client = new StreamClient(ws, framing, closed)
    ws.on('message', (data: Buffer) => {
      client.bytesIn += data.length
      onData(data)
    })
    // A refused upgrade ends in 'error' and 'close', never 'open'. A connection that opens and
    // closes in one read emits both before any promise callback runs: the flag tells them apart.
    const seen = { opened: false }
    ws.once('open', () => (seen.opened = true))
    await Promise.race([once(ws, 'open').catch(() => undefined), closed])
    if (!seen.opened) {
      const { code, reason } = await closed
      throw new Error(`WebSocket did not open: ${failure || `${code} ${reason}`}`)
    }
    return client
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN
  }

  /** Queues one MQTT packet (or any bytes counted as one); flush() sends. */
  write(bytes: Buffer): void {
    this.#pending.push(bytes)
    this.#pendingBytes += bytes.length
    this.#writtenOffset += bytes.length
    this.#packetEnds.push(this.#writtenOffset)
    this.stats.packets++
  }

  /** Bytes queued but not handed to ws. */
  get unsent(): number {
    return this.#pendingBytes
  }

  /**
   * Sends what is queued, cut into frames. With `mayHoldTail` the last piece may stay queued
   * for the next flush: only when the caller knows another flush is coming.
   */
  flush(mayHoldTail = false): void {
    if (this.#pendingBytes === 0 || !this.open) return
    const data =
      this.#pending.length === 1 ? (this.#pending[0] as Buffer) : Buffer.concat(this.#pending)
    this.#pending = []
    this.#pendingBytes = 0
    const framing = this.#framing
    if (framing.kind === 'whole') {
      this.#sendFrame(data, framing)
      return
    }
    const rng = framing.rng
    let at = 0
    while (at < data.length) {
      const size = frameSize(rng, framing.typical)
      const piece = data.subarray(at, Math.min(data.length, at + size))
      const last = at + piece.length >= data.length
      if (last && mayHoldTail && piece.length < data.length && rng.next() < 0.5) {
        this.#pending = [Buffer.from(piece)]
        this.#pendingBytes = piece.length
        this.stats.heldTails++
        return
      }
      this.#sendFrame(piece, framing)
      at += piece.length
    }
  }

  /** Sends a close frame and resolves with the close the peer answered (or sent first). */
  async close(code = 1000, reason = ''): Promise<CloseEvent> {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(code, reason)
    return this.closed
  }

  #sendFrame(piece: Buffer, framing: Framing): void {
    this.#account(piece.length)
    if (
      framing.kind === 'random' &&
      piece.length >= 2 &&
      framing.rng.next() < (framing.fragmented ?? 0)
    ) {
      // One WebSocket message, several frames: the receiver's ws joins them before the gateway
      // sees a message.
      const cut = 1 + framing.rng.int(piece.length - 1)
      this.ws.send(piece.subarray(0, cut), { binary: true, fin: false })
      this.ws.send(piece.subarray(cut), { binary: true, fin: true })
      this.stats.fragmentedMessages++
      this.stats.frames += 2
    } else {
      this.ws.send(piece, { binary: true })
      this.stats.frames++
    }
    this.stats.bytes += piece.length
  }

  /** Which packets a frame of `length` bytes at the current offset touches. */
  #account(length: number): void {
    const start = this.#sentOffset
    const end = start + length
    this.#sentOffset = end
    const ends = this.#packetEnds
    let first = this.#packetHead
    // The packet holding the frame's first byte is the first whose end is past `start`.
    while (first < ends.length && (ends[first] ?? 0) <= start) first++
    let last = first
    while (last < ends.length && (ends[last] ?? 0) < end) last++
    if (last > first) this.stats.packedFrames++
    // A frame that ends inside a packet splits it (the next frame starts inside it).
    if (last < ends.length && (ends[last] ?? 0) > end && last !== this.#lastSplit) {
      this.stats.splitPackets++
      this.#lastSplit = last
    }
    // Packets that ended inside this frame are done.
    let head = this.#packetHead
    while (head < ends.length && (ends[head] ?? 0) <= end) head++
    this.completePackets += head - this.#packetHead
    this.#packetHead = head
    if (head > 4096) {
      this.#packetEnds = ends.slice(head)
      this.#lastSplit -= head
      this.#packetHead = 0
    }
  }
}

/** Tiny frames, packet-sized ones and ones packing several packets, in about equal shares. */
function frameSize(rng: Prng, typical: number): number {
  const roll = rng.next()
  if (roll < 0.25) return 1 + rng.int(3)
  if (roll < 0.6) return 1 + rng.int(typical)
  return typical + rng.int(typical * 8)
}

// A streaming MQTT framer for one direction of one connection: it finds the packet boundaries
// in a byte stream cut anywhere (a WebSocket frame may carry part of a packet or several
// [MQTT-6.0.0-2]), judges each packet's fixed header against the spec (packet.ts), reads the
// client's CONNECT and the broker's CONNACK (connect.ts), and says how much of each chunk is
// safe to forward: everything up to the first packet that must not reach the other side.
//
// It is a state machine over bytes, not a parser. No byte of a packet is forwarded before its
// fixed header (2 to 5 bytes) is complete and judged, which is what lets a caller refuse a
// packet by its type or size with nothing of it sent; a header may straddle two chunks, and
// then its first bytes are held back until a later push judges it. They are held as the
// numbers read from them (type, flags, the Remaining Length and how many bytes encoded it),
// not as bytes: those numbers give the bytes back exactly, so a framer owns no buffer. Past
// the header it only counts the remaining length down, whatever the chunking; the payload is
// never copied, buffered or looked at. The exceptions are the CONNECT (read whole before any
// of it is forwarded: a bad field anywhere in it must not reach the broker; copied only when
// its body spans chunks, and at most maxConnectSize bytes) and the CONNACK's first two bytes.
//
// Topic reading (the `topics` option, client side, for auth permissions) adds two more: a
// PUBLISH is held until its topic has been read (copied only when it spans chunks: at most
// 65537 bytes with its length), and a SUBSCRIBE is read whole like the CONNECT (copied only
// when it spans chunks, at most maxSubscribeSize bytes); mqttPublish and mqttSubscribe say
// whether the packet goes on, before any byte of it is released. Without the option none of
// this runs and nothing more is allocated: the per-packet cost below is unchanged but for one
// test of the option.
//
// Cost per packet: the first byte is checked against a bit mask of the types accepted at that
// point and, for any type but PUBLISH, a table of fixed flags (the full rules run only for
// what the mask leaves out, i.e. errors), the 1-4 Remaining Length bytes are decoded in one
// loop and checked against the type's bounds (packet.ts), and the body is skipped with one
// subtraction per chunk it spans; so a chunk costs O(packets that start in it), whatever its
// size. Nothing is allocated per packet, except for the CONNECT and CONNACK (once per
// connection). Per chunk: the result object, and a new buffer of the 1-6 held bytes when a
// header straddles chunks (so at most one per chunk: only a chunk's first packet can have
// begun in an earlier one).
import { MqttMalformedError, type MalformedReason } from './errors.js'
import {
  readConnack,
  readConnect,
  type ConnackInfo,
  type ConnectInfo,
  type ReadFault,
} from './connect.js'
import { decodeTopic, readSubscribeFilters } from './topics.js'
import {
  PACKET_NAMES,
  PacketType,
  badFlags,
  rulesFor,
  type LevelRules,
  type PacketTypeValue,
  type ProtocolLevel,
  type Sender,
} from './packet.js'

/**
 * The default of maxConnectSize: far above real CONNECTs (a few hundred bytes; a will payload
 * is the big one), well below the ~320 KiB that five 64 KiB fields allow.
 */
export const DEFAULT_MAX_CONNECT_SIZE = 64 * 1024

/**
 * What the framer tells its owner, synchronously, from inside push() (which a handler must not
 * call again). Methods are called on the object itself, so a Connection can implement them as
 * it does ClientEvents; each is optional.
 */
export interface FramerEvents {
  /**
   * A packet's fixed header is complete and judged sound; none of its bytes has been released
   * yet. `size` is the whole packet: fixed header plus remaining length. Return false to refuse
   * it (e.g. over a maximum size): push() then stops before it, as it does at a malformed packet
   * but with no error. A CONNECT is reported here before it is read: mqttConnect follows once
   * it has been read whole and found sound; a CONNACK's mqttConnack once its 2 bytes are.
   */
  mqttPacket?(type: PacketTypeValue, flags: number, size: number): boolean
  /** The client's CONNECT was read and is sound (client-side framer). */
  mqttConnect?(info: ConnectInfo): void
  /** The broker's CONNACK (its first two bytes) was read (broker-side framer). */
  mqttConnack?(info: ConnackInfo): void
  /**
   * Topic reading: a PUBLISH's topic name was read ('' when an MQTT 5 client publishes by Topic
   * Alias); none of the packet is released yet. Return false to refuse it: push() stops before
   * it, with no error.
   */
  mqttPublish?(topic: string): boolean
  /** Topic reading: a SUBSCRIBE was read whole; its filters in order. False refuses it. */
  mqttSubscribe?(filters: readonly string[]): boolean
  /**
   * Topic reading: the CONNECT has a will (a PUBLISH the broker makes for the client later),
   * to this topic; called right after mqttConnect. False refuses the CONNECT.
   */
  mqttWill?(topic: string): boolean
}

/** The `topics` option: read PUBLISH topics and SUBSCRIBE filters (client side). */
export interface TopicReading {
  /**
   * The largest SUBSCRIBE, in bytes with its fixed header, the framer reads before forwarding;
   * a larger one is malformed (subscribe_too_large). An owner that refuses packets over a size
   * in mqttPacket (mqtt.maxPacketSize) passes that size.
   */
  maxSubscribeSize: number
}

export interface FramerOptions {
  /** Whose bytes the framer reads: a client's start with a CONNECT, a broker's with a CONNACK. */
  from: Sender
  events?: FramerEvents
  /** The largest CONNECT, in bytes with its fixed header, the framer reads before forwarding. */
  maxConnectSize?: number
  /** Client side: read PUBLISH topics and SUBSCRIBE filters (mqttPublish, mqttSubscribe). */
  topics?: TopicReading
  /**
   * Broker side: the level the client's CONNECT named, when known at construction; else see
   * setLevel() and MqttFramer.pair(). Ignored on the client side, where the CONNECT says it.
   */
  level?: ProtocolLevel
}

export interface PairOptions {
  client?: FramerEvents
  broker?: FramerEvents
  maxConnectSize?: number
  /** The client-side framer's topic reading. */
  topics?: TopicReading
}

/** Both directions of one connection; the client one tells the broker one the CONNECT's level. */
export interface FramerPair {
  fromClient: MqttFramer
  fromBroker: MqttFramer
}

/**
 * What one push() found. The bytes safe to forward are `released` (if any) followed by the
 * chunk's first `forward` bytes; concatenated over all pushes they are the stream received, up
 * to the first packet the framer stopped at. The bytes after `forward` that are not forwarded
 * are either the start of a packet the framer holds until it is judged (it keeps its own copy,
 * and releases it from a later push) or, once stopped, the refused packet and what follows.
 *
 *     const result = framer.push(chunk)
 *     if (result.released) socket.write(result.released)
 *     if (result.forward === chunk.length) socket.write(chunk)
 *     else if (result.forward > 0) socket.write(chunk.subarray(0, result.forward))
 *     if (result.stopped) ... close, with result.error when there is one
 */
export interface FramerResult {
  /** Bytes of earlier chunks held back until now, to forward before this chunk's. */
  readonly released: Buffer | undefined
  /** How many bytes at the start of the chunk are safe to forward. */
  readonly forward: number
  /** True once the framer stopped (malformed or refused packet); it stays stopped. */
  readonly stopped: boolean
  /** Why it stopped, when a packet was malformed (undefined for a refusal). */
  readonly error: MqttMalformedError | undefined
}

// Where in a packet the next byte of the stream falls.
const START = 0 // the first byte of a packet
const LENGTH = 1 // a Remaining Length byte
const BODY = 2 // a byte to count down, past the judged header
const WHOLE_BODY = 3 // a CONNECT (or, reading topics, SUBSCRIBE) byte, copied: it spans chunks
const CONNACK_BODY = 4 // one of the CONNACK's acknowledge flags and code
const PUBLISH_TOPIC = 5 // reading topics: a byte of a PUBLISH's topic length or topic

/** What the Remaining Length byte at each position (0-3) is worth: 128 to its position. */
const DIGIT_WEIGHT = [1, 128, 128 * 128, 128 * 128 * 128] as const

export class MqttFramer {
  readonly sender: Sender
  readonly #events: FramerEvents | undefined
  readonly #maxConnectSize: number
  readonly #topics: TopicReading | undefined
  #level: ProtocolLevel | 0
  #rules: LevelRules
  /**
   * Bit n set: a packet of type n is accepted at this point of the stream without a closer
   * look (its flags aside). Only ever a subset of what #judgeFirstByte accepts: a type outside
   * it is judged in full, which finds the error (or accepts it after all).
   */
  #accepted = 0
  /** The broker-side framer to tell the CONNECT's level (MqttFramer.pair). */
  #peer: MqttFramer | undefined
  /** The CONNECT (client) or CONNACK (broker) has been read. */
  #opened = false
  #state = START
  // The current packet's fixed header, as numbers: its bytes are not copied anywhere, since
  // they can be told again from these (writeHeader) on the rare occasion a header straddles
  // two chunks and its first bytes must be released from a later push.
  #type = 0
  #flags = 0
  /** Remaining Length bytes read so far; #headerSize: the whole fixed header, once complete. */
  #lengthBytes = 0
  #headerSize = 0
  /** The Remaining Length, as decoded so far. */
  #length = 0
  /** The CONNACK's acknowledge flags, when its code is in a later chunk; else -1. */
  #connackFlags = -1
  /** Bytes of the current packet's body still to count down. */
  #left = 0
  /** Bytes of the current packet from earlier chunks, not yet released (its header, #connect). */
  #held = 0
  /** A CONNECT (or SUBSCRIBE) being gathered across chunks. */
  #whole: Buffer | undefined
  #wholeFill = 0
  // Reading topics, a PUBLISH's topic: its length's first byte and the length (-1 until read),
  // and the topic's bytes, copied only when they span chunks.
  #topicHigh = -1
  #topicLength = -1
  #topic: Buffer | undefined
  #topicFill = 0
  /** The stream offset of the chunk being pushed, and of the current packet's first byte. */
  #position = 0
  #packetStart = 0
  #stopped = false
  #error: MqttMalformedError | undefined

  constructor(options: FramerOptions) {
    const maxConnectSize = options.maxConnectSize ?? DEFAULT_MAX_CONNECT_SIZE
    if (!Number.isInteger(maxConnectSize) || maxConnectSize < 2) {
      throw new RangeError(`maxConnectSize must be an integer >= 2, got ${maxConnectSize}`)
    }
    this.sender = options.from
    this.#events = options.events
    this.#maxConnectSize = maxConnectSize
    if (options.topics !== undefined) {
      const max = options.topics.maxSubscribeSize
      if (options.from !== 'client') throw new TypeError('topics are read on the client side')
      if (!Number.isInteger(max) || max < 7) {
        throw new RangeError(`maxSubscribeSize must be an integer >= 7, got ${max}`)
      }
    }
    this.#topics = options.topics
    this.#level = options.from === 'broker' ? (options.level ?? 0) : 0
    this.#rules = rulesFor(this.#level)
    this.#updateAccepted()
  }

  /** A client-side and a broker-side framer for one connection, linked by the CONNECT's level. */
  static pair(options: PairOptions = {}): FramerPair {
    const fromBroker = new MqttFramer({
      from: 'broker',
      ...(options.broker && { events: options.broker }),
    })
    const fromClient = new MqttFramer({
      from: 'client',
      ...(options.client && { events: options.client }),
      ...(options.maxConnectSize !== undefined && { maxConnectSize: options.maxConnectSize }),
      ...(options.topics !== undefined && { topics: options.topics }),
    })
    fromClient.#peer = fromBroker
    return { fromClient, fromBroker }
  }

  /** The protocol level: the CONNECT's (client side), as told (broker side), or 0 until then. */
  get level(): ProtocolLevel | 0 {
    return this.#level
  }

  /**
   * Broker side: the level the client's CONNECT named (MQTT 5 brokers send DISCONNECT and AUTH,
   * and longer acknowledgements). Since the CONNECT is only forwarded once read, the level is
   * known before the broker can answer.
   */
  setLevel(level: ProtocolLevel): void {
    if (this.sender !== 'broker') throw new TypeError('the client-side framer reads its level')
    this.#level = level
    this.#rules = rulesFor(level)
    this.#updateAccepted()
  }

  /**
   * Bytes the framer holds of a packet not yet judged: at most 6 past the CONNECT, unless it
   * reads topics (then up to a PUBLISH's topic, or a SUBSCRIBE).
   */
  get buffered(): number {
    return this.#held
  }

  /**
   * True between packets: everything released so far ends on a packet boundary, so a caller
   * may put a packet of its own into the stream here (a DISCONNECT) without cutting one.
   */
  get atBoundary(): boolean {
    return this.#state === START && this.#held === 0
  }

  get stopped(): boolean {
    return this.#stopped
  }

  /** The malformed packet it stopped at, if that is why it stopped. */
  get error(): MqttMalformedError | undefined {
    return this.#error
  }

  /** Reads the next chunk of the stream. Events fire from inside; see FramerResult. */
  push(chunk: Buffer): FramerResult {
    if (this.#stopped) {
      return { released: undefined, forward: 0, stopped: true, error: this.#error }
    }
    const n = chunk.length
    let i = 0
    // chunk[0, safe) is judged and may be forwarded; past it lies the current packet.
    let safe = 0
    let released: Buffer | undefined
    while (i < n) {
      const state = this.#state
      if (state === BODY) {
        const available = n - i
        if (available < this.#left) {
          this.#left -= available
          i = n
        } else {
          i += this.#left
          this.#left = 0
          this.#state = START
        }
        safe = i
        continue
      }
      if (state === START) {
        const byte = chunk[i] as number // i < n
        this.#packetStart = this.#position + i
        const type = byte >> 4
        const flags = byte & 0x0f
        this.#type = type
        this.#flags = flags
        // Most packets: a type accepted here, with sound flags (a PUBLISH's are its QoS).
        if (
          ((this.#accepted >> type) & 1) === 0 ||
          (type === PacketType.PUBLISH
            ? (flags & 0x06) === 0x06
            : badFlags(type, flags, this.#rules.strictFlags) !== undefined)
        ) {
          const fault = this.#judgeFirstByte()
          if (fault !== undefined) return this.#stop(fault, released, safe)
        }
        this.#length = 0
        this.#lengthBytes = 0
        this.#state = LENGTH
        i++
        // On to the Remaining Length, in the same pass.
      }
      if (this.#state === LENGTH) {
        // As many Remaining Length bytes as this chunk holds, in one go.
        let length = this.#length
        let count = this.#lengthBytes
        let more = true
        while (i < n) {
          const byte = chunk[i++] as number // i < n
          length += (byte & 0x7f) * (DIGIT_WEIGHT[count] as number) // count < 4
          count++
          if ((byte & 0x80) === 0) {
            more = false
            break
          }
          if (count === 4) {
            return this.#stop(
              this.#malformed(
                'remaining_length',
                `the ${this.#name()} remaining length does not end within 4 bytes`,
              ),
              released,
              safe,
            )
          }
        }
        this.#length = length
        this.#lengthBytes = count
        if (more) break // the header goes on in the next chunk
        this.#headerSize = count + 1
        const fault = this.#judgeLength()
        if (fault !== undefined) return this.#stop(fault, released, safe)
        const size = this.#headerSize + length
        const events = this.#events
        if (events?.mqttPacket?.(this.#type as PacketTypeValue, this.#flags, size) === false) {
          return this.#stop(undefined, released, safe)
        }
        const type = this.#type
        if (
          type === PacketType.CONNECT ||
          (type === PacketType.SUBSCRIBE && this.#topics !== undefined)
        ) {
          if (n - i >= length) {
            // The body is all in this chunk: read it where it is.
            const end = i + length
            const wholeFault = this.#readWhole(chunk, i, end)
            if (wholeFault !== undefined)
              return this.#stop(wholeFault === false ? undefined : wholeFault, released, safe)
            released ??= this.#releaseHeld()
            i = end
            safe = i
            this.#state = START
          } else {
            const whole = Buffer.allocUnsafe(size)
            this.#writeHeader(whole, this.#headerSize)
            this.#whole = whole
            this.#wholeFill = this.#headerSize
            this.#state = WHOLE_BODY
          }
        } else if (type === PacketType.PUBLISH && this.#topics !== undefined) {
          this.#topicHigh = -1
          this.#topicLength = -1
          this.#state = PUBLISH_TOPIC
        } else if (this.#type === PacketType.CONNACK) {
          // At least 2 bytes follow: every level's minimum length for a CONNACK (packet.ts).
          this.#connackFlags = -1
          this.#state = CONNACK_BODY
        } else {
          released ??= this.#releaseHeld()
          // The body, skipped here when it ends in this chunk (most do), else counted down.
          if (n - i >= length) {
            i += length
            this.#state = START
          } else {
            this.#left = length - (n - i)
            i = n
            this.#state = BODY
          }
          safe = i
        }
        continue
      }
      if (state === WHOLE_BODY) {
        const whole = this.#whole as Buffer // set with the state
        const take = Math.min(n - i, whole.length - this.#wholeFill)
        chunk.copy(whole, this.#wholeFill, i, i + take)
        this.#wholeFill += take
        i += take
        if (this.#wholeFill < whole.length) break
        const fault = this.#readWhole(whole, this.#headerSize, whole.length)
        if (fault !== undefined)
          return this.#stop(fault === false ? undefined : fault, released, safe)
        // The copy of the earlier chunks' bytes is handed over; the framer keeps no reference.
        released = this.#held === 0 ? undefined : whole.subarray(0, this.#held)
        this.#held = 0
        this.#whole = undefined
        safe = i
        this.#state = START
        continue
      }
      if (state === PUBLISH_TOPIC) {
        if (this.#topicLength === -1) {
          // The topic's length, two bytes that may straddle chunks.
          if (this.#topicHigh === -1) {
            this.#topicHigh = chunk[i++] as number // i < n
            if (i === n) break
          }
          const topicLength = (this.#topicHigh << 8) | (chunk[i++] as number) // i < n
          this.#topicLength = topicLength
          // The topic and, at QoS 1 and 2, the packet identifier must fit [MQTT-3.3.2-1].
          const after = (this.#flags & 0x06) === 0 ? 0 : 2
          if (2 + topicLength + after > this.#length) {
            return this.#stop(
              this.#malformed(
                'publish_topic',
                `a PUBLISH topic of ${topicLength} bytes runs past its remaining length`,
              ),
              released,
              safe,
            )
          }
          this.#topic = undefined
          this.#topicFill = 0
        }
        const topicLength = this.#topicLength
        let topic: string | ReadFault
        if (this.#topic === undefined && n - i >= topicLength) {
          // The topic is all in this chunk (nearly always): read it where it is.
          topic = decodeTopic(chunk, i, i + topicLength)
          i += topicLength
        } else {
          const copy = (this.#topic ??= Buffer.allocUnsafe(topicLength))
          const take = Math.min(n - i, topicLength - this.#topicFill)
          chunk.copy(copy, this.#topicFill, i, i + take)
          this.#topicFill += take
          i += take
          if (this.#topicFill < topicLength) break
          topic = decodeTopic(copy, 0, topicLength)
        }
        if (typeof topic !== 'string') {
          return this.#stop(this.#malformed(topic.reason, topic.detail), released, safe)
        }
        if (this.#events?.mqttPublish?.(topic) === false) {
          return this.#stop(undefined, released, safe)
        }
        released ??= this.#releaseHeld()
        this.#topic = undefined
        safe = i
        this.#left = this.#length - 2 - topicLength
        this.#state = this.#left === 0 ? START : BODY
        continue
      }
      // CONNACK_BODY: the CONNACK's acknowledge flags and code.
      let info: ConnackInfo | ReadFault
      if (this.#connackFlags === -1) {
        if (n - i < 2) {
          // The flags are the chunk's last byte, the code in the next chunk: keep them until then.
          this.#connackFlags = chunk[i] as number // i === n - 1
          break
        }
        info = readConnack(chunk, i, this.#level)
        i += 2
      } else {
        info = readConnack(
          Buffer.from([this.#connackFlags, chunk[i++] as number]), // i < n
          0,
          this.#level,
        )
      }
      if ('reason' in info) {
        return this.#stop(this.#malformed(info.reason, info.detail), released, safe)
      }
      this.#opened = true
      this.#updateAccepted()
      this.#events?.mqttConnack?.(info)
      released ??= this.#releaseHeld()
      safe = i
      this.#left = this.#length - 2
      this.#state = this.#left === 0 ? START : BODY
    }
    // What follows `safe` is the start of a packet not judged yet, kept as it was read (as
    // numbers, or copied into #whole or #topic): hold it for a later push.
    this.#held += n - safe
    this.#position += n
    return { released, forward: safe, stopped: false, error: undefined }
  }

  // The types #judgeFirstByte lets through at this point of the stream: before the CONNECT
  // (CONNACK), only it, or an MQTT 5 broker's AUTH; after it, what the level's rules let this
  // side send (never type 0, nor AUTH at levels 3 and 4), bar a second CONNECT (CONNACK).
  #updateAccepted(): void {
    const client = this.sender === 'client'
    const opener = 1 << (client ? PacketType.CONNECT : PacketType.CONNACK)
    if (this.#opened) {
      this.#accepted = (client ? this.#rules.fromClient : this.#rules.fromBroker) & ~opener
    } else if (client) {
      this.#accepted = opener
    } else {
      const level = this.#level
      this.#accepted = level === 3 || level === 4 ? opener : opener | (1 << PacketType.AUTH)
    }
  }

  // Type and flags, from the packet's first byte (#type, #flags): returns the error, or
  // undefined. The whole of the rules; push() calls it only for what #accepted leaves out.
  #judgeFirstByte(): MqttMalformedError | undefined {
    const type = this.#type
    const flags = this.#flags
    const level = this.#level
    if (type === 0 || (type === PacketType.AUTH && (level === 3 || level === 4))) {
      return this.#malformed('reserved_type', `packet type ${type} is reserved`)
    }
    const name = this.#name()
    if (this.sender === 'client') {
      if (!this.#opened) {
        if (type !== PacketType.CONNECT) {
          return this.#malformed(
            'expected_connect',
            `the first packet is a ${name}, not a CONNECT [MQTT-3.1.0-1]`,
          )
        }
      } else if (type === PacketType.CONNECT) {
        return this.#malformed('second_connect', 'a second CONNECT [MQTT-3.1.0-2]')
      } else if (((this.#rules.fromClient >> type) & 1) === 0) {
        return this.#malformed('unexpected_type', `a client does not send ${name}`)
      }
    } else if (!this.#opened) {
      // MQTT 5 enhanced authentication: AUTH packets may come before the CONNACK.
      if (type !== PacketType.CONNACK && type !== PacketType.AUTH) {
        return this.#malformed('expected_connack', `the first packet is a ${name}, not a CONNACK`)
      }
    } else if (type === PacketType.CONNACK) {
      return this.#malformed('second_connack', 'a second CONNACK')
    } else if (((this.#rules.fromBroker >> type) & 1) === 0) {
      const at = level === 0 ? '' : ` at protocol level ${level}`
      return this.#malformed('unexpected_type', `a broker does not send ${name}${at}`)
    }
    const fixed = badFlags(type, flags, this.#rules.strictFlags)
    if (fixed === undefined) return undefined
    return this.#malformed(
      'header_flags',
      fixed === -1
        ? 'a PUBLISH with QoS 3 [MQTT-3.3.1-4]'
        : `a ${name} must have header flags 0x${fixed.toString(16)}, not 0x${flags.toString(16)} [MQTT-2.2.2-1]`,
    )
  }

  // The remaining length against the type's bounds, and the CONNECT against maxConnectSize.
  #judgeLength(): MqttMalformedError | undefined {
    const type = this.#type
    const length = this.#length
    // A PUBLISH with QoS 1 or 2 carries a packet identifier after its topic.
    const min =
      type === PacketType.PUBLISH && (this.#flags & 0x06) !== 0
        ? 4
        : (this.#rules.minLength[type] as number) // type < 16
    const max = this.#rules.maxLength[type] as number
    if (length < min || length > max) {
      const bound = min === max ? `${min}` : length < min ? `at least ${min}` : `at most ${max}`
      return this.#malformed(
        'packet_length',
        `a ${this.#name()} with remaining length ${length}; it must be ${bound}`,
      )
    }
    if (type === PacketType.CONNECT && this.#headerSize + length > this.#maxConnectSize) {
      return this.#malformed(
        'connect_too_large',
        `a CONNECT of ${this.#headerSize + length} bytes, over the ${this.#maxConnectSize} read`,
      )
    }
    if (
      type === PacketType.SUBSCRIBE &&
      this.#topics !== undefined &&
      this.#headerSize + length > this.#topics.maxSubscribeSize
    ) {
      return this.#malformed(
        'subscribe_too_large',
        `a SUBSCRIBE of ${this.#headerSize + length} bytes, over the ${this.#topics.maxSubscribeSize} read`,
      )
    }
    return undefined
  }

  // A CONNECT or (reading topics) SUBSCRIBE whose body is buf[start, end): the error, false
  // when mqttSubscribe refused it, or undefined when it goes on.
  #readWhole(buf: Buffer, start: number, end: number): MqttMalformedError | false | undefined {
    if (this.#type === PacketType.CONNECT) return this.#readConnect(buf, start, end)
    const filters = readSubscribeFilters(buf, start, end, this.#level)
    if (!Array.isArray(filters)) return this.#malformed(filters.reason, filters.detail)
    return this.#events?.mqttSubscribe?.(filters) === false ? false : undefined
  }

  #readConnect(buf: Buffer, start: number, end: number): MqttMalformedError | false | undefined {
    const info = readConnect(buf, start, end, this.#headerSize + this.#length)
    if ('reason' in info) return this.#malformed(info.reason, info.detail)
    this.#opened = true
    this.#level = info.level
    this.#rules = rulesFor(info.level)
    this.#updateAccepted()
    this.#peer?.setLevel(info.level)
    this.#events?.mqttConnect?.(info)
    if (this.#topics !== undefined && info.will !== undefined) {
      if (this.#events?.mqttWill?.(info.will.topic) === false) return false
    }
    return undefined
  }

  // The bytes of the current packet held from earlier chunks (its header, and perhaps the
  // CONNACK's flags, or a PUBLISH's topic length and topic), now judged, told again from the
  // numbers they were read into (and the topic's copy).
  #releaseHeld(): Buffer | undefined {
    const held = this.#held
    if (held === 0) return undefined
    const out = Buffer.allocUnsafe(held)
    const header = this.#headerSize
    this.#writeHeader(out, Math.min(held, header))
    if (held > header) {
      if (this.#type === PacketType.CONNACK) {
        out[header] = this.#connackFlags
      } else {
        // A PUBLISH, reading topics: held bytes past the header are its topic's length and
        // the topic's first bytes (the length is known once a byte after it is held).
        out[header] = this.#topicHigh
        if (held > header + 1) out[header + 1] = this.#topicLength & 0xff
        if (held > header + 2) (this.#topic as Buffer).copy(out, header + 2, 0, held - header - 2)
      }
    }
    this.#held = 0
    return out
  }

  // The first `count` bytes of the current packet's complete fixed header into `into`. A
  // Remaining Length is base-128 digits with a continuation bit on all but the last, so its
  // bytes follow from its value and their number, even when the encoding is not the shortest
  // (0x80 0x00 for 0): the stream forwarded is the one received, byte for byte.
  #writeHeader(into: Buffer, count: number): void {
    into[0] = (this.#type << 4) | this.#flags
    const last = this.#headerSize - 1
    for (let j = 1; j < count; j++) {
      const digit = Math.floor(this.#length / (DIGIT_WEIGHT[j - 1] as number)) % 128 // j <= 4
      into[j] = j < last ? digit | 0x80 : digit
    }
  }

  #stop(
    error: MqttMalformedError | undefined,
    released: Buffer | undefined,
    safe: number,
  ): FramerResult {
    this.#stopped = true
    this.#error = error
    this.#held = 0
    // A CONNECT copy may hold a password; it goes nowhere now, so do not leave it in the heap.
    this.#whole?.fill(0)
    this.#whole = undefined
    this.#topic = undefined
    return { released, forward: safe, stopped: true, error }
  }

  #name(): string {
    return PACKET_NAMES[this.#type] ?? 'packet'
  }

  #malformed(reason: MalformedReason, detail: string): MqttMalformedError {
    return new MqttMalformedError(reason, detail, {
      sender: this.sender,
      packetType: this.#type,
      offset: this.#packetStart,
    })
  }
}

// Reading the two packets the framer looks inside: a client's CONNECT (all of it, since a bad
// field anywhere in it means it must not reach the broker) and a broker's CONNACK (its first
// two bytes). Both are read from a complete byte range, once per connection, so clarity wins
// over speed here. The password is stepped over by its length: never decoded, never returned.
import { isUtf8 } from 'node:buffer'
import type { MalformedReason } from './errors.js'
import type { ProtocolLevel } from './packet.js'

export interface WillInfo {
  topic: string
  qos: 0 | 1 | 2
  retain: boolean
}

/** What a CONNECT says about the client, without its password. */
export interface ConnectInfo {
  level: ProtocolLevel
  /** "MQIsdp" for 3.1, "MQTT" for 3.1.1 and 5. */
  protocolName: 'MQTT' | 'MQIsdp'
  clientId: string
  /** Clean Session (3.1, 3.1.1), Clean Start (5). */
  clean: boolean
  /** Seconds; 0 turns keep alive off. */
  keepAlive: number
  /** Undefined when the username flag is not set. */
  username: string | undefined
  /** Whether a password was sent; its value is not kept. */
  hasPassword: boolean
  will: WillInfo | undefined
  /** The whole packet, fixed header included. */
  size: number
}

/** What a CONNACK answers. */
export interface ConnackInfo {
  /** The level the framer read it at (0: not told the CONNECT's). */
  level: ProtocolLevel | 0
  sessionPresent: boolean
  /** Return code (3.1, 3.1.1: 0 accepted, 1-5 refused) or reason code (5: >= 0x80 refused). */
  code: number
}

/** A rule a CONNECT or CONNACK broke: the label and what to say about it. */
export interface ReadFault {
  reason: MalformedReason
  detail: string
}

// Unwinds readConnect from the field that is wrong; caught there and returned as a ReadFault.
class Fault extends Error {
  readonly reason: MalformedReason

  constructor(reason: MalformedReason, detail: string) {
    super(detail)
    this.reason = reason
  }
}

/** The bridge bit Mosquitto bridges set on the level byte (0x83, 0x84); not accepted here. */
const BRIDGE_BIT = 0x80

/**
 * Reads the CONNECT whose variable header and payload are buf[start, end) (the fixed header
 * comes before start; `size` is the whole packet's). Every declared length must fit in the
 * range and the last field must end exactly at `end`.
 */
export function readConnect(
  buf: Buffer,
  start: number,
  end: number,
  size: number,
): ConnectInfo | ReadFault {
  try {
    return new ConnectReader(buf, start, end).read(size)
  } catch (err) {
    if (err instanceof Fault) return { reason: err.reason, detail: err.message }
    throw err
  }
}

class ConnectReader {
  readonly #buf: Buffer
  readonly #end: number
  #pos: number

  constructor(buf: Buffer, start: number, end: number) {
    this.#buf = buf
    this.#pos = start
    this.#end = end
  }

  read(size: number): ConnectInfo {
    const nameLength = this.#u16('protocol name')
    const name = nameLength === 4 || nameLength === 6 ? this.#latin1(nameLength) : undefined
    if (name !== 'MQTT' && name !== 'MQIsdp') {
      throw new Fault('protocol_name', 'the CONNECT protocol name is neither "MQTT" nor "MQIsdp"')
    }
    const level = this.#u8('protocol level')
    checkLevel(name, level)
    const flags = this.#u8('connect flags')
    const will = (flags & 0x04) !== 0
    const willQos = (flags >> 3) & 0x03
    const willRetain = (flags & 0x20) !== 0
    const hasPassword = (flags & 0x40) !== 0
    const hasUsername = (flags & 0x80) !== 0
    checkFlags(level, flags, will, willQos, willRetain, hasUsername, hasPassword)
    const keepAlive = this.#u16('keep alive')
    if (level === 5) this.#skipProperties('CONNECT properties')
    const clientId = this.#string('client identifier')
    let willInfo: WillInfo | undefined
    if (will) {
      if (level === 5) this.#skipProperties('will properties')
      const topic = this.#string('will topic')
      this.#skip(this.#u16('will payload length'), 'will payload')
      willInfo = { topic, qos: willQos as 0 | 1 | 2, retain: willRetain } // 3 refused above
    }
    const username = hasUsername ? this.#string('username') : undefined
    if (hasPassword) this.#skip(this.#u16('password length'), 'password')
    if (this.#pos !== this.#end) {
      throw new Fault(
        'connect_trailing',
        `the CONNECT has ${this.#end - this.#pos} bytes after its last field`,
      )
    }
    return {
      level,
      protocolName: name,
      clientId,
      clean: (flags & 0x02) !== 0,
      keepAlive,
      username,
      hasPassword,
      will: willInfo,
      size,
    }
  }

  #need(count: number, field: string): void {
    if (this.#pos + count > this.#end) {
      throw new Fault(
        'connect_overrun',
        `the CONNECT's ${field} runs ${this.#pos + count - this.#end} bytes past its remaining length`,
      )
    }
  }

  #u8(field: string): number {
    this.#need(1, field)
    return this.#buf[this.#pos++] as number // in range: #need checked it
  }

  #u16(field: string): number {
    this.#need(2, field)
    const value = this.#buf.readUInt16BE(this.#pos)
    this.#pos += 2
    return value
  }

  #skip(count: number, field: string): void {
    this.#need(count, field)
    this.#pos += count
  }

  #latin1(count: number): string {
    this.#need(count, 'protocol name')
    const text = this.#buf.toString('latin1', this.#pos, this.#pos + count)
    this.#pos += count
    return text
  }

  // An MQTT UTF-8 string [MQTT-1.5.3]: well-formed UTF-8 (which excludes encoded surrogates)
  // and no U+0000.
  #string(field: string): string {
    const length = this.#u16(`${field} length`)
    this.#need(length, field)
    const bytes = this.#buf.subarray(this.#pos, this.#pos + length)
    if (!isUtf8(bytes) || bytes.includes(0)) {
      throw new Fault('connect_utf8', `the CONNECT's ${field} is not a valid MQTT UTF-8 string`)
    }
    this.#pos += length
    return bytes.toString('utf8')
  }

  // MQTT 5 properties, stepped over by their Variable Byte Integer length.
  #skipProperties(field: string): void {
    let length = 0
    let multiplier = 1
    for (let count = 1; ; count++) {
      const byte = this.#u8(`${field} length`)
      length += (byte & 0x7f) * multiplier
      if ((byte & 0x80) === 0) break
      if (count === 4) {
        throw new Fault('connect_overrun', `the CONNECT's ${field} length is longer than 4 bytes`)
      }
      multiplier *= 128
    }
    this.#skip(length, field)
  }
}

function checkLevel(name: 'MQTT' | 'MQIsdp', level: number): asserts level is ProtocolLevel {
  if ((level & BRIDGE_BIT) !== 0) {
    throw new Fault(
      'protocol_level',
      `protocol level 0x${level.toString(16)} has the bridge bit set; bridges are not supported`,
    )
  }
  const ok = name === 'MQIsdp' ? level === 3 : level === 4 || level === 5
  if (!ok) {
    const wanted = name === 'MQIsdp' ? '3' : '4 or 5'
    throw new Fault('protocol_level', `protocol "${name}" needs level ${wanted}, not ${level}`)
  }
}

function checkFlags(
  level: ProtocolLevel,
  flags: number,
  will: boolean,
  willQos: number,
  willRetain: boolean,
  hasUsername: boolean,
  hasPassword: boolean,
): void {
  if ((flags & 0x01) !== 0) {
    throw new Fault('connect_flags', 'the CONNECT flags have the reserved bit set [MQTT-3.1.2-3]')
  }
  if (willQos === 3) {
    throw new Fault('connect_flags', 'the CONNECT asks for will QoS 3 [MQTT-3.1.2-14]')
  }
  if (!will && (willQos !== 0 || willRetain)) {
    throw new Fault('connect_flags', 'the CONNECT sets will QoS or retain without a will')
  }
  // MQTT 5 allows a password alone (3.1.2.9); 3.1 and 3.1.1 do not [MQTT-3.1.2-22].
  if (level !== 5 && hasPassword && !hasUsername) {
    throw new Fault('connect_flags', 'the CONNECT sets the password flag without a username')
  }
}

/** Reads a CONNACK's acknowledge flags and code from buf[pos, pos + 2). */
export function readConnack(
  buf: Buffer,
  pos: number,
  level: ProtocolLevel | 0,
): ConnackInfo | ReadFault {
  const flags = buf[pos] as number // the framer has read both bytes
  const code = buf[pos + 1] as number
  // 3.1 calls the first byte reserved and says nothing of its value; 3.1.1 and 5 keep bits 7-1.
  if (level !== 3 && (flags & 0xfe) !== 0) {
    return {
      reason: 'connack_flags',
      detail: `the CONNACK acknowledge flags 0x${flags.toString(16)} have reserved bits set`,
    }
  }
  return { level, sessionPresent: level !== 3 && (flags & 0x01) !== 0, code }
}

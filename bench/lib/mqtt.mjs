// The few MQTT 3.1.1 packets the load generator needs, encoded by hand so that the generator
// spends as little CPU per message as possible (MQTT.js would be the limit long before the
// system under test). Only QoS 0 PUBLISH is used.
import { Buffer } from 'node:buffer'

/** Encodes the MQTT variable-length "remaining length" [MQTT-2.2.3]. */
function remainingLength(n) {
  const bytes = []
  do {
    let digit = n % 128
    n = Math.floor(n / 128)
    if (n > 0) digit |= 0x80
    bytes.push(digit)
  } while (n > 0)
  return Buffer.from(bytes)
}

function str(s) {
  const b = Buffer.from(s, 'utf8')
  const len = Buffer.alloc(2)
  len.writeUInt16BE(b.length)
  return Buffer.concat([len, b])
}

function packet(firstByte, body) {
  return Buffer.concat([Buffer.from([firstByte]), remainingLength(body.length), body])
}

/** CONNECT, MQTT 3.1.1, clean session; keepAlive 0 disables the broker's keep-alive timer. */
export function connect(clientId, keepAlive = 0) {
  const ka = Buffer.alloc(2)
  ka.writeUInt16BE(keepAlive)
  return packet(0x10, Buffer.concat([str('MQTT'), Buffer.from([4, 0x02]), ka, str(clientId)]))
}

export function subscribe(topic, packetId = 1) {
  const id = Buffer.alloc(2)
  id.writeUInt16BE(packetId)
  return packet(0x82, Buffer.concat([id, str(topic), Buffer.from([0])]))
}

export const DISCONNECT = Buffer.from([0xe0, 0x00])

/**
 * A QoS 0 PUBLISH of `payloadSize` bytes, and the offset of its payload inside the packet so the
 * caller can stamp a sequence number or a timestamp into a copy.
 */
export function publish(topic, payloadSize) {
  const payload = Buffer.alloc(payloadSize, 0x61)
  const p = packet(0x30, Buffer.concat([str(topic), payload]))
  return { packet: p, payloadOffset: p.length - payloadSize }
}

export const CONNACK = 2
export const PUBLISH = 3
export const SUBACK = 9

/**
 * Splits a byte stream into MQTT packets, whatever the chunking (a chunk may hold part of a
 * packet or several). Calls onPacket(type, buf, start, end) with [start, end) the whole packet.
 */
export class PacketStream {
  #buf = Buffer.alloc(0)
  #onPacket

  constructor(onPacket) {
    this.#onPacket = onPacket
  }

  push(chunk) {
    let buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk])
    let pos = 0
    const end = buf.length
    for (;;) {
      if (end - pos < 2) break
      let len = 0
      let mult = 1
      let i = pos + 1
      let complete = false
      for (let n = 0; n < 4 && i < end; n++, i++) {
        const b = buf[i]
        len += (b & 0x7f) * mult
        mult *= 128
        if ((b & 0x80) === 0) {
          complete = true
          i++
          break
        }
      }
      if (!complete) break
      if (end - i < len) break
      this.#onPacket(buf[pos] >> 4, buf, pos, i + len, i)
      pos = i + len
    }
    if (pos === end) buf = Buffer.alloc(0)
    else if (pos > 0) buf = Buffer.from(buf.subarray(pos))
    else if (buf === chunk) buf = Buffer.from(chunk)
    this.#buf = buf
  }
}

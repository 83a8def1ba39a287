// The CONNACK the gateway itself sends when it will not bridge a CONNECT it has read and held
// (upstream.connectOn=connect, no broker accepted): a refusal the client's MQTT library can show
// ("Server unavailable"), where a bare close would only say "connection closed".
import type { ProtocolLevel } from './packet.js'

/** MQTT 3.1 and 3.1.1 return code 3 (3.1.1 section 3.2.2.3): "Server unavailable". */
export const RETURN_CODE_SERVER_UNAVAILABLE = 3
/** MQTT 5 reason code 0x88 (section 3.2.2.2): "Server unavailable". */
export const REASON_CODE_SERVER_UNAVAILABLE = 0x88

/** MQTT 5 property identifier of the Reason String (section 3.2.2.3.9). */
const REASON_STRING = 0x1f

/**
 * The Reason String is cut to this many bytes. A client may have asked for a Maximum Packet Size
 * in its CONNECT properties, which the framer steps over unread; a CONNACK this small fits any
 * limit a real client sets, and the whole text is in the gateway's log anyway.
 */
export const MAX_REASON_STRING_BYTES = 200

/** The code a "Server unavailable" CONNACK carries at `level`. */
export function serverUnavailableCode(level: ProtocolLevel): number {
  return level === 5 ? REASON_CODE_SERVER_UNAVAILABLE : RETURN_CODE_SERVER_UNAVAILABLE
}

/**
 * A CONNACK refusing the connection with "Server unavailable": `20 02 00 03` below MQTT 5; at 5,
 * reason code 0x88 and a Reason String property carrying `reason` (cut to
 * MAX_REASON_STRING_BYTES at a character boundary). Session Present is 0: no session is kept.
 */
export function serverUnavailableConnack(level: ProtocolLevel, reason: string): Buffer {
  if (level !== 5) return Buffer.from([0x20, 0x02, 0x00, RETURN_CODE_SERVER_UNAVAILABLE])
  const text = Buffer.from(fitUtf8(reason, MAX_REASON_STRING_BYTES), 'utf8')
  // Property: identifier, 2-byte length, the UTF-8 bytes.
  const properties = 1 + 2 + text.length
  // Both lengths are Variable Byte Integers: past 127 bytes of reason they take 2 bytes.
  const propertiesLength = variableByteInteger(properties)
  // Acknowledge flags and reason code, then the properties with their length.
  const remaining = 2 + propertiesLength.length + properties
  const remainingLength = variableByteInteger(remaining)
  const packet = Buffer.allocUnsafe(1 + remainingLength.length + remaining)
  let at = 0
  packet[at++] = 0x20
  at += remainingLength.copy(packet, at)
  packet[at++] = 0x00
  packet[at++] = REASON_CODE_SERVER_UNAVAILABLE
  at += propertiesLength.copy(packet, at)
  packet[at++] = REASON_STRING
  at = packet.writeUInt16BE(text.length, at)
  text.copy(packet, at)
  return packet
}

/** MQTT's Variable Byte Integer (section 1.5.5): 7 bits a byte, low first, high bit = more. */
function variableByteInteger(value: number): Buffer {
  const bytes: number[] = []
  let left = value
  do {
    let byte = left % 128
    left = Math.floor(left / 128)
    if (left > 0) byte |= 0x80
    bytes.push(byte)
  } while (left > 0)
  return Buffer.from(bytes)
}

/** `text` cut to at most `max` UTF-8 bytes, at a character boundary. */
function fitUtf8(text: string, max: number): string {
  if (Buffer.byteLength(text) <= max) return text
  let fitted = ''
  let bytes = 0
  for (const char of text) {
    const size = Buffer.byteLength(char)
    if (bytes + size > max) break
    fitted += char
    bytes += size
  }
  return fitted
}

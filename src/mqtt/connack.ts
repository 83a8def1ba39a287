// The CONNACK the gateway itself sends when it will not bridge a CONNECT it has read and held
// (upstream.connectOn=connect, no broker accepted): a refusal the client's MQTT library can show
// ("Server unavailable"), where a bare close would only say "connection closed".
import { stringProperty, variableByteInteger } from './encode.js'
import type { ProtocolLevel } from './packet.js'

/** MQTT 3.1 and 3.1.1 return code 3 (3.1.1 section 3.2.2.3): "Server unavailable". */
export const RETURN_CODE_SERVER_UNAVAILABLE = 3
/** MQTT 5 reason code 0x88 (section 3.2.2.2): "Server unavailable". */
export const REASON_CODE_SERVER_UNAVAILABLE = 0x88

/** MQTT 3.1 and 3.1.1 return code 5: "Not authorized". */
export const RETURN_CODE_NOT_AUTHORIZED = 5
/** MQTT 5 reason code 0x87: "Not authorized". */
export const REASON_CODE_NOT_AUTHORIZED = 0x87

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
  return refusalConnack(
    level,
    RETURN_CODE_SERVER_UNAVAILABLE,
    REASON_CODE_SERVER_UNAVAILABLE,
    reason,
  )
}

/**
 * A CONNACK refusing the connection with "Not authorized" (auth.permissionsClaim: a will the
 * token does not grant): return code 5 below MQTT 5, reason code 0x87 with `reason` at 5.
 */
export function notAuthorizedConnack(level: ProtocolLevel, reason: string): Buffer {
  return refusalConnack(level, RETURN_CODE_NOT_AUTHORIZED, REASON_CODE_NOT_AUTHORIZED, reason)
}

/**
 * A CONNACK refusing the connection: `20 02 00 <returnCode>` below MQTT 5; at 5, `reasonCode`
 * with `reason` as Reason String (cut as above).
 */
export function refusalConnack(
  level: ProtocolLevel,
  returnCode: number,
  reasonCode: number,
  reason: string,
): Buffer {
  if (level !== 5) return Buffer.from([0x20, 0x02, 0x00, returnCode])
  const property = stringProperty(REASON_STRING, reasonString(reason))
  const propertyLength = variableByteInteger(property.length)
  // Acknowledge flags and reason code, then the properties with their length.
  const remaining = 2 + propertyLength.length + property.length
  return Buffer.concat([
    Buffer.from([0x20]),
    variableByteInteger(remaining),
    Buffer.from([0x00, reasonCode]),
    propertyLength,
    property,
  ])
}

/**
 * `text` as a Reason String: control characters (which a client may refuse, 1.5.4) made spaces,
 * since a refusal must never fail to encode, then cut to MAX_REASON_STRING_BYTES.
 */
function reasonString(text: string): string {
  // eslint-disable-next-line no-control-regex -- the control characters are what it replaces
  const clean = text.replace(/[\u0000-\u001f\u007f-\u009f]/g, ' ')
  if (Buffer.byteLength(clean) <= MAX_REASON_STRING_BYTES) return clean
  let fitted = ''
  let bytes = 0
  for (const char of clean) {
    const size = Buffer.byteLength(char)
    if (bytes + size > MAX_REASON_STRING_BYTES) break
    fitted += char
    bytes += size
  }
  return fitted
}

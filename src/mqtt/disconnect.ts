// A packet the gateway writes into a client's MQTT stream itself: an MQTT 5 DISCONNECT (MQTT 5,
// section 3.14) that tells the client, in its own protocol, why the connection ends.
// Only a server speaking MQTT 5 may send DISCONNECT; 3.1 and 3.1.1 have no server DISCONNECT,
// so callers send these to level-5 clients only.
//
// Layout: fixed header 0xE0, Remaining Length (Variable Byte Integer), the reason code, the
// property length (Variable Byte Integer), then the properties, each an identifier byte and a
// UTF-8 string (2-byte length, then the bytes; encode.ts).
import { stringProperty, variableByteInteger } from './encode.js'

/** The reason codes the gateway sends (MQTT 5 table 3.10); the spec's names. */
export const DisconnectReasonCode = {
  /** The client is no longer allowed on: its certificate was revoked or expired. */
  NOT_AUTHORIZED: 0x87,
  /** The gateway is shutting down. */
  SERVER_SHUTTING_DOWN: 0x8b,
  /** A client packet was over the Maximum Packet Size (mqtt.maxPacketSize). */
  PACKET_TOO_LARGE: 0x95,
  /** Shutting down, and the client should reconnect to the Server Reference. */
  USE_ANOTHER_SERVER: 0x9c,
} as const

export type DisconnectReasonCodeValue =
  (typeof DisconnectReasonCode)[keyof typeof DisconnectReasonCode]

/** Property identifiers (MQTT 5 table 2-4) of the properties a DISCONNECT here may carry. */
const REASON_STRING = 0x1f
const SERVER_REFERENCE = 0x1c

/** The optional properties of a server DISCONNECT. */
export interface DisconnectProperties {
  /** Human-readable, for the client's logs (3.14.2.2.3). */
  reasonString?: string
  /** Where to reconnect, with 0x9C Use another server (3.14.2.2.5, 4.11). */
  serverReference?: string
}

/** An MQTT 5 DISCONNECT with `reasonCode` and, when given, a Reason String and Server Reference. */
export function encodeDisconnect(
  reasonCode: DisconnectReasonCodeValue,
  properties: DisconnectProperties = {},
): Buffer {
  const props: Buffer[] = []
  if (properties.reasonString !== undefined) {
    props.push(stringProperty(REASON_STRING, properties.reasonString))
  }
  if (properties.serverReference !== undefined) {
    props.push(stringProperty(SERVER_REFERENCE, properties.serverReference))
  }
  const propertyBytes = Buffer.concat(props)
  const propertyLength = variableByteInteger(propertyBytes.length)
  const remaining = 1 + propertyLength.length + propertyBytes.length
  return Buffer.concat([
    Buffer.from([0xe0]),
    variableByteInteger(remaining),
    Buffer.from([reasonCode]),
    propertyLength,
    propertyBytes,
  ])
}

// The few MQTT data types the gateway's own packets are made of (MQTT 5 section 1.5): a
// Variable Byte Integer and a UTF-8 string property. The server DISCONNECT (disconnect.ts) and
// the CONNACK "Server unavailable" (connack.ts) are the only packets the gateway writes itself.

/** The longest UTF-8 string MQTT can carry: its length is a 2-byte integer (1.5.4). */
const MAX_STRING_BYTES = 65_535

/**
 * Why `text` cannot be an MQTT UTF-8 string, or undefined when it can: at most 65,535 bytes,
 * no U+0000 [MQTT-1.5.4-2], none of the control characters a receiver may refuse
 * (U+0001-U+001F, U+007F-U+009F; 1.5.4). Config checks a Server Reference with this at start.
 */
export function mqttStringProblem(text: string): string | undefined {
  if (Buffer.byteLength(text) > MAX_STRING_BYTES) return 'is longer than 65535 bytes'
  // eslint-disable-next-line no-control-regex -- the control characters are what it looks for
  if (/[\u0000-\u001f\u007f-\u009f]/.test(text)) return 'contains a control character'
  return undefined
}

/** A property whose value is a UTF-8 string: identifier, 2-byte length, the bytes. */
export function stringProperty(identifier: number, text: string): Buffer {
  const problem = mqttStringProblem(text)
  if (problem !== undefined) throw new RangeError(`an MQTT string property ${problem}`)
  const bytes = Buffer.from(text, 'utf8')
  const out = Buffer.allocUnsafe(3 + bytes.length)
  out[0] = identifier
  out.writeUInt16BE(bytes.length, 1)
  bytes.copy(out, 3)
  return out
}

/** MQTT's Variable Byte Integer (1.5.5): 7 bits a byte, low first, bit 7 "more follows". */
export function variableByteInteger(value: number): Buffer {
  const bytes: number[] = []
  let rest = value
  do {
    let byte = rest % 128
    rest = Math.floor(rest / 128)
    if (rest > 0) byte |= 0x80
    bytes.push(byte)
  } while (rest > 0)
  return Buffer.from(bytes)
}

// tls.identityAs=username: the CONNECT's username replaced by the identity a verified client
// certificate gives, or removed when there is none, so the broker's per-username ACLs apply to
// the certificate and not to what the client chose to say. Everything else in the packet is
// copied byte for byte: the variable header, MQTT 5 properties, client id, will, password;
// only the username flag, the username field and the Remaining Length change. Below MQTT 5 a
// password needs a username [MQTT-3.1.2-22], so removing the username removes the password.
import { mqttStringProblem, variableByteInteger } from './encode.js'
import type { ProtocolLevel } from './packet.js'
import type { IdentityFrom } from '../config/schema.js'

/** The prefix OpenSSL prints before each kind of subjectAltName entry. */
const SAN_PREFIX: Record<Exclude<IdentityFrom, 'cn'>, string> = {
  'san-dns': 'DNS:',
  'san-uri': 'URI:',
  'san-email': 'email:',
}

/**
 * The identity a verified certificate gives under tls.identityFrom: its CN, or the first SAN of
 * that kind. Undefined when it has none: an empty value counts as none, and so does one that
 * cannot be an MQTT username (over 65,535 bytes, U+0000 or another control character), which
 * a broker would refuse the whole CONNECT for.
 */
export function certificateIdentity(
  cert: { subject: string; sans: readonly string[] },
  from: IdentityFrom,
): string | undefined {
  let value: string | undefined
  if (from === 'cn') value = cert.subject
  else {
    const prefix = SAN_PREFIX[from]
    value = cert.sans.find((entry) => entry.startsWith(prefix))?.slice(prefix.length)
  }
  if (value === undefined || value === '' || mqttStringProblem(value) !== undefined)
    return undefined
  return value
}

const USERNAME_FLAG = 0x80
const PASSWORD_FLAG = 0x40
const WILL_FLAG = 0x04

/**
 * The CONNECT `packet` (fixed header included, read and found sound by the framer) with its
 * username set to `username`, or removed when it is undefined (and, below MQTT 5, the password
 * with it). Returns a new buffer; `packet` is not changed.
 */
export function rewriteConnectUsername(
  packet: Buffer,
  username: string | undefined,
  level: ProtocolLevel,
  keepPassword = true,
): Buffer {
  // Fixed header: type byte, Remaining Length (1-4 bytes).
  let pos = 1
  while (((packet[pos++] as number) & 0x80) !== 0);
  const body = pos
  const nameLength = packet.readUInt16BE(pos)
  pos += 2 + nameLength + 1 // protocol name, level
  const flagsAt = pos
  const flags = packet[flagsAt] as number
  pos += 1 + 2 // flags, keep alive
  if (level === 5) pos = skipProperties(packet, pos)
  pos += 2 + packet.readUInt16BE(pos) // client id
  if ((flags & WILL_FLAG) !== 0) {
    if (level === 5) pos = skipProperties(packet, pos)
    pos += 2 + packet.readUInt16BE(pos) // will topic
    pos += 2 + packet.readUInt16BE(pos) // will payload
  }
  // pos: where the username is, or would be. After it, the password (if any), to the end.
  const usernameStart = pos
  if ((flags & USERNAME_FLAG) !== 0) pos += 2 + packet.readUInt16BE(pos)
  let rest = packet.subarray(pos)
  let newFlags = flags & ~USERNAME_FLAG
  let field = Buffer.alloc(0)
  if (username !== undefined) {
    const bytes = Buffer.from(username, 'utf8')
    field = Buffer.allocUnsafe(2 + bytes.length)
    field.writeUInt16BE(bytes.length, 0)
    bytes.copy(field, 2)
    newFlags |= USERNAME_FLAG
  }
  if (!keepPassword || (username === undefined && level !== 5)) {
    rest = rest.subarray(0, 0) // the password is all that follows the username
    newFlags &= ~PASSWORD_FLAG
  }
  const head = packet.subarray(body, usernameStart)
  const length = head.length + field.length + rest.length
  const out = Buffer.concat([packet.subarray(0, 1), variableByteInteger(length), head, field, rest])
  const headerSize = out.length - length
  out[headerSize + (flagsAt - body)] = newFlags
  return out
}

/**
 * The password of the CONNECT `packet` (read and found sound by the framer), as UTF-8 text, or
 * undefined when it has none. Read only to check it as a token (auth.tokenFrom password).
 */
export function connectPassword(packet: Buffer, level: ProtocolLevel): string | undefined {
  let pos = 1
  while (((packet[pos++] as number) & 0x80) !== 0);
  pos += 2 + packet.readUInt16BE(pos) + 1 // protocol name, level
  const flags = packet[pos] as number
  if ((flags & PASSWORD_FLAG) === 0) return undefined
  pos += 1 + 2 // flags, keep alive
  if (level === 5) pos = skipProperties(packet, pos)
  pos += 2 + packet.readUInt16BE(pos) // client id
  if ((flags & WILL_FLAG) !== 0) {
    if (level === 5) pos = skipProperties(packet, pos)
    pos += 2 + packet.readUInt16BE(pos)
    pos += 2 + packet.readUInt16BE(pos)
  }
  if ((flags & USERNAME_FLAG) !== 0) pos += 2 + packet.readUInt16BE(pos)
  const length = packet.readUInt16BE(pos)
  return packet.subarray(pos + 2, pos + 2 + length).toString('utf8')
}

function skipProperties(packet: Buffer, pos: number): number {
  let length = 0
  let multiplier = 1
  let at = pos
  for (;;) {
    const byte = packet[at++] as number
    length += (byte & 0x7f) * multiplier
    if ((byte & 0x80) === 0) break
    multiplier *= 128
  }
  return at + length
}

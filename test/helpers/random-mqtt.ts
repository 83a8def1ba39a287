// Random MQTT packets for the property tests, built as mqtt-packet objects (mqtt-packet, the
// reference, encodes them). The framer's and the identity rewrite's tests draw their CONNECTs
// here; each passes the payload sizes that matter to it.
import type { IConnectPacket, UserProperties } from 'mqtt-packet'
import type { ProtocolLevel } from '../../src/mqtt/packet.js'
import type { Prng } from './prng.js'

/** Characters of 1 to 4 UTF-8 bytes, and the separators client ids and topics carry. */
const CHARS = ['a', 'b', 'z', '0', '/', '-', '_', ' ', '.', '@', 'é', 'ß', '€', '水', '😀']

export function randomText(r: Prng, min: number, max: number): string {
  let out = ''
  for (let n = r.between(min, max); n > 0; n--) out += r.pick(CHARS)
  return out
}

export function randomUserProperties(r: Prng): UserProperties {
  return { [randomText(r, 1, 5)]: randomText(r, 0, 8) }
}

/** A CONNECT of `level` with every optional part now and then; the will's payload is `size`. */
export function randomConnect(
  r: Prng,
  level: ProtocolLevel,
  size: (r: Prng) => number,
): IConnectPacket {
  const hasUsername = r.chance(0.6)
  // mqtt-packet generates a password only with a username, even at MQTT 5 (which allows one
  // alone: the tests' fixed cases have it).
  const hasPassword = hasUsername && r.chance(0.7)
  const clean = r.chance(0.5)
  return {
    cmd: 'connect',
    protocolId: level === 3 ? 'MQIsdp' : 'MQTT',
    protocolVersion: level,
    // An empty client id asks the broker to assign one, which needs a clean session.
    clientId: randomText(r, level === 3 || !clean ? 1 : 0, 23),
    clean,
    keepalive: r.int(65_536),
    ...(hasUsername && { username: randomText(r, 0, 30) }),
    ...(hasPassword && { password: r.bytes(r.int(40)) }),
    ...(r.chance(0.4) && {
      will: {
        topic: randomText(r, 1, 30),
        payload: r.bytes(size(r)),
        qos: r.pick([0, 1, 2] as const),
        retain: r.chance(0.5),
        ...(level === 5 &&
          r.chance(0.5) && { properties: { willDelayInterval: r.int(1000), contentType: 'x' } }),
      },
    }),
    ...(level === 5 &&
      r.chance(0.6) && {
        properties: {
          sessionExpiryInterval: r.int(100_000),
          maximumPacketSize: r.between(100, 1_000_000),
          userProperties: randomUserProperties(r),
          ...(r.chance(0.3) && { authenticationMethod: randomText(r, 1, 10) }),
        },
      }),
  }
}

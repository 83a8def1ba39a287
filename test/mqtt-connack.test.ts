// The gateway's own CONNACK "Server unavailable" (src/mqtt/connack.ts), read back with
// mqtt-packet's parser, the one MQTT.js uses.
import mqttPacket, { type IConnackPacket, type Packet } from 'mqtt-packet'
import t from 'tap'
import {
  MAX_REASON_STRING_BYTES,
  serverUnavailableCode,
  serverUnavailableConnack,
} from '../src/mqtt/connack.js'

/** Every packet mqtt-packet finds in `bytes`, parsing at `level`. */
function parse(bytes: Buffer, level: 3 | 4 | 5): Packet[] {
  const parser = mqttPacket.parser({ protocolVersion: level })
  const packets: Packet[] = []
  const errors: Error[] = []
  parser.on('packet', (packet: Packet) => packets.push(packet))
  parser.on('error', (err: Error) => errors.push(err))
  parser.parse(bytes)
  const [error] = errors
  if (error !== undefined) throw error
  return packets
}

t.test('MQTT 3.1 and 3.1.1: return code 3, no room for a reason', async (t) => {
  for (const level of [3, 4] as const) {
    const bytes = serverUnavailableConnack(level, 'ignored below MQTT 5')
    t.equal(bytes.toString('hex'), '20020003', `level ${level}`)
    t.match(parse(bytes, level), [{ cmd: 'connack', returnCode: 3, sessionPresent: false }])
    t.equal(serverUnavailableCode(level), 3)
  }
})

t.test('MQTT 5: reason code 0x88 with the Reason String', async (t) => {
  const reason = 'no broker accepted the connection: 10.0.0.5:1883 ECONNREFUSED'
  const bytes = serverUnavailableConnack(5, reason)
  const [packet, ...rest] = parse(bytes, 5)
  t.equal(rest.length, 0, 'exactly one packet')
  t.match(packet, { cmd: 'connack', reasonCode: 0x88, properties: { reasonString: reason } })
  t.equal(serverUnavailableCode(5), 0x88)
  const generated = mqttPacket.generate(
    {
      cmd: 'connack',
      sessionPresent: false,
      reasonCode: 0x88,
      properties: { reasonString: reason },
    },
    { protocolVersion: 5 },
  )
  t.equal(bytes.toString('hex'), generated.toString('hex'), "the same bytes as mqtt-packet's")
})

t.test('MQTT 5: a long reason is cut at a character, lengths past one byte', async (t) => {
  // One ASCII byte, then 2-byte characters: byte 200 falls in the middle of one, left out.
  const reason = `x${'é'.repeat(150)}`
  const bytes = serverUnavailableConnack(5, reason)
  const [packet] = parse(bytes, 5) as IConnackPacket[]
  const got = packet?.properties?.reasonString ?? ''
  t.equal(Buffer.byteLength(got), MAX_REASON_STRING_BYTES - 1, 'cut before the split character')
  t.ok(reason.startsWith(got), 'a prefix of the reason')
  t.equal(bytes[1], 0x80 | ((bytes.length - 3) & 0x7f), 'remaining length needs 2 bytes')
  t.ok(bytes.length > 130, `${bytes.length} bytes`)
})

t.test('MQTT 5: control characters in the cause do not stop the answer', async (t) => {
  const bytes = serverUnavailableConnack(5, 'line one\nline two\u0000')
  const [packet] = parse(bytes, 5) as IConnackPacket[]
  t.equal(packet?.properties?.reasonString, 'line one line two ', 'made spaces')
})

// The server DISCONNECT encoder (src/mqtt/disconnect.ts) against mqtt-packet, the reference
// parser MQTT.js uses: every packet it builds parses back, at level 5, to the reason code and
// properties it was given, and the bytes are the ones MQTT 5 section 3.14 lays out.
import mqttPacket, { type IDisconnectPacket, type Packet } from 'mqtt-packet'
import t from 'tap'
import { Goodbyes } from '../src/bridge/goodbyes.js'
import { DisconnectReasonCode, encodeDisconnect } from '../src/mqtt/disconnect.js'
import { mqttStringProblem } from '../src/mqtt/encode.js'

/** Parses `bytes` as a level-5 stream: every packet, and how many bytes were left over. */
function parse5(bytes: Buffer): { packets: Packet[]; left: number } {
  const parser = mqttPacket.parser({ protocolVersion: 5 })
  const packets: Packet[] = []
  const errors: Error[] = []
  parser.on('packet', (packet: Packet) => packets.push(packet))
  parser.on('error', (err: Error) => errors.push(err))
  const left = parser.parse(bytes)
  const [error] = errors
  if (error !== undefined) throw error
  return { packets, left }
}

function only(bytes: Buffer): IDisconnectPacket {
  const { packets, left } = parse5(bytes)
  if (packets.length !== 1 || left !== 0) throw new Error(`${packets.length} packets, ${left} left`)
  return packets[0] as IDisconnectPacket
}

t.test('the bytes of 3.14: header, remaining length, reason code, properties', async (t) => {
  t.equal(encodeDisconnect(0x8b).toString('hex'), 'e0028b00', 'no properties: length 0')
  t.equal(
    encodeDisconnect(0x87, { reasonString: 'ab' }).toString('hex'),
    'e007' + '87' + '05' + '1f0002' + '6162',
    'Reason String 0x1F: identifier, 2-byte length, UTF-8',
  )
  t.equal(
    encodeDisconnect(0x9c, { serverReference: 'b:1' }).toString('hex'),
    'e008' + '9c' + '06' + '1c0003' + '623a31',
    'Server Reference 0x1C',
  )
})

t.test('mqtt-packet reads back each reason code and property', async (t) => {
  for (const code of Object.values(DisconnectReasonCode)) {
    t.match(only(encodeDisconnect(code)), { cmd: 'disconnect', reasonCode: code })
  }
  const both = only(
    encodeDisconnect(DisconnectReasonCode.USE_ANOTHER_SERVER, {
      reasonString: 'moving',
      serverReference: 'mqtt-b.example.com:443',
    }),
  )
  t.equal(both.reasonCode, 0x9c)
  t.same(both.properties, {
    reasonString: 'moving',
    serverReference: 'mqtt-b.example.com:443',
  })
  const unicode = only(
    encodeDisconnect(0x87, { reasonString: 'zertifikat gesperrt \u2013 \u{1f512}' }),
  )
  t.equal(unicode.properties?.reasonString, 'zertifikat gesperrt \u2013 \u{1f512}', 'UTF-8')
})

t.test('a long property takes a multi-byte remaining length', async (t) => {
  // 200 bytes of reference: remaining length 1 + 2 (property length) + 3 + 200 = 206 > 127.
  const reference = 'r'.repeat(200)
  const packet = encodeDisconnect(0x9c, { serverReference: reference })
  t.equal(packet.length, 2 + 1 + 206, 'a 2-byte Variable Byte Integer')
  t.equal(packet[1], (206 % 128) | 0x80)
  t.equal(packet[2], 1)
  t.equal(only(packet).properties?.serverReference, reference)
  const longest = 'x'.repeat(65_535)
  t.equal(
    only(encodeDisconnect(0x9c, { serverReference: longest })).properties?.serverReference,
    longest,
  )
})

t.test('strings MQTT cannot carry are refused', async (t) => {
  t.equal(mqttStringProblem('mqtt-b.example.com:443'), undefined)
  t.match(mqttStringProblem('x'.repeat(65_536)), /longer than 65535 bytes/)
  t.match(mqttStringProblem('a\u0000b'), /control character/)
  t.match(mqttStringProblem('a\nb'), /control character/)
  t.throws(() => encodeDisconnect(0x9c, { serverReference: 'a\u0000b' }), RangeError)
})

t.test('the goodbyes carry the packets the README names', async (t) => {
  t.match(only(Goodbyes.packetTooLarge.disconnect), { reasonCode: 0x95 })
  t.equal(Goodbyes.packetTooLarge.code, 1009)
  t.match(only(Goodbyes.certificateRevoked.disconnect), {
    reasonCode: 0x87,
    properties: { reasonString: 'certificate revoked' },
  })
  t.match(only(Goodbyes.certificateExpired.disconnect), {
    reasonCode: 0x87,
    properties: { reasonString: 'certificate expired' },
  })
  t.equal(Goodbyes.certificateRevoked.code, 1008)
  const plain = Goodbyes.shuttingDown('')
  t.equal(plain.code, 1001)
  t.same(only(plain.disconnect).reasonCode, 0x8b)
  t.notOk(only(plain.disconnect).properties, 'no Server Reference when none is set')
  t.match(only(Goodbyes.shuttingDown('other:443').disconnect), {
    reasonCode: 0x9c,
    properties: { serverReference: 'other:443' },
  })
})

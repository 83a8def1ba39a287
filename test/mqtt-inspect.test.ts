// mqtt.inspect: every connection's bytes go through the MQTT framers. Real clients at every
// protocol level pass through unchanged; a malformed packet from the client is closed with 1002
// before any of it reaches the broker, one from the broker with 1011; mqtt.inspect=false is the
// blind pipe again.
import { once } from 'node:events'
import net from 'node:net'
import tls from 'node:tls'
import { connectAsync, type IClientOptions } from 'mqtt'
import t from 'tap'
import { WebSocket } from 'ws'
import { BROKER_KINDS, MOSQUITTO, startBroker, type Teardown } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { nextMessage, pattern, sha256 } from './helpers/mqtt.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { scrape, value } from './helpers/scrape.js'
import { connectPacket, encode, openRawClient } from './helpers/wsmqtt.js'

/** A stand-in broker that records what it receives and hands each socket to `onSocket`. */
async function recordingBroker(
  t: Teardown,
  onSocket: (socket: net.Socket) => void = () => undefined,
): Promise<{ port: number; received: Buffer[] }> {
  // Every socket's bytes together: the readiness check's connects send none.
  const received: Buffer[] = []
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => undefined)
    socket.on('data', (chunk: Buffer) => received.push(chunk))
    // Ends its side once the gateway has: so the gateway's 'connection closed' line comes
    // after every byte it sent has been received here.
    socket.on('end', () => socket.end())
    onSocket(socket)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  return { port: (server.address() as net.AddressInfo).port, received }
}

const MALFORMED = 'drawbridge_mqtt_malformed_total'

// Every level against every broker that speaks it (Aedes has no MQTT 5).
const levels: { level: 3 | 4 | 5; subprotocol: string; broker: 'aedes' | 'mosquitto' }[] = [
  ...BROKER_KINDS.map((broker) => ({ level: 3 as const, subprotocol: 'mqttv3.1', broker })),
  ...BROKER_KINDS.map((broker) => ({ level: 4 as const, subprotocol: 'mqtt', broker })),
  ...(MOSQUITTO ? [{ level: 5 as const, subprotocol: 'mqtt', broker: 'mosquitto' as const }] : []),
]

for (const { level, subprotocol, broker: kind } of levels) {
  t.test(`MQTT.js at protocol level ${level} through the framers (${kind})`, async (t) => {
    const broker = await startBroker(t, kind)
    const gw = await startTestGateway(t, broker.port)
    const options: IClientOptions = {
      protocolVersion: level,
      ...(level === 3 && { protocolId: 'MQIsdp' }),
      wsOptions: { protocol: subprotocol },
      reconnectPeriod: 0,
      clientId: `inspect-${level}`,
      username: 'user',
      password: 'secret',
    }
    const client = await connectAsync(gw.url, options)
    t.teardown(() => client.end(true))
    t.ok(
      [...gw.gateway.connections.values()].every((c) => c.inspecting),
      'the connection is inspected (mqtt.inspect defaults to true)',
    )
    await client.subscribeAsync('inspect/echo', { qos: 1 })
    // Several sizes: a remaining length of 1, 2 and 3 bytes, and a payload over many frames.
    for (const size of [10, 300, 70_000]) {
      const payload = pattern(size, level)
      const got = nextMessage(client, 'inspect/echo')
      await client.publishAsync('inspect/echo', payload, { qos: 1 })
      t.equal(sha256((await got).payload), sha256(payload), `${size} bytes arrive unchanged`)
    }
    await client.endAsync()
    const closed = await gw.waitForLog((l) => l.msg === 'connection closed')
    // Whichever side closes first: the broker after the DISCONNECT (1000), or MQTT.js, whose
    // close frame carries no code (1005); Mosquitto is quick enough to make it a race.
    t.ok([1000, 1005].includes(closed.code as number), `a clean end (${String(closed.code)})`)
    const s = await scrape(gw.adminUrl)
    for (const sender of ['client', 'broker']) {
      for (const reason of ['header_flags', 'expected_connect', 'packet_length']) {
        t.equal(value(s, MALFORMED, { sender, reason }), 0, `no ${sender} ${reason}`)
      }
    }
  })
}

t.test('a malformed client packet closes 1002 before any of it reaches the broker', async (t) => {
  const broker = await recordingBroker(t)
  const gw = await startTestGateway(t, broker.port)
  const client = await openRawClient(t, gw.url)
  const connect = connectPacket('bad-qos')
  // A PUBLISH with QoS 3 [MQTT-3.3.1-4], sent in the same frame as the CONNECT before it.
  const bad = Buffer.from([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01])
  client.ws.send(Buffer.concat([connect, bad]))
  const closed = await client.closed
  t.equal(closed.code, 1002)
  t.match(closed.reason, /^malformed MQTT from the client: a PUBLISH with QoS 3/)
  t.ok(Buffer.byteLength(closed.reason) <= 123, 'the reason fits a close frame')
  const line = await gw.waitForLog((l) => l.msg === 'connection closed')
  t.match(line, { code: 1002, initiator: 'gateway', reason: /QoS 3/ })
  t.equal(
    Buffer.concat(broker.received).toString('hex'),
    connect.toString('hex'),
    'the broker got the CONNECT and nothing of the bad PUBLISH',
  )
  const warned = await gw.waitForLog((l) => l.msg === 'malformed MQTT packet; closing')
  t.match(warned, { reason: 'header_flags', sender: 'client' })
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, MALFORMED, { sender: 'client', reason: 'header_flags' }), 1, 'counted')
  t.equal(value(s, 'drawbridge_closes_total', { code: '1002', initiator: 'gateway' }), 1)
})

t.test('a first packet that is not a CONNECT is refused with nothing forwarded', async (t) => {
  const broker = await recordingBroker(t)
  const gw = await startTestGateway(t, broker.port)
  const client = await openRawClient(t, gw.url)
  client.ws.send(encode({ cmd: 'pingreq' }))
  const closed = await client.closed
  t.equal(closed.code, 1002)
  t.match(closed.reason, /the first packet is a PINGREQ, not a CONNECT/)
  await gw.waitForLog((l) => l.msg === 'connection closed')
  t.equal(Buffer.concat(broker.received).length, 0, 'the broker got no byte')
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, MALFORMED, { sender: 'client', reason: 'expected_connect' }), 1)
})

t.test('a long framer message is cut to fit the close frame', async (t) => {
  const broker = await recordingBroker(t)
  const gw = await startTestGateway(t, broker.port)
  const client = await openRawClient(t, gw.url)
  // A CONNECT whose client id length runs past its remaining length: a long message.
  const connect = connectPacket('x')
  connect.writeUInt16BE(500, 12) // the client identifier's length field
  client.ws.send(connect)
  const closed = await client.closed
  t.equal(closed.code, 1002)
  t.ok(Buffer.byteLength(closed.reason) <= 123, `fits: ${closed.reason}`)
  t.match(closed.reason, /^malformed MQTT from the client: the CONNECT's client identifier/)
  await gw.waitForLog((l) => l.msg === 'connection closed')
  t.equal(Buffer.concat(broker.received).length, 0, 'the broker got no byte of the CONNECT')
})

t.test('a malformed broker packet closes 1011 and is not forwarded', async (t) => {
  // Answers the CONNECT with a good CONNACK, then a SUBACK with bad header flags.
  const connack = Buffer.from([0x20, 0x02, 0x00, 0x00])
  const broker = await recordingBroker(t, (socket) => {
    socket.once('data', () => socket.write(Buffer.concat([connack, Buffer.from([0x92, 0x03])])))
  })
  const gw = await startTestGateway(t, broker.port)
  const ws = new WebSocket(gw.url, ['mqtt'])
  t.teardown(() => ws.terminate())
  const got: Buffer[] = []
  ws.on('message', (data: Buffer) => got.push(data))
  await once(ws, 'open')
  ws.send(connectPacket('broker-breaks'))
  const [code, reason] = (await once(ws, 'close')) as [number, Buffer]
  t.equal(code, 1011)
  t.match(reason.toString(), /^malformed MQTT from the broker: a SUBACK must have header flags/)
  t.equal(Buffer.concat(got).toString('hex'), connack.toString('hex'), 'only the CONNACK came')
  await gw.waitForLog((l) => l.msg === 'connection closed')
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, MALFORMED, { sender: 'broker', reason: 'header_flags' }), 1)
  t.equal(value(s, 'drawbridge_closes_total', { code: '1011', initiator: 'gateway' }), 1)
})

t.test('mqtt.inspect=false is the blind pipe: no framer, bad bytes forwarded', async (t) => {
  const broker = await recordingBroker(t)
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_MQTT_INSPECT: 'false' })
  const client = await openRawClient(t, gw.url)
  const bytes = Buffer.from([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01])
  client.ws.send(bytes)
  const [connection] = [...gw.gateway.connections.values()]
  t.equal(connection?.inspecting, false, 'no framer')
  client.ws.close(1000, 'done')
  const line = await gw.waitForLog((l) => l.msg === 'connection closed')
  t.match(line, { code: 1000, initiator: 'client' })
  t.equal(Buffer.concat(broker.received).toString('hex'), bytes.toString('hex'), 'forwarded')
})

t.test(
  'mqtts: a malformed client packet ends the TLS connection, logged and counted',
  async (t) => {
    const pki = testPki()
    const broker = await recordingBroker(t)
    const files = writeServerFiles(t, pki)
    const gw = await startTestGateway(
      t,
      broker.port,
      tlsEnv(files, { DRAWBRIDGE_TLS_CLIENT_AUTH: 'required', DRAWBRIDGE_TCP_ENABLED: 'true' }),
    )
    const socket = tls.connect({
      host: '127.0.0.1',
      port: gw.mqttsPort ?? 0,
      ca: pki.ca.cert,
      cert: pki.clients.good.cert,
      key: pki.clients.good.key,
    })
    t.teardown(() => socket.destroy())
    socket.on('error', () => undefined)
    await once(socket, 'secureConnect')
    const connect = connectPacket('mqtts-bad')
    socket.write(Buffer.concat([connect, Buffer.from([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01])]))
    socket.resume()
    await once(socket, 'close')
    const line = await gw.waitForLog((l) => l.msg === 'connection closed' && l.listener === 'mqtts')
    t.match(line, {
      initiator: 'gateway',
      reason: /^malformed MQTT from the client: a PUBLISH with QoS 3/,
    })
    t.equal(line.code, undefined, 'mqtts has no close code')
    t.equal(
      Buffer.concat(broker.received).toString('hex'),
      connect.toString('hex'),
      'the broker got the CONNECT and nothing of the bad PUBLISH',
    )
    const s = await scrape(gw.adminUrl)
    t.equal(value(s, MALFORMED, { sender: 'client', reason: 'header_flags' }), 1)
  },
)

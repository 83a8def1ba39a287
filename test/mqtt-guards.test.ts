// The MQTT guards of mqtt.inspect: mqtt.connectTimeout (no complete CONNECT in time: 1008, the
// broker socket closed too), mqtt.maxPacketSize (a client packet over it is refused from its
// header: MQTT 5 clients get DISCONNECT 0x95 first, every client 1009) and the protocol level
// against the WebSocket subprotocol (let through, counted).
import { once } from 'node:events'
import net from 'node:net'
import { connectAsync } from 'mqtt'
import mqttPacket from 'mqtt-packet'
import t from 'tap'
import { WebSocket } from 'ws'
import { BROKER_KINDS, MOSQUITTO, startBroker, type Teardown } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { nextMessage } from './helpers/mqtt.js'
import { scrape, value } from './helpers/scrape.js'
import { CONNACK_V5, scriptedBroker } from './helpers/scripted-broker.js'
import { connectPacket, encode, openRawClient } from './helpers/wsmqtt.js'

const REFUSALS = 'drawbridge_mqtt_refusals_total'

/** A stand-in broker: records every byte it receives, answers each CONNECT with `connack`. */
async function recordingBroker(
  t: Teardown,
  connack: Buffer,
): Promise<{ port: number; received: Buffer[] }> {
  const received: Buffer[] = []
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => undefined)
    socket.once('data', () => socket.write(connack))
    socket.on('data', (chunk: Buffer) => received.push(chunk))
    socket.on('end', () => socket.end())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  return { port: (server.address() as net.AddressInfo).port, received }
}

for (const kind of BROKER_KINDS) {
  t.test(
    `no complete CONNECT within mqtt.connectTimeout: 1008, broker socket closed (${kind})`,
    async (t) => {
      const broker = await startBroker(t, kind)
      const gw = await startTestGateway(t, broker.port, {
        DRAWBRIDGE_MQTT_CONNECT_TIMEOUT: '400ms',
      })
      // A client that connects in time, opened together with the two that do not.
      const timely = await connectAsync(gw.url, { protocolVersion: 4, reconnectPeriod: 0 })
      t.teardown(() => timely.end(true))
      // Before either opens: the gateway's clock for them starts later than this.
      const started = Date.now()
      const silent = await openRawClient(t, gw.url)
      const partial = await openRawClient(t, gw.url)
      partial.ws.send(connectPacket('half').subarray(0, 6)) // a CONNECT that never ends
      const [a, b] = await Promise.all([silent.closed, partial.closed])
      t.ok(Date.now() - started >= 400, 'not before the timeout')
      for (const closed of [a, b]) {
        t.equal(closed.code, 1008)
        t.equal(closed.reason, 'no MQTT CONNECT within mqtt.connectTimeout')
      }
      const lines = await gw.waitForLogs((l) => l.msg === 'connection closed' && l.code === 1008, 2)
      t.equal(lines.length, 2)
      t.equal(gw.gateway.connections.size, 1, 'only the timely client is left')
      t.equal(gw.gateway.brokerSocketsOpen, 1, 'the two broker sockets are closed')
      await timely.subscribeAsync('guards/alive')
      const got = nextMessage(timely, 'guards/alive')
      await timely.publishAsync('guards/alive', 'still here')
      t.equal((await got).payload.toString(), 'still here', 'the timely client was left alone')
      const s = await scrape(gw.adminUrl)
      t.equal(value(s, REFUSALS, { reason: 'connect_timeout' }), 2, 'counted')
      t.equal(value(s, 'drawbridge_closes_total', { code: '1008', initiator: 'gateway' }), 2)
    },
  )
}

t.test('a client packet over mqtt.maxPacketSize is refused from its header', async (t) => {
  const broker = await recordingBroker(t, Buffer.from([0x20, 0x02, 0x00, 0x00]))
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_MQTT_MAX_PACKET_SIZE: '100' })
  const client = await openRawClient(t, gw.url)
  const connect = connectPacket('big')
  const publish = (size: number): Buffer =>
    encode({
      cmd: 'publish',
      topic: 't',
      // 2 bytes of header, 3 of topic: the packet is `size` bytes long.
      payload: Buffer.alloc(size - 5, 0x61),
      qos: 0,
      dup: false,
      retain: false,
    })
  const fits = publish(100)
  t.equal(fits.length, 100)
  const tooBig = publish(101)
  client.ws.send(Buffer.concat([connect, fits]))
  await client.next('connack')
  // Only the header of the big one: refused before the rest is even sent.
  client.ws.send(tooBig.subarray(0, 2))
  const closed = await client.closed
  t.equal(closed.code, 1009)
  t.equal(closed.reason, 'MQTT packet larger than mqtt.maxPacketSize')
  t.notOk(
    client.packets.some((p) => p.cmd === 'disconnect'),
    'no DISCONNECT below MQTT 5',
  )
  await gw.waitForLog((l) => l.msg === 'connection closed')
  t.equal(
    Buffer.concat(broker.received).toString('hex'),
    Buffer.concat([connect, fits]).toString('hex'),
    'the packet of exactly maxPacketSize went through, nothing of the larger one',
  )
  const warned = await gw.waitForLog(
    (l) => l.msg === 'MQTT packet over mqtt.maxPacketSize; closing',
  )
  t.match(warned, { size: 101, maxPacketSize: 100, level: 4, clientId: 'big' }, 'names the client')
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, REFUSALS, { reason: 'packet_too_large' }), 1)
})

t.test('MQTT 5: DISCONNECT 0x95 to the client, then 1009 (raw)', async (t) => {
  // An MQTT 5 CONNACK: flags, reason code 0, property length 0.
  const broker = await recordingBroker(t, Buffer.from([0x20, 0x03, 0x00, 0x00, 0x00]))
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_MQTT_MAX_PACKET_SIZE: '64' })
  const ws = new WebSocket(gw.url, ['mqtt'])
  t.teardown(() => ws.terminate())
  const got: Buffer[] = []
  let gotConnack: () => void = () => undefined
  const connacked = new Promise<void>((resolve) => (gotConnack = resolve))
  ws.on('message', (data: Buffer) => {
    got.push(data)
    gotConnack()
  })
  await once(ws, 'open')
  ws.send(connectPacket('v5', { protocolVersion: 5 }))
  await connacked
  ws.send(Buffer.from([0x30, 0x7f])) // a PUBLISH header: 129 bytes
  const [code] = (await once(ws, 'close')) as [number, Buffer]
  t.equal(code, 1009)
  t.equal(
    Buffer.concat(got).toString('hex'),
    '2003000000' + 'e0029500',
    'the CONNACK, then the DISCONNECT with reason 0x95 and no properties',
  )
})

t.test('MQTT 5: a broker packet in flight ends before the DISCONNECT 0x95 (raw)', async (t) => {
  const broker = await scriptedBroker(t)
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_MQTT_MAX_PACKET_SIZE: '64' })
  const client = await openRawClient(t, gw.url, 'mqtt', { protocolVersion: 5 })
  client.ws.send(connectPacket('v5-busy', { protocolVersion: 5 }))
  await client.next('connack')
  const session = await broker.nextSession()
  const publish = (payload: Buffer): Buffer =>
    mqttPacket.generate(
      { cmd: 'publish', topic: 'busy', payload, qos: 0, dup: false, retain: false },
      { protocolVersion: 5 },
    )
  const inFlight = publish(Buffer.alloc(1_000, 0x61))
  const after = publish(Buffer.from('never forwarded'))
  // Half the broker's PUBLISH has reached the client when it sends its oversized header.
  session.socket.write(inFlight.subarray(0, 500))
  await client.until(() => Buffer.concat(client.received).length >= CONNACK_V5.length + 500)
  client.ws.send(Buffer.from([0x30, 0x7f]))
  await gw.waitForLog(
    (l) => l.msg === 'waiting for the broker packet in flight before the DISCONNECT',
  )
  session.socket.write(Buffer.concat([inFlight.subarray(500), after]))
  const closed = await client.closed
  t.equal(closed.code, 1009)
  t.equal(
    Buffer.concat(client.received).toString('hex'),
    Buffer.concat([CONNACK_V5, inFlight, Buffer.from([0xe0, 0x02, 0x95, 0x00])]).toString('hex'),
    'the whole PUBLISH, then the DISCONNECT; nothing of the packet after it',
  )
  t.same(
    client.packets.map((p) => p.cmd),
    ['connack', 'publish', 'disconnect'],
  )
})

t.test('MQTT 5 with MQTT.js and Mosquitto: Packet too large', { skip: !MOSQUITTO }, async (t) => {
  const broker = await startBroker(t, 'mosquitto')
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_MQTT_MAX_PACKET_SIZE: '1KiB' })
  const client = await connectAsync(gw.url, { protocolVersion: 5, reconnectPeriod: 0 })
  t.teardown(() => client.end(true))
  const disconnect = new Promise<{ reasonCode?: number }>((resolve) =>
    client.once('disconnect', resolve),
  )
  client.publish('guards/big', Buffer.alloc(2048))
  t.equal((await disconnect).reasonCode, 0x95, 'MQTT.js reads DISCONNECT Packet too large')
  const line = await gw.waitForLog((l) => l.msg === 'connection closed')
  t.match(line, { code: 1009, initiator: 'gateway' })
})

// The levels below 5 have no DISCONNECT from a server: MQTT.js sees the close 1009 alone, and
// Mosquitto never sees the PUBLISH (a subscriber on its own TCP port would get it).
for (const level of [3, 4] as const) {
  t.test(
    `MQTT.js ${level === 3 ? '3.1' : '3.1.1'} and Mosquitto: a packet over maxPacketSize never reaches the broker`,
    { skip: MOSQUITTO ? false : 'mosquitto is not installed here; CI installs it' },
    async (t) => {
      const broker = await startBroker(t, 'mosquitto')
      const gw = await startTestGateway(t, broker.port, {
        DRAWBRIDGE_MQTT_MAX_PACKET_SIZE: '1KiB',
      })
      const watcher = await connectAsync(`mqtt://127.0.0.1:${broker.port}`, {
        reconnectPeriod: 0,
      })
      t.teardown(() => watcher.end(true))
      const seen: number[] = []
      watcher.on('message', (_topic, payload) => seen.push(payload.length))
      await watcher.subscribeAsync('guards/size', { qos: 1 })
      const client = await connectAsync(gw.url, {
        protocolVersion: level,
        ...(level === 3 && { protocolId: 'MQIsdp' }),
        reconnectPeriod: 0,
      })
      t.teardown(() => client.end(true))
      let disconnects = 0
      client.on('disconnect', () => disconnects++)
      const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
      // One that fits (its PUBACK proves Mosquitto had it), then one over the limit.
      await client.publishAsync('guards/size', Buffer.alloc(512), { qos: 1 })
      client.publish('guards/size', Buffer.alloc(2048), { qos: 1 })
      await closed
      const line = await gw.waitForLog((l) => l.msg === 'connection closed')
      t.match(line, { code: 1009, initiator: 'gateway', protocolLevel: level })
      t.equal(disconnects, 0, 'no DISCONNECT below MQTT 5')
      // A marker after the big one, straight to the broker: once it arrives, anything the
      // gateway had let through would have arrived before it.
      const marker = new Promise<void>((resolve) =>
        watcher.on('message', (_topic, payload) => {
          if (payload.length === 1) resolve()
        }),
      )
      await watcher.publishAsync('guards/size', Buffer.alloc(1), { qos: 1 })
      await marker
      t.same(seen, [512, 1], 'Mosquitto got the 512-byte message and never the 2 KiB one')
    },
  )
}

const mismatches: {
  level: 3 | 4
  subprotocol: string
  label: string
}[] = [
  { level: 4, subprotocol: 'mqttv3.1', label: 'level 4 on mqttv3.1' },
  { level: 3, subprotocol: 'mqtt', label: 'level 3 on mqtt' },
]

for (const { level, subprotocol, label } of mismatches) {
  for (const kind of BROKER_KINDS) {
    t.test(`a CONNECT at ${label} is let through and counted (${kind})`, async (t) => {
      const broker = await startBroker(t, kind)
      const gw = await startTestGateway(t, broker.port)
      // Raw: MQTT.js picks the subprotocol from the level itself.
      const client = await openRawClient(t, gw.url, subprotocol)
      client.ws.send(
        connectPacket(`mismatch-${level}`, {
          protocolVersion: level,
          protocolId: level === 3 ? 'MQIsdp' : 'MQTT',
        }),
      )
      t.match(await client.next('connack'), { returnCode: 0 }, 'let through to the broker')
      const s = await scrape(gw.adminUrl)
      t.equal(
        value(s, 'drawbridge_mqtt_subprotocol_mismatch_total', {
          subprotocol,
          level: String(level),
        }),
        1,
        'counted',
      )
      const line = await gw.waitForLog((l) => l.msg.startsWith('CONNECT protocol level does not'))
      t.match(line, { protocol: subprotocol, protocolLevel: level })
    })
  }
}

t.test('a CONNECT whose level matches its subprotocol is not counted', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port)
  const client = await connectAsync(gw.url, { protocolVersion: 4, reconnectPeriod: 0 })
  t.teardown(() => client.end(true))
  await client.subscribeAsync('guards/match')
  const s = await scrape(gw.adminUrl)
  t.notMatch(s.text, /^drawbridge_mqtt_subprotocol_mismatch_total\{/m, 'no series at all')
})

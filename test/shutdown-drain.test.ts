// Drain in MQTT (issue 13): on shutdown an MQTT 5 client is sent DISCONNECT 0x8B Server shutting
// down, or 0x9C Use another server with shutdown.serverReference, before the close 1001 (mqtts:
// the TLS close); 3.1 and 3.1.1 clients get the close alone. The DISCONNECT is a whole packet
// after a whole broker packet, and shutdown.spread spreads the closes over time. The last case
// runs the built CLI (dist/), as SIGTERM reaches it in production.
import mqtt, { type IDisconnectPacket, type MqttClient } from 'mqtt'
import mqttPacket from 'mqtt-packet'
import t from 'tap'
import { GOODBYE_WAIT_MS } from '../src/bridge/connection.js'
import { encodeDisconnect } from '../src/mqtt/disconnect.js'
import { MOSQUITTO, startBroker } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { nextMessage } from './helpers/mqtt.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { listeningPort, spawnGateway } from './helpers/process.js'
import { CONNACK_V5, scriptedBroker } from './helpers/scripted-broker.js'
import { connectPacket, openRawClient, type RawMqttClient } from './helpers/wsmqtt.js'

const SHUTTING_DOWN = { code: 1001, reason: 'server shutting down' }

/**
 * Resolves once MQTT.js's connection has closed: with the DISCONNECT it was sent before, or
 * undefined when it closed without one.
 */
function disconnectThenClose(client: MqttClient): Promise<IDisconnectPacket | undefined> {
  let told: IDisconnectPacket | undefined
  client.once('disconnect', (packet) => (told = packet))
  return new Promise((resolve) => client.once('close', () => resolve(told)))
}

async function rawSession(
  t: Parameters<typeof openRawClient>[0],
  url: string,
  level: 4 | 5,
): Promise<RawMqttClient> {
  const client = await openRawClient(t, url, 'mqtt', { protocolVersion: level })
  client.ws.send(
    connectPacket(`raw-${level}-${Math.random().toString(16).slice(2, 8)}`, {
      protocolVersion: level,
    }),
  )
  await client.next('connack')
  return client
}

function publish(payload: Buffer): Buffer {
  return mqttPacket.generate(
    { cmd: 'publish', topic: 'drain', payload, qos: 0, dup: false, retain: false },
    { protocolVersion: 5 },
  )
}

t.test(
  'MQTT 5: DISCONNECT 0x8B, then 1001; MQTT 3.1.1: the 1001 alone',
  { skip: !MOSQUITTO },
  async (t) => {
    const broker = await startBroker(t, 'mosquitto')
    const gw = await startTestGateway(t, broker.port)
    const v5 = await mqtt.connectAsync(gw.url, { protocolVersion: 5, reconnectPeriod: 0 })
    t.teardown(() => v5.end(true))
    const v4 = await mqtt.connectAsync(gw.url, { protocolVersion: 4, reconnectPeriod: 0 })
    t.teardown(() => v4.end(true))
    // Traffic first, so the goodbye follows real broker packets.
    await v5.subscribeAsync('drain/live')
    const got = nextMessage(v5, 'drain/live')
    await v4.publishAsync('drain/live', 'before the drain')
    t.equal((await got).payload.toString(), 'before the drain')
    const raw5 = await rawSession(t, gw.url, 5)
    const raw4 = await rawSession(t, gw.url, 4)
    const told5 = disconnectThenClose(v5)
    const told4 = disconnectThenClose(v4)
    let readyWhenTold: boolean | undefined
    v5.once('disconnect', () => (readyWhenTold = gw.gateway.readiness.status().ready))

    await gw.gateway.close()

    const packet = await told5
    t.equal(packet?.reasonCode, 0x8b, 'MQTT.js 5 reads Server shutting down')
    t.notOk(packet?.properties?.serverReference, 'no Server Reference without the setting')
    t.equal(readyWhenTold, false, '/readyz already said 503 when the DISCONNECT came')
    t.equal(await told4, undefined, 'MQTT.js 3.1.1 is sent no DISCONNECT')
    t.same(await raw5.closed, SHUTTING_DOWN)
    t.same(await raw4.closed, SHUTTING_DOWN)
    t.same(
      raw5.packets.map((p) => p.cmd),
      ['connack', 'disconnect'],
    )
    t.ok(
      Buffer.concat(raw5.received).subarray(-4).equals(encodeDisconnect(0x8b)),
      'the stream ends with the whole DISCONNECT, e0 02 8b 00',
    )
    t.same(
      raw4.packets.map((p) => p.cmd),
      ['connack'],
      'a 3.1.1 stream holds no DISCONNECT',
    )
    const closes = gw.logs.filter((l) => l.msg === 'connection closed')
    t.equal(closes.length, 4)
    t.ok(
      closes.every((l) => l.code === 1001 && l.initiator === 'gateway'),
      'every client closed 1001 by the gateway',
    )
  },
)

t.test(
  'shutdown.serverReference: 0x9C Use another server, with the reference',
  { skip: !MOSQUITTO },
  async (t) => {
    const reference = 'mqtt-b.example.com:443'
    const broker = await startBroker(t, 'mosquitto')
    const gw = await startTestGateway(t, broker.port, {
      DRAWBRIDGE_SHUTDOWN_SERVER_REFERENCE: reference,
    })
    const v5 = await mqtt.connectAsync(gw.url, { protocolVersion: 5, reconnectPeriod: 0 })
    t.teardown(() => v5.end(true))
    const raw5 = await rawSession(t, gw.url, 5)
    const raw4 = await rawSession(t, gw.url, 4)
    const told = disconnectThenClose(v5)

    await gw.gateway.close()

    const packet = await told
    t.equal(packet?.reasonCode, 0x9c, 'MQTT.js reads Use another server')
    t.equal(packet?.properties?.serverReference, reference, 'and the Server Reference')
    t.same(await raw5.closed, SHUTTING_DOWN)
    const expected = encodeDisconnect(0x9c, { serverReference: reference })
    t.ok(
      Buffer.concat(raw5.received).subarray(-expected.length).equals(expected),
      'the stream ends with the whole DISCONNECT',
    )
    t.same(
      raw5.packets.map((p) => p.cmd),
      ['connack', 'disconnect'],
    )
    t.same(await raw4.closed, SHUTTING_DOWN)
    t.same(
      raw4.packets.map((p) => p.cmd),
      ['connack'],
      'still nothing for 3.1.1',
    )
  },
)

t.test('a broker packet in flight ends whole before the DISCONNECT 0x8B', async (t) => {
  const broker = await scriptedBroker(t)
  const gw = await startTestGateway(t, broker.port)
  const client = await rawSession(t, gw.url, 5)
  const session = await broker.nextSession()
  const inFlight = publish(Buffer.alloc(4_000, 0x62))
  const next = publish(Buffer.from('after the goodbye: never forwarded'))
  session.socket.write(inFlight.subarray(0, 1_500))
  await client.until(() => Buffer.concat(client.received).length >= CONNACK_V5.length + 1_500)

  const closing = gw.gateway.close()
  await gw.waitForLog(
    (l) => l.msg === 'waiting for the broker packet in flight before the DISCONNECT',
  )
  // The rest of it, and a whole packet after it, in one write: the gateway must cut between.
  session.socket.write(Buffer.concat([inFlight.subarray(1_500), next]))
  t.same(await client.closed, SHUTTING_DOWN)
  await closing
  t.equal(
    Buffer.concat(client.received).toString('hex'),
    Buffer.concat([CONNACK_V5, inFlight, encodeDisconnect(0x8b)]).toString('hex'),
    'CONNACK, the whole PUBLISH, the DISCONNECT; nothing after',
  )
  t.same(
    client.packets.map((p) => p.cmd),
    ['connack', 'publish', 'disconnect'],
  )
})

t.test('a broker packet that does not end in time: the close alone, nothing torn', async (t) => {
  const broker = await scriptedBroker(t)
  const gw = await startTestGateway(t, broker.port)
  const client = await rawSession(t, gw.url, 5)
  const session = await broker.nextSession()
  const inFlight = publish(Buffer.alloc(4_000, 0x63))
  const part = inFlight.subarray(0, 1_500)
  session.socket.write(part)
  await client.until(() => Buffer.concat(client.received).length >= CONNACK_V5.length + 1_500)

  const started = performance.now()
  await gw.gateway.close()
  t.same(await client.closed, SHUTTING_DOWN)
  t.ok(performance.now() - started >= GOODBYE_WAIT_MS, 'after the wait, not before')
  t.equal(
    Buffer.concat(client.received).toString('hex'),
    Buffer.concat([CONNACK_V5, part]).toString('hex'),
    'no DISCONNECT inside the unfinished PUBLISH',
  )
  await gw.waitForLog((l) => l.msg.startsWith('the broker packet in flight did not end in time'))
})

t.test('after a CONNACK that refused the client: the close alone', async (t) => {
  // Reason code 0x87 Not authorized; the broker keeps its side open, so the shutdown comes
  // first. MQTT 5 allows no packet but AUTH before a successful CONNACK [MQTT-3.2.0-1].
  const broker = await scriptedBroker(t, Buffer.from([0x20, 0x03, 0x00, 0x87, 0x00]))
  const gw = await startTestGateway(t, broker.port)
  const client = await rawSession(t, gw.url, 5)
  await gw.gateway.close()
  t.same(await client.closed, SHUTTING_DOWN)
  t.same(
    client.packets.map((p) => p.cmd),
    ['connack'],
  )
})

t.test('shutdown.spread: the closes go out over the spread, not at once', async (t) => {
  const spread = 1_200
  const count = 8
  const broker = await scriptedBroker(t)
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_SHUTDOWN_SPREAD: `${spread}ms`,
    DRAWBRIDGE_SHUTDOWN_GRACE: '4s',
  })
  const clients: RawMqttClient[] = []
  for (let i = 0; i < count; i++) clients.push(await rawSession(t, gw.url, 5))
  const closedAt: number[] = []
  const started = performance.now()
  const allClosed = Promise.all(
    clients.map(async (client) => {
      t.same(await client.closed, SHUTTING_DOWN)
      closedAt.push(performance.now() - started)
    }),
  )
  await gw.gateway.close()
  await allClosed

  const step = spread / count
  closedAt.sort((a, b) => a - b)
  t.comment(`close times (ms): ${closedAt.map((ms) => ms.toFixed(0)).join(' ')}`)
  // The k-th goodbye is not due before k steps: the k-th close cannot come earlier.
  closedAt.forEach((at, k) => {
    t.ok(at >= k * step - 2, `close ${k} at ${at.toFixed(0)} ms, not before ${k * step} ms`)
  })
  const last = closedAt.at(-1) ?? 0
  const first = closedAt[0] ?? 0
  t.ok(last - first >= spread / 2, `spread out: ${(last - first).toFixed(0)} ms first to last`)
  t.ok(last <= spread + 1_000, `all within the spread and a second (${last.toFixed(0)} ms)`)
  for (const client of clients) {
    t.match(client.packets.at(-1), { cmd: 'disconnect', reasonCode: 0x8b })
  }
  const line = await gw.waitForLog((l) => l.msg === 'closing open connections')
  t.match(line, { spreadMs: spread, graceMs: 4_000, open: count })
})

t.test('mqtts: DISCONNECT 0x8B, then the TLS close', { skip: !MOSQUITTO }, async (t) => {
  const pki = testPki()
  const files = writeServerFiles(t, pki)
  const broker = await startBroker(t, 'mosquitto')
  const gw = await startTestGateway(
    t,
    broker.port,
    tlsEnv(files, { DRAWBRIDGE_TCP_ENABLED: 'true', DRAWBRIDGE_TLS_WATCH: 'false' }),
  )
  const url = `mqtts://127.0.0.1:${gw.mqttsPort ?? 0}`
  const options = { ca: pki.ca.cert, rejectUnauthorized: true, reconnectPeriod: 0 }
  const v5 = await mqtt.connectAsync(url, { ...options, protocolVersion: 5 })
  t.teardown(() => v5.end(true))
  const v4 = await mqtt.connectAsync(url, { ...options, protocolVersion: 4 })
  t.teardown(() => v4.end(true))
  const told5 = disconnectThenClose(v5)
  const told4 = disconnectThenClose(v4)

  await gw.gateway.close()

  t.equal((await told5)?.reasonCode, 0x8b, 'MQTT.js 5 over mqtts reads Server shutting down')
  t.equal(await told4, undefined, 'MQTT.js 3.1.1 over mqtts: no DISCONNECT')
  const closes = gw.logs.filter((l) => l.msg === 'connection closed')
  t.same(
    closes.map((l) => [l.listener, l.reason]),
    [
      ['mqtts', 'server shutting down'],
      ['mqtts', 'server shutting down'],
    ],
  )
})

t.test('SIGTERM to the CLI: the env keys reach the drain, 0x9C then 1001, exit 0', async (t) => {
  const broker = await scriptedBroker(t)
  const gw = spawnGateway(t, {
    DRAWBRIDGE_PROFILE: 'development',
    DRAWBRIDGE_LISTEN_HOST: '127.0.0.1',
    DRAWBRIDGE_LISTEN_PORT: '0',
    DRAWBRIDGE_ADMIN_HOST: '127.0.0.1',
    DRAWBRIDGE_UPSTREAM_EMBEDDED: 'false',
    DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${broker.port}`,
    DRAWBRIDGE_SHUTDOWN_GRACE: '3s',
    DRAWBRIDGE_SHUTDOWN_SPREAD: '500ms',
    DRAWBRIDGE_SHUTDOWN_SERVER_REFERENCE: 'replica-b:443',
  })
  const port = await listeningPort(gw)
  const client = await rawSession(t, `ws://127.0.0.1:${port}/mqtt`, 5)
  gw.child.kill('SIGTERM')
  t.same(await client.closed, SHUTTING_DOWN)
  t.match(client.packets.at(-1), {
    cmd: 'disconnect',
    reasonCode: 0x9c,
    properties: { serverReference: 'replica-b:443' },
  })
  t.same(await gw.exited, { code: 0, signal: null }, 'exit 0')
  t.match(
    gw.logs.find((l) => l.msg === 'shutting down'),
    { graceMs: 3_000, spreadMs: 500 },
  )
})

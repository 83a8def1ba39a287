// upstream.connectOn=connect: the 101 first, then the client's CONNECT is read and held, the
// broker dialled, and the held bytes written to it first, unchanged. When no broker accepts the
// client gets a CONNACK it can show (3 Server unavailable; 0x88 with a Reason String at MQTT 5)
// and close 1013, logged and counted. Real gateways, brokers and clients throughout.
import { once } from 'node:events'
import net from 'node:net'
import mqtt, { connectAsync, type IClientOptions, type MqttClient } from 'mqtt'
import mqttPacket, { type Packet } from 'mqtt-packet'
import t from 'tap'
import { WebSocket } from 'ws'
import {
  freePort,
  MOSQUITTO,
  startBroker,
  startSilentBroker,
  type Teardown,
} from './helpers/broker.js'
import { startTestGateway, type TestGateway } from './helpers/gateway.js'
import { nextMessage, pattern, sha256 } from './helpers/mqtt.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { adminGet, scrape, value } from './helpers/scrape.js'
import { connectPacket, encode } from './helpers/wsmqtt.js'
import { Metrics } from '../src/metrics.js'
import type { ConnectAttempt } from '../src/upstream/connector.js'
import {
  CAN_RESET,
  clientFrame,
  RawWsClient,
  upgradeBytes,
  type Kill,
} from './faults/lib/killable-client.js'

const KILLS: Kill[] = CAN_RESET ? ['destroy', 'reset', 'end'] : ['destroy', 'end']

const CONNECT_MODE = { DRAWBRIDGE_UPSTREAM_CONNECT_ON: 'connect' }
const REFUSED_LINE = 'no broker accepted the connection; answered with CONNACK Server unavailable'

/**
 * A TCP relay in front of a real broker that records, per connection, every byte the gateway
 * sent through it (readiness checks open connections that send nothing; they are left out).
 */
async function recordingRelay(
  t: Teardown,
  brokerPort: number,
): Promise<{ port: number; streams: () => Buffer[] }> {
  const received: Buffer[][] = []
  const sockets = new Set<net.Socket>()
  const server = net.createServer((gateway) => {
    const chunks: Buffer[] = []
    received.push(chunks)
    const broker = net.connect(brokerPort, '127.0.0.1')
    for (const socket of [gateway, broker]) {
      sockets.add(socket)
      socket.on('error', () => undefined)
    }
    gateway.on('data', (chunk: Buffer) => chunks.push(chunk))
    gateway.pipe(broker)
    broker.pipe(gateway)
    gateway.on('close', () => broker.destroy())
    broker.on('close', () => gateway.destroy())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  return {
    port: (server.address() as net.AddressInfo).port,
    streams: () => received.filter((c) => c.length > 0).map((c) => Buffer.concat(c)),
  }
}

/** MQTT.js options for a protocol level, with a WebSocket that records every byte it sends. */
function recordedClient(
  level: 3 | 4 | 5,
  clientId: string,
): {
  options: IClientOptions
  sent: Buffer[]
} {
  const sent: Buffer[] = []
  const options: IClientOptions = {
    protocolVersion: level,
    ...(level === 3 && { protocolId: 'MQIsdp' }),
    clientId,
    username: 'user',
    password: 'secret',
    reconnectPeriod: 0,
    // MQTT.js writes through ws.send(); wrapping it records exactly what went on the wire.
    createWebsocket: (url: string, protocols: string[]) => {
      const ws = new WebSocket(url, protocols)
      const send = ws.send.bind(ws) as (data: Buffer, cb?: (err?: Error) => void) => void
      ws.send = ((data: Buffer, cb?: (err?: Error) => void) => {
        sent.push(Buffer.from(data))
        send(data, cb)
      }) as typeof ws.send
      return ws
    },
  }
  return { options, sent }
}

const levels: { level: 3 | 4 | 5; broker: 'aedes' | 'mosquitto' }[] = [
  { level: 3, broker: 'aedes' },
  { level: 4, broker: 'aedes' },
  ...(MOSQUITTO ? [{ level: 5 as const, broker: 'mosquitto' as const }] : []),
]

for (const { level, broker: kind } of levels) {
  t.test(
    `connect mode, MQTT.js level ${level} (${kind}): byte for byte what was sent`,
    async (t) => {
      const broker = await startBroker(t, kind)
      const relay = await recordingRelay(t, broker.port)
      const gw = await startTestGateway(t, relay.port, CONNECT_MODE)
      const { options, sent } = recordedClient(level, `connect-on-${level}`)
      const client = await connectAsync(gw.url, options)
      t.teardown(() => client.end(true))
      const connected = await gw.waitForLog((l) => l.msg === 'broker connected')
      t.equal(connected.broker, `127.0.0.1:${relay.port}`, 'dialled after the CONNECT')
      await client.subscribeAsync('connect-on/echo', { qos: 1 })
      for (const size of [10, 70_000]) {
        const payload = pattern(size, level)
        const got = nextMessage(client, 'connect-on/echo')
        await client.publishAsync('connect-on/echo', payload, { qos: 1 })
        t.equal(sha256((await got).payload), sha256(payload), `${size} bytes round trip`)
      }
      await client.endAsync()
      await gw.waitForLog((l) => l.msg === 'connection closed')
      const [stream, ...others] = relay.streams()
      t.equal(others.length, 0, 'one broker connection carried bytes')
      const clientBytes = Buffer.concat(sent)
      t.equal(clientBytes[0], 0x10, 'the client began with its CONNECT')
      t.equal(stream?.toString('hex'), clientBytes.toString('hex'), 'the broker got every byte')
    },
  )
}

/** Connects MQTT.js at `level` and resolves with the refusal it reports and the CONNACK. */
function refusedConnect(
  url: string,
  level: 3 | 4 | 5,
  extra: IClientOptions = {},
): Promise<{ code: number | undefined; message: string; connack: Packet | undefined }> {
  return new Promise((resolve, reject) => {
    const client: MqttClient = mqtt.connect(url, {
      protocolVersion: level,
      ...(level === 3 && { protocolId: 'MQIsdp' }),
      clientId: `refused-${level}`,
      reconnectPeriod: 0,
      connectTimeout: 5_000,
      ...extra,
    })
    let connack: Packet | undefined
    client.on('packetreceive', (packet) => {
      if (packet.cmd === 'connack') connack = packet
    })
    client.once('connect', () => {
      client.end(true)
      reject(new Error('connected, where a refusal was expected'))
    })
    client.once('error', (err: Error & { code?: number }) => {
      client.end(true)
      resolve({ code: err.code, message: err.message, connack })
    })
  })
}

t.test('broker down: MQTT.js sees Server unavailable at every level', async (t) => {
  const dead = await freePort()
  const gw = await startTestGateway(t, dead, CONNECT_MODE)
  for (const level of [3, 4] as const) {
    const refused = await refusedConnect(gw.url, level)
    t.equal(refused.code, 3, `level ${level}: return code 3`)
    t.equal(refused.message, 'Connection refused: Server unavailable')
  }
  const v5 = await refusedConnect(gw.url, 5)
  t.equal(v5.code, 0x88, 'level 5: reason code 0x88')
  t.match(v5.connack, {
    reasonCode: 0x88,
    properties: {
      reasonString: `no broker accepted the connection: 127.0.0.1:${dead} ECONNREFUSED`,
    },
  })
  const lines = await gw.waitForLogs((l) => l.msg === REFUSED_LINE, 3)
  t.same(
    lines.map((l) => [l.clientId, l.protocolLevel, l.connackCode, l.reason]),
    [
      ['refused-3', 3, 3, 'upstream_refused'],
      ['refused-4', 4, 3, 'upstream_refused'],
      ['refused-5', 5, 0x88, 'upstream_refused'],
    ],
    'each refusal logged with the client id and the answer',
  )
  t.match(lines[0]?.detail, /ECONNREFUSED/)
  await gw.waitForLogs((l) => l.msg === 'connection closed', 3)
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_mqtt_refusals_total', { reason: 'upstream_refused' }), 3)
  t.equal(value(s, 'drawbridge_upstream_errors_total', { reason: 'refused' }), 3)
  t.equal(value(s, 'drawbridge_closes_total', { code: '1013', initiator: 'gateway' }), 3)
  t.equal(value(s, 'drawbridge_handshake_rejections_total', { reason: 'upstream_refused' }), 0)
})

/** A raw WebSocket client: sends `bytes` once open, resolves with all it got and the close. */
async function rawExchange(
  t: Teardown,
  url: string,
  protocol: string,
  bytes: Buffer,
): Promise<{ received: Buffer; code: number; reason: string }> {
  const ws = new WebSocket(url, [protocol])
  t.teardown(() => ws.terminate())
  const received: Buffer[] = []
  ws.on('message', (data: Buffer) => received.push(data))
  await once(ws, 'open')
  ws.send(bytes)
  const [code, reason] = (await once(ws, 'close')) as [number, Buffer]
  return { received: Buffer.concat(received), code, reason: reason.toString() }
}

t.test('broker down, byte by byte: the CONNACK, then close 1013', async (t) => {
  const dead = await freePort()
  const gw = await startTestGateway(t, dead, CONNECT_MODE)
  const v3 = await rawExchange(
    t,
    gw.url,
    'mqttv3.1',
    connectPacket('raw-3', { protocolId: 'MQIsdp', protocolVersion: 3 }),
  )
  t.equal(v3.received.toString('hex'), '20020003', 'MQTT 3.1: return code 3')
  t.same([v3.code, v3.reason], [1013, 'try again later'])
  const v4 = await rawExchange(t, gw.url, 'mqtt', connectPacket('raw-4'))
  t.equal(v4.received.toString('hex'), '20020003', 'MQTT 3.1.1: return code 3')
  t.same([v4.code, v4.reason], [1013, 'try again later'])
  const v5 = await rawExchange(t, gw.url, 'mqtt', connectPacket('raw-5', { protocolVersion: 5 }))
  const reasonString = `no broker accepted the connection: 127.0.0.1:${dead} ECONNREFUSED`
  const expected = mqttPacket.generate(
    { cmd: 'connack', sessionPresent: false, reasonCode: 0x88, properties: { reasonString } },
    { protocolVersion: 5 },
  )
  t.equal(v5.received.toString('hex'), expected.toString('hex'), 'MQTT 5: 0x88 + Reason String')
  t.same([v5.code, v5.reason], [1013, 'try again later'])
})

t.test('a broker that does not answer: Server unavailable, counted as a timeout', async (t) => {
  const silent = await startSilentBroker(t)
  const gw = await startTestGateway(t, silent, {
    ...CONNECT_MODE,
    DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT: '300ms',
  })
  const refused = await refusedConnect(gw.url, 4)
  t.equal(refused.code, 3)
  const line = await gw.waitForLog((l) => l.msg === REFUSED_LINE)
  t.match(line, { reason: 'upstream_timeout', detail: /did not accept within 300 ms/ })
  await gw.waitForLog((l) => l.msg === 'connection closed')
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_mqtt_refusals_total', { reason: 'upstream_timeout' }), 1)
  t.equal(value(s, 'drawbridge_upstream_errors_total', { reason: 'timeout' }), 1)
})

t.test('the next broker in upstream.brokers is tried when the first refuses', async (t) => {
  const dead = await freePort()
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, dead, {
    ...CONNECT_MODE,
    DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${dead},127.0.0.1:${broker.port}`,
  })
  const client = await connectAsync(gw.url, { protocolVersion: 4, reconnectPeriod: 0 })
  t.teardown(() => client.end(true))
  const connected = await gw.waitForLog((l) => l.msg === 'broker connected')
  t.equal(connected.broker, `127.0.0.1:${broker.port}`, 'the second broker')
  const got = nextMessage(client, 'connect-on/second')
  await client.subscribeAsync('connect-on/second')
  await client.publishAsync('connect-on/second', 'via the second')
  t.equal((await got).payload.toString(), 'via the second')
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_upstream_errors_total', { reason: 'refused' }), 1, 'one refusal')
  t.equal(value(s, 'drawbridge_mqtt_refusals_total', { reason: 'upstream_refused' }), 0)
})

/** A gateway whose broker never answers, and a raw client whose CONNECT is being dialled for. */
async function pendingDial(
  t: Teardown,
): Promise<{ gw: TestGateway; ws: WebSocket; closed: Promise<[number, Buffer]> }> {
  const silent = await startSilentBroker(t)
  const gw = await startTestGateway(t, silent, {
    ...CONNECT_MODE,
    DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT: '10s',
  })
  const ws = new WebSocket(gw.url, ['mqtt'])
  t.teardown(() => ws.terminate())
  const closed = once(ws, 'close') as Promise<[number, Buffer]>
  await once(ws, 'open')
  ws.send(connectPacket('pending'))
  // The dial starts in the same tick the CONNECT is read.
  await gw.waitForLog((l) => l.msg === 'mqtt connect')
  return { gw, ws, closed }
}

t.test('a client that leaves while its broker is dialled leaves no broker socket', async (t) => {
  const { gw, ws } = await pendingDial(t)
  t.equal(gw.gateway.brokerSocketsOpen, 1, 'the dial has a socket')
  const listed = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as {
    broker: string | null
    mqtt: { clientId: string } | null
  }[]
  t.match(listed, [{ broker: null, mqtt: { clientId: 'pending' } }], '/connections: no broker yet')
  const dialling = await scrape(gw.adminUrl)
  t.equal(value(dialling, 'drawbridge_upstream_sockets_open'), 1, 'the metric sees the dial')
  const started = Date.now()
  ws.terminate()
  const closed = await gw.waitForLog((l) => l.msg === 'connection closed')
  t.match(closed, { initiator: 'client', clientId: 'pending' })
  t.notOk('broker' in closed, 'it never had a broker')
  await gw.gateway.whenBrokerSocketsClosed()
  t.ok(Date.now() - started < 5_000, 'at once, not after the 10 s connect timeout')
  t.equal(gw.gateway.brokerSocketsOpen, 0, 'the dialling socket is destroyed')
  t.notOk(
    gw.logs.some((l) => l.msg === REFUSED_LINE),
    'nobody left to answer',
  )
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_upstream_errors_total', { reason: 'timeout' }), 0, 'not counted')
  t.equal(value(s, 'drawbridge_upstream_sockets_open'), 0)
})

t.test('a FIN, a RST or a half-close while the broker is dialled: the dial ends', async (t) => {
  const silent = await startSilentBroker(t)
  const gw = await startTestGateway(t, silent, {
    ...CONNECT_MODE,
    DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT: '10s',
  })
  for (const [i, kill] of KILLS.entries()) {
    const client = new RawWsClient(gw.port)
    t.teardown(() => client.socket.destroy())
    client.write(upgradeBytes())
    t.equal((await client.response()).status, 101)
    client.write(clientFrame(connectPacket(`kill-${kill}`)))
    await gw.waitForLogs((l) => l.msg === 'mqtt connect', i + 1)
    t.equal(gw.gateway.brokerSocketsOpen, 1, `${kill}: dialling`)
    const started = Date.now()
    client.kill(kill)
    await gw.waitForLog((l) => l.msg === 'connection closed' && l.clientId === `kill-${kill}`)
    await gw.gateway.whenBrokerSocketsClosed()
    t.ok(Date.now() - started < 5_000, `${kill}: let go at once`)
    t.equal(gw.gateway.brokerSocketsOpen, 0, `${kill}: no broker socket left`)
  }
  t.equal(gw.gateway.connections.size, 0)
})

t.test(
  'shutdown while a broker is dialled: the dial ends with the 1001, not the close',
  async (t) => {
    const silent = await startSilentBroker(t)
    const gw = await startTestGateway(t, silent, {
      ...CONNECT_MODE,
      DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT: '10s',
      DRAWBRIDGE_SHUTDOWN_GRACE: '3s',
    })
    // A raw client that never answers the close frame: the close handshake lasts the whole grace.
    const client = new RawWsClient(gw.port)
    t.teardown(() => client.socket.destroy())
    client.write(upgradeBytes())
    t.equal((await client.response()).status, 101)
    client.write(clientFrame(connectPacket('draining')))
    await gw.waitForLog((l) => l.msg === 'mqtt connect')
    t.equal(gw.gateway.brokerSocketsOpen, 1, 'dialling')
    const started = Date.now()
    const closing = gw.gateway.close()
    await client.until(() => client.closeCode !== undefined)
    t.equal(client.closeCode, 1001, 'the client is told the gateway is going away')
    await gw.gateway.whenBrokerSocketsClosed()
    t.ok(Date.now() - started < 3_000, 'the dial ended before the grace ran out')
    t.equal(gw.gateway.connections.size, 1, 'while the client still has not answered')
    await closing
    t.equal(gw.gateway.connections.size, 0, 'cut once the grace was over')
  },
)

t.test('mqtt.connectTimeout applies in connect mode, and no broker is dialled', async (t) => {
  let accepted = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    accepted++
    sockets.add(socket)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  const gw = await startTestGateway(t, (server.address() as net.AddressInfo).port, {
    ...CONNECT_MODE,
    DRAWBRIDGE_MQTT_CONNECT_TIMEOUT: '300ms',
    // No readiness checks: every connection the broker sees would be the gateway's dial.
    DRAWBRIDGE_ADMIN_ENABLED: 'false',
  })
  const ws = new WebSocket(gw.url, ['mqtt'])
  t.teardown(() => ws.terminate())
  await once(ws, 'open')
  ws.send(connectPacket('slow').subarray(0, 5)) // a CONNECT that never ends
  const waiting = await gw.gateway.metrics.render()
  t.match(waiting, /^drawbridge_connections_active\{listener="ws"\} 1$/m, 'open, waiting')
  t.match(waiting, /^drawbridge_upstream_sockets_open 0$/m, 'with no broker socket')
  const [code, reason] = (await once(ws, 'close')) as [number, Buffer]
  t.same([code, reason.toString()], [1008, 'no MQTT CONNECT within mqtt.connectTimeout'])
  await gw.waitForLog((l) => l.msg === 'connection closed')
  t.equal(accepted, 0, 'the broker never saw a connection')
  const text = await gw.gateway.metrics.render()
  t.match(text, /drawbridge_mqtt_refusals_total\{reason="connect_timeout"\} 1/)
  t.match(text, /drawbridge_upstream_connect_duration_seconds_count 0/, 'no dial succeeded')
  t.notMatch(text, /drawbridge_upstream_errors_total\{reason="\w+"\} [1-9]/, 'none failed')
})

t.test('bytes after the CONNECT are held, the client paused at highWaterMark', async (t) => {
  // The first broker never answers, so the dial waits out its 1 s before the second accepts.
  const silent = await startSilentBroker(t)
  const broker = await startBroker(t, 'aedes')
  const relay = await recordingRelay(t, broker.port)
  const gw = await startTestGateway(t, silent, {
    ...CONNECT_MODE,
    DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${silent},127.0.0.1:${relay.port}`,
    DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT: '1s',
    DRAWBRIDGE_LIMITS_HIGH_WATER_MARK: '64KiB',
  })
  // On the broker itself, so that it does not wait out the silent broker too.
  const subscriber = await connectAsync(`mqtt://127.0.0.1:${broker.port}`, {
    protocolVersion: 4,
    reconnectPeriod: 0,
  })
  t.teardown(() => subscriber.end(true))
  await subscriber.subscribeAsync('connect-on/held', { qos: 0 })
  const messages = 16
  const received: Buffer[] = []
  const allReceived = new Promise<void>((resolve) => {
    subscriber.on('message', (_topic, payload: Buffer) => {
      received.push(payload)
      if (received.length === messages) resolve()
    })
  })
  const ws = new WebSocket(gw.url, ['mqtt'])
  t.teardown(() => ws.terminate())
  await once(ws, 'open')
  const connect = connectPacket('holder')
  const publishes = Array.from({ length: messages }, (_, i) =>
    encode({
      cmd: 'publish',
      topic: 'connect-on/held',
      payload: pattern(16 * 1024, i + 1),
      qos: 0,
      dup: false,
      retain: false,
    }),
  )
  const sent = Buffer.concat([connect, ...publishes])
  // Frames cut at odd places: the hold keeps the stream, not the frames.
  for (let at = 0; at < sent.length; at += 7_001) ws.send(sent.subarray(at, at + 7_001))
  const paused = await gw.waitForLog((l) => l.msg.startsWith('no broker yet; client paused'))
  t.ok((paused.held as number) >= 64 * 1024, 'paused once highWaterMark was held')
  t.ok((paused.held as number) < 64 * 1024 + 7_001, 'and not much later')
  const listed = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as {
    paused: { clientToBroker: boolean }
    broker: string | null
    mqtt: { clientId: string } | null
  }[]
  const view = listed.find((c) => c.mqtt?.clientId === 'holder')
  t.match(view, { paused: { clientToBroker: true }, broker: null }, 'seen paused while dialling')
  await gw.waitForLog((l) => l.msg === 'broker connected' && l.broker === `127.0.0.1:${relay.port}`)
  await allReceived
  t.same(
    received.map((p) => sha256(p)),
    publishes.map((_, i) => sha256(pattern(16 * 1024, i + 1))),
    'every held PUBLISH delivered, in order',
  )
  ws.close()
  await gw.waitForLogs((l) => l.msg === 'connection closed', 1)
  const holder = relay.streams().find((s) => s.subarray(0, connect.length).equals(connect))
  t.equal(holder?.toString('hex'), sent.toString('hex'), 'the broker got the stream unchanged')
})

t.test('a fault of the gateway itself during the dial: logged, 1011, nothing left', async (t) => {
  // A counter that breaks on a failed attempt: connectUpstream's hook throws mid-dial.
  class FaultyMetrics extends Metrics {
    override upstreamAttempt(attempt: ConnectAttempt): void {
      if (!attempt.ok) throw new Error('counter broke')
      super.upstreamAttempt(attempt)
    }
  }
  const faulty = new FaultyMetrics({ version: 'test', perClient: false, maxClientSeries: 10 })
  const dead = await freePort()
  const gw = await startTestGateway(t, dead, CONNECT_MODE, { metrics: faulty })
  const { received, code, reason } = await rawExchange(t, gw.url, 'mqtt', connectPacket('faulty'))
  t.same([code, reason], [1011, 'broker connection failed: internal'])
  t.equal(received.length, 0, 'no CONNACK: the gateway does not know what happened')
  const line = await gw.waitForLog((l) => l.msg === 'broker dial failed')
  t.match(line, { err: { message: 'counter broke' }, clientId: 'faulty' })
  await gw.waitForLog((l) => l.msg === 'connection closed')
  t.equal(gw.gateway.brokerSocketsOpen, 0)
})

const pki = testPki()

t.test('mqtts in connect mode: bridged after the CONNECT, refused in MQTT', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const dead = await freePort()
  const files = writeServerFiles(t, pki)
  const gw = await startTestGateway(
    t,
    broker.port,
    tlsEnv(files, {
      DRAWBRIDGE_TCP_ENABLED: 'true',
      ...CONNECT_MODE,
      // A refusing broker first: the mqtts connection is dialled the same way, second one too.
      DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${dead},127.0.0.1:${broker.port}`,
    }),
  )
  const url = `mqtts://127.0.0.1:${gw.mqttsPort ?? 0}`
  const device = await connectAsync(url, {
    ca: pki.ca.cert,
    rejectUnauthorized: true,
    protocolVersion: 4,
    reconnectPeriod: 0,
    clientId: 'device-1',
  })
  t.teardown(() => device.end(true))
  const connected = await gw.waitForLog((l) => l.msg === 'broker connected')
  t.match(connected, { listener: 'mqtts', broker: `127.0.0.1:${broker.port}` })
  const got = nextMessage(device, 'connect-on/mqtts')
  await device.subscribeAsync('connect-on/mqtts')
  await device.publishAsync('connect-on/mqtts', 'over tls')
  t.equal((await got).payload.toString(), 'over tls')
  await device.endAsync()
  await gw.waitForLog((l) => l.msg === 'connection closed' && l.listener === 'mqtts')
})

t.test('mqtts in connect mode, broker down: CONNACK 3, then the TLS socket closes', async (t) => {
  const dead = await freePort()
  const files = writeServerFiles(t, pki)
  const gw = await startTestGateway(
    t,
    dead,
    tlsEnv(files, { DRAWBRIDGE_TCP_ENABLED: 'true', ...CONNECT_MODE }),
  )
  const url = `mqtts://127.0.0.1:${gw.mqttsPort ?? 0}`
  const refused = await refusedConnect(url, 4, { ca: pki.ca.cert, rejectUnauthorized: true })
  t.equal(refused.code, 3, 'MQTT.js over mqtts reads Server unavailable')
  const line = await gw.waitForLog((l) => l.msg === REFUSED_LINE)
  t.match(line, { listener: 'mqtts', reason: 'upstream_refused', clientId: 'refused-4' })
  const closed = await gw.waitForLog((l) => l.msg === 'connection closed')
  t.match(closed, { listener: 'mqtts', initiator: 'gateway', reason: 'try again later' })
  t.notOk('code' in closed, 'mqtts has no close codes')
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_closes_total', { code: 'none', initiator: 'gateway' }), 1)
  t.equal(value(s, 'drawbridge_mqtt_refusals_total', { reason: 'upstream_refused' }), 1)
})

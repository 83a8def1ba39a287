// /metrics while real clients connect, exchange messages and close: every counter and gauge must
// move by exactly what the clients did, counted on the client side.
import { once } from 'node:events'
import net from 'node:net'
import t from 'tap'
import { WebSocket } from 'ws'
import { createMetrics, OTHER_CLIENTS, type ConnectionCounters } from '../src/metrics.js'
import { freePort, startBroker, startSilentBroker } from './helpers/broker.js'
import { connectCounting } from './helpers/counting-client.js'
import { startTestGateway } from './helpers/gateway.js'
import { rawRequest, upgradeRequest } from './helpers/raw.js'
import { delta, parseExposition, scrape, value } from './helpers/scrape.js'

const C2B = { direction: 'client_to_broker' }
const B2C = { direction: 'broker_to_client' }

t.test('MQTT.js clients move the counters by exactly their bytes and frames', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port)
  const before = await scrape(gw.adminUrl)
  t.equal(value(before, 'drawbridge_connections_active', { listener: 'ws' }), 0)
  t.equal(value(before, 'drawbridge_build_info', { version: '0.1.0', node: process.version }), 1)

  const sub = await connectCounting(gw.url, { clientId: 'obs-sub', protocolVersion: 4 })
  const pub = await connectCounting(gw.url, { clientId: 'obs-pub', protocolVersion: 4 })
  await sub.client.subscribeAsync('obs/metrics', { qos: 1 })
  const payloads = [Buffer.alloc(0), Buffer.alloc(1024, 1), Buffer.alloc(70_000, 2)]
  const received: Buffer[] = []
  const allReceived = new Promise<void>((resolve) => {
    sub.client.on('message', (_topic, payload) => {
      received.push(payload)
      if (received.length === payloads.length) resolve()
    })
  })
  for (const payload of payloads) await pub.client.publishAsync('obs/metrics', payload, { qos: 1 })
  await allReceived
  // The subscriber's PUBACKs are the last bytes of the exchange, and MQTT.js sends each one only
  // after emitting its message. A SUBACK for a SUBSCRIBE sent after them proves the gateway has
  // counted them: it counts each frame before forwarding it, and forwards in order.
  await sub.client.subscribeAsync('obs/metrics/fence', { qos: 0 })
  const puback = 4
  const expectedToBroker = (): number => sub.counts.bytesSent + pub.counts.bytesSent
  t.ok(sub.counts.bytesSent >= 3 * puback, 'subscriber sent its acks')

  const during = await scrape(gw.adminUrl)
  t.equal(value(during, 'drawbridge_connections_active', { listener: 'ws' }), 2, 'two open')
  t.equal(delta(before, during, 'drawbridge_connections_total', { listener: 'ws' }), 2)
  t.equal(delta(before, during, 'drawbridge_bytes_total', C2B), expectedToBroker())
  t.equal(
    delta(before, during, 'drawbridge_bytes_total', B2C),
    sub.counts.bytesReceived + pub.counts.bytesReceived,
  )
  t.equal(
    delta(before, during, 'drawbridge_frames_total', C2B),
    sub.counts.framesSent + pub.counts.framesSent,
  )
  t.equal(
    delta(before, during, 'drawbridge_frames_total', B2C),
    sub.counts.framesReceived + pub.counts.framesReceived,
  )
  t.ok(
    delta(before, during, 'drawbridge_bytes_total', B2C) > 71_024,
    'the payloads went through the gateway',
  )
  t.equal(delta(before, during, 'drawbridge_upstream_connect_duration_seconds_count'), 2)
  t.equal(delta(before, during, 'drawbridge_connection_duration_seconds_count'), 0)

  await Promise.all([sub.client.endAsync(), pub.client.endAsync()])
  await Promise.all([sub.closed, pub.closed])
  await gw.waitForLogs((l) => l.msg === 'connection closed', 2)
  const closes = gw.logs.filter((l) => l.msg === 'connection closed')
  t.equal(closes.length, 2, 'both connections logged their close')
  const after = await scrape(gw.adminUrl)
  t.equal(value(after, 'drawbridge_connections_active', { listener: 'ws' }), 0, 'none open')
  // Closed connections keep counting in the totals: nothing lost, nothing doubled.
  t.equal(delta(before, after, 'drawbridge_bytes_total', C2B), expectedToBroker())
  t.equal(
    delta(before, after, 'drawbridge_bytes_total', B2C),
    sub.counts.bytesReceived + pub.counts.bytesReceived,
  )
  t.equal(
    delta(before, after, 'drawbridge_frames_total', C2B),
    sub.counts.framesSent + pub.counts.framesSent,
  )
  t.same(
    closes.map((l) => [l.bytesToBroker, l.bytesToClient]).sort(),
    [
      [sub.counts.bytesSent, sub.counts.bytesReceived],
      [pub.counts.bytesSent, pub.counts.bytesReceived],
    ].sort(),
    'the close log lines agree with the clients',
  )
  t.equal(delta(before, after, 'drawbridge_connection_duration_seconds_count'), 2)
  const byCloseKind = new Map<string, number>()
  for (const line of closes) {
    const key = `${String(line.code)}/${String(line.initiator)}`
    byCloseKind.set(key, (byCloseKind.get(key) ?? 0) + 1)
  }
  for (const [key, count] of byCloseKind) {
    const [code = '', initiator = ''] = key.split('/')
    t.equal(delta(before, after, 'drawbridge_closes_total', { code, initiator }), count, key)
  }
})

t.test('each handshake refusal increments its own reason, and only that', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_LIMITS_MAX_CONNECTIONS: '1' })
  const reasons = [
    'path',
    'method',
    'malformed',
    'not_websocket',
    'subprotocol',
    'capacity',
    'shutting_down',
    'upstream_refused',
    'upstream_timeout',
    'handshake_timeout',
  ]
  const check = async (
    adminUrl: string,
    reason: string,
    status: number,
    refuse: () => Promise<{ status: number }>,
  ): Promise<void> => {
    const before = await scrape(adminUrl)
    const res = await refuse()
    t.equal(res.status, status, `${reason}: status`)
    const after = await scrape(adminUrl)
    for (const other of reasons) {
      const moved = delta(before, after, 'drawbridge_handshake_rejections_total', {
        reason: other,
      })
      t.equal(moved, other === reason ? 1 : 0, `${reason}: ${other} moved by ${moved}`)
    }
  }
  const initial = await scrape(gw.adminUrl)
  for (const reason of reasons) {
    t.ok(
      initial.samples.has(`drawbridge_handshake_rejections_total{reason="${reason}"}`),
      `${reason} is exposed (at 0) before its first refusal`,
    )
  }

  await check(gw.adminUrl, 'path', 404, () => rawRequest(gw.port, upgradeRequest('/nope')))
  await check(gw.adminUrl, 'method', 405, () =>
    rawRequest(gw.port, [
      'POST /mqtt HTTP/1.1',
      ...upgradeRequest('/mqtt').slice(1),
      'Content-Length: 0',
    ]),
  )
  await check(gw.adminUrl, 'malformed', 400, () =>
    rawRequest(gw.port, upgradeRequest('/mqtt', { 'Sec-WebSocket-Key': 'abc' })),
  )
  await check(gw.adminUrl, 'not_websocket', 426, () =>
    rawRequest(gw.port, ['GET /mqtt HTTP/1.1', 'Host: x', 'Connection: close']),
  )
  await check(gw.adminUrl, 'subprotocol', 400, () =>
    rawRequest(gw.port, upgradeRequest('/mqtt', { 'Sec-WebSocket-Protocol': 'foo' })),
  )
  const impatient = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_WS_HANDSHAKE_TIMEOUT: '300ms',
  })
  await check(impatient.adminUrl, 'handshake_timeout', 408, () =>
    rawRequest(impatient.port, ['GET /mqtt HTTP/1.1', 'Host: x'], {
      timeoutMs: 3000,
      unfinished: true,
    }),
  )
  const first = new WebSocket(gw.url, ['mqtt'])
  await once(first, 'open')
  await check(gw.adminUrl, 'capacity', 503, () => rawRequest(gw.port, upgradeRequest('/mqtt')))

  // shutting_down: an upgrade whose headers finish after shutdown began. The request is
  // written all but its final blank line, shutdown starts, then the blank line follows.
  const beforeShutdown = parseExposition(await gw.gateway.metrics.render())
  const late = net.connect(gw.port, '127.0.0.1')
  late.on('error', () => undefined)
  await once(late, 'connect')
  const lateAnswer = new Promise<string>((resolve) => {
    let data = ''
    late.on('data', (chunk: Buffer) => (data += chunk.toString('latin1')))
    late.on('close', () => resolve(data))
  })
  late.write(`${upgradeRequest('/mqtt').join('\r\n')}\r\n`)
  const closing = gw.gateway.close()
  late.write('\r\n')
  t.match(await lateAnswer, /^HTTP\/1\.1 503 /, 'late upgrade refused while shutting down')
  await closing
  // The registry outlives the admin listener, which closed with the gateway.
  const afterShutdown = parseExposition(await gw.gateway.metrics.render())
  t.equal(
    delta(beforeShutdown, afterShutdown, 'drawbridge_handshake_rejections_total', {
      reason: 'shutting_down',
    }),
    1,
    'shutting_down counted',
  )

  const refused = await startTestGateway(t, await freePort())
  await check(refused.adminUrl, 'upstream_refused', 502, () =>
    rawRequest(refused.port, upgradeRequest('/mqtt')),
  )
  const s = await scrape(refused.adminUrl)
  t.equal(value(s, 'drawbridge_upstream_errors_total', { reason: 'refused' }), 1)

  const silent = await startSilentBroker(t)
  const slow = await startTestGateway(t, silent, { DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT: '300ms' })
  await check(slow.adminUrl, 'upstream_timeout', 504, () =>
    rawRequest(slow.port, upgradeRequest('/mqtt')),
  )
  t.equal(
    value(await scrape(slow.adminUrl), 'drawbridge_upstream_errors_total', { reason: 'timeout' }),
    1,
  )
})

t.test('a client that never answers pings: ping_timeouts_total and a 1006 close', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_WS_PING_INTERVAL: '150ms',
    DRAWBRIDGE_WS_PONG_TIMEOUT: '150ms',
  })
  const before = await scrape(gw.adminUrl)
  // A raw socket completes the upgrade and then never reads or answers anything.
  const socket = net.connect(gw.port, '127.0.0.1')
  socket.on('error', () => undefined)
  t.teardown(() => socket.destroy())
  await once(socket, 'connect')
  socket.write(`${upgradeRequest('/mqtt').join('\r\n')}\r\n\r\n`)
  const closed = await gw.waitForLog((l) => l.msg === 'connection closed', 5_000)
  t.equal(closed.reason, 'ping timeout')
  const after = await scrape(gw.adminUrl)
  t.equal(delta(before, after, 'drawbridge_ping_timeouts_total'), 1)
  t.equal(
    delta(before, after, 'drawbridge_closes_total', { code: '1006', initiator: 'gateway' }),
    1,
  )
})

t.test('backpressure pauses are counted per direction', async (t) => {
  const broker = await startBroker(t, 'aedes')
  // A 1-byte mark: every broker chunk crosses it, so each one pauses the broker side once.
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_LIMITS_HIGH_WATER_MARK: '1' })
  const before = await scrape(gw.adminUrl)
  const c = await connectCounting(gw.url, { clientId: 'obs-bp', protocolVersion: 4 })
  await c.client.subscribeAsync('obs/bp', { qos: 0 })
  await c.client.endAsync()
  await c.closed
  await gw.waitForLog((l) => l.msg === 'connection closed')
  const after = await scrape(gw.adminUrl)
  t.ok(c.counts.framesReceived >= 2, 'CONNACK and SUBACK arrived')
  t.equal(
    delta(before, after, 'drawbridge_backpressure_pauses_total', B2C),
    delta(before, after, 'drawbridge_frames_total', B2C),
    'one pause per broker chunk',
  )
  t.equal(delta(before, after, 'drawbridge_frames_total', B2C), c.counts.framesReceived)
  t.equal(delta(before, after, 'drawbridge_backpressure_pauses_total', C2B), 0)
})

t.test('per-client series are opt-in and capped, the rest counted as other', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const plain = await startTestGateway(t, broker.port)
  t.notMatch((await scrape(plain.adminUrl)).text, /drawbridge_client_/, 'off by default')

  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_METRICS_PER_CLIENT: 'true',
    DRAWBRIDGE_METRICS_MAX_CLIENT_SERIES: '1',
    // PINGREQs with no CONNECT before them: bytes the blind pipe forwards whatever they are.
    DRAWBRIDGE_MQTT_INSPECT: 'false',
  })
  // Two identities over loopback: 127.0.0.1 is seen first and gets the one series;
  // 127.0.0.2 comes later and is counted as "other".
  const a = new WebSocket(gw.url, ['mqtt'], { localAddress: '127.0.0.1' })
  await once(a, 'open')
  await scrape(gw.adminUrl)
  const b = new WebSocket(gw.url, ['mqtt'], { localAddress: '127.0.0.2' })
  await once(b, 'open')
  a.send(Buffer.from([0xc0, 0x00])) // two bytes (a PINGREQ); counted whatever the broker thinks
  b.send(Buffer.from([0xc0, 0x00, 0xc0, 0x00]))
  a.close()
  b.close()
  await Promise.all([once(a, 'close'), once(b, 'close')])
  // Once both closes are logged, every byte the two sent has been counted.
  await gw.waitForLogs((l) => l.msg === 'connection closed', 2)
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_client_bytes_total', { client: '127.0.0.1', ...C2B }), 2)
  t.equal(value(s, 'drawbridge_client_bytes_total', { client: OTHER_CLIENTS, ...C2B }), 4)
  t.notOk(s.text.includes('127.0.0.2'), 'the capped identity has no series of its own')
})

t.test('the cap holds for many identities, live and closed (registry alone)', async (t) => {
  const metrics = createMetrics({
    version: 'test',
    perClient: true,
    maxClientSeries: 3,
    processMetrics: false,
  })
  const live: ConnectionCounters[] = []
  for (let i = 0; i < 50; i++) {
    live.push({
      listener: 'ws',
      clientIdentity: `10.0.0.${i}`,
      openedAt: Date.now(),
      bytesToBroker: 1,
      bytesToClient: 2,
      framesToBroker: 1,
      framesToClient: 1,
      pausesToBroker: 0,
      pausesToClient: 0,
    })
  }
  metrics.addConnectionSource('ws', () => live)
  let s = parseExposition(await metrics.render())
  const clients = new Set(
    [...s.samples.keys()]
      .filter((k) => k.startsWith('drawbridge_client_bytes_total'))
      .map((k) => /client="([^"]*)"/.exec(k)?.[1]),
  )
  t.same([...clients].sort(), ['10.0.0.0', '10.0.0.1', '10.0.0.2', OTHER_CLIENTS].sort())
  t.equal(value(s, 'drawbridge_client_bytes_total', { client: OTHER_CLIENTS, ...B2C }), 94)
  t.equal(value(s, 'drawbridge_bytes_total', B2C), 100)
  t.equal(value(s, 'drawbridge_connections_active', { listener: 'ws' }), 50)

  // Closing moves the counts from live to closed totals; every series stays where it was.
  const gone = live.splice(0, 25)
  for (const c of gone) metrics.connectionClosed({ ...c, pingTimedOut: false, closed: undefined })
  s = parseExposition(await metrics.render())
  t.equal(value(s, 'drawbridge_bytes_total', B2C), 100)
  t.equal(value(s, 'drawbridge_client_bytes_total', { client: '10.0.0.1', ...B2C }), 2)
  t.equal(value(s, 'drawbridge_client_bytes_total', { client: OTHER_CLIENTS, ...B2C }), 94)
  t.equal(value(s, 'drawbridge_connections_active', { listener: 'ws' }), 25)
  t.equal(value(s, 'drawbridge_connection_duration_seconds_count'), 25)
})

t.test('TLS metrics are defined with their labels, for the wss listener to report', async (t) => {
  const metrics = createMetrics({
    version: 'test',
    perClient: false,
    maxClientSeries: 1,
    processMetrics: false,
  })
  metrics.tlsHandshakeFailure('no_client_cert')
  metrics.tlsReload('failure')
  metrics.setCertificateExpiry('wss', new Date('2030-01-02T03:04:05Z'))
  const s = parseExposition(await metrics.render())
  t.equal(value(s, 'drawbridge_tls_handshake_failures_total', { reason: 'no_client_cert' }), 1)
  t.equal(value(s, 'drawbridge_tls_reloads_total', { result: 'failure' }), 1)
  t.equal(value(s, 'drawbridge_tls_reloads_total', { result: 'success' }), 0)
  t.equal(
    value(s, 'drawbridge_tls_certificate_expiry_timestamp_seconds', { listener: 'wss' }),
    Date.UTC(2030, 0, 2, 3, 4, 5) / 1000,
  )
  t.match(s.text, /# HELP drawbridge_tls_certificate_expiry_timestamp_seconds \S/)
})

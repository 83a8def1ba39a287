// Limits per client (limits.perClient*, ipv6Prefix, trackedClients), per listener
// (limits.acceptRate) and per connection (limits.messageRate, byteRate), over real sockets from
// distinct loopback addresses: Linux routes all of 127.0.0.0/8 to lo, so binding a client to
// 127.x.y.z makes it another client to the gateway.
import { once } from 'node:events'
import net from 'node:net'
import tls from 'node:tls'
import mqtt from 'mqtt'
import t from 'tap'
import { WebSocket } from 'ws'
import type { ConnectionView } from '../src/admin/connections.js'
import { loadConfig } from '../src/config/load.js'
import { ClientTable } from '../src/edge/client-limits.js'
import { createMetrics } from '../src/metrics.js'
import { startBroker, type Teardown } from './helpers/broker.js'
import { startTestGateway, type TestGateway } from './helpers/gateway.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { parseResponse, upgradeRequest, type RawResponse } from './helpers/raw.js'
import { adminGet, eventually, scrape, value } from './helpers/scrape.js'
import { connectPacket, encode, openRawClient, type RawMqttClient } from './helpers/wsmqtt.js'

/** A WebSocket from `localAddress`: open, or refused with the status and headers it got. */
function wsFrom(
  t: Teardown,
  url: string,
  localAddress: string,
): Promise<
  | { ws: WebSocket }
  | { status: number; headers: Record<string, string | string[] | undefined>; body: string }
> {
  const ws = new WebSocket(url, 'mqtt', { localAddress })
  t.teardown(() => ws.terminate())
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ ws }))
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (chunk: Buffer) => (body += chunk.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    })
    ws.once('error', reject)
  })
}

async function openFrom(t: Teardown, url: string, localAddress: string): Promise<WebSocket> {
  const outcome = await wsFrom(t, url, localAddress)
  if (!('ws' in outcome)) throw new Error(`refused with ${outcome.status}: ${outcome.body}`)
  return outcome.ws
}

async function closeWs(gw: TestGateway, ws: WebSocket): Promise<void> {
  const before = gw.logs.filter((line) => line.msg === 'connection closed').length
  ws.close()
  await gw.waitForLogs((line) => line.msg === 'connection closed', before + 1)
}

t.test('perClientConnections: 429 past the limit, per address, released once', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_LIMITS_PER_CLIENT_CONNECTIONS: '2',
  })
  const a1 = await openFrom(t, gw.url, '127.0.0.2')
  const a2 = await openFrom(t, gw.url, '127.0.0.2')
  const refused = await wsFrom(t, gw.url, '127.0.0.2')
  t.match(refused, { status: 429, headers: { 'retry-after': '5' } }, 'third from .2: 429')
  t.match(refused, { body: /127\.0\.0\.2 has 2 open connections.*perClientConnections/ })
  const line = await gw.waitForLog((l) => l.msg === 'upgrade refused')
  t.match(line, { reason: 'client_connections', status: 429, remote: /^127\.0\.0\.2:/ })
  t.ok(await openFrom(t, gw.url, '127.0.0.3'), 'another address is not counted with it')

  await closeWs(gw, a1)
  const a3 = await openFrom(t, gw.url, '127.0.0.2')
  t.ok(a3, 'a closed connection gives its slot back')
  // Released exactly once: had a close given two slots back, three would open now.
  await closeWs(gw, a2)
  await closeWs(gw, a3)
  await openFrom(t, gw.url, '127.0.0.2')
  await openFrom(t, gw.url, '127.0.0.2')
  t.match(await wsFrom(t, gw.url, '127.0.0.2'), { status: 429 }, 'still two, not more')
  const metrics = await scrape(gw.adminUrl)
  t.equal(
    value(metrics, 'drawbridge_handshake_rejections_total', { reason: 'client_connections' }),
    2,
  )
})

t.test('a slot taken by a refused admission is given back by the runner', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_LIMITS_PER_CLIENT_CONNECTIONS: '1',
    DRAWBRIDGE_LIMITS_MAX_CONNECTIONS: '1',
  })
  const holder = await openFrom(t, gw.url, '127.0.0.4')
  // Passes its own limit (the step takes its slot), then meets the full gateway.
  t.match(await wsFrom(t, gw.url, '127.0.0.5'), { status: 503 }, 'capacity, after the step')
  await closeWs(gw, holder)
  t.ok(await openFrom(t, gw.url, '127.0.0.5'), 'its slot was given back: it gets in now')
})

t.test('perClientRate/perClientBurst: 429 with the seconds until the next token', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_LIMITS_PER_CLIENT_RATE: '0.5',
    DRAWBRIDGE_LIMITS_PER_CLIENT_BURST: '2',
  })
  await openFrom(t, gw.url, '127.0.0.6')
  await openFrom(t, gw.url, '127.0.0.6')
  const refused = await wsFrom(t, gw.url, '127.0.0.6')
  // 0.5 per second: the next token is up to 2 s away.
  t.match(refused, { status: 429, headers: { 'retry-after': /^[12]$/ } })
  t.match(refused, { body: /faster than 0\.5 per second \(limits\.perClientRate\)/ })
  t.ok(await openFrom(t, gw.url, '127.0.0.7'), 'another address has its own bucket')
  const metrics = await scrape(gw.adminUrl)
  t.equal(value(metrics, 'drawbridge_handshake_rejections_total', { reason: 'client_rate' }), 1)
  t.equal(value(metrics, 'drawbridge_limits_tracked_clients'), 2)
})

/** Plain HTTP requests from `localAddress`, all at once: what each got (status 0: nothing). */
function burstOfRequests(
  port: number,
  localAddress: string,
  count: number,
): Promise<RawResponse[]> {
  return Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<RawResponse>((resolve) => {
          const socket = net.connect({ port, host: '127.0.0.1', localAddress })
          let data = ''
          socket.on('data', (chunk: Buffer) => (data += chunk.toString('latin1')))
          socket.on('error', () => undefined)
          socket.on('close', () => resolve(parseResponse(data)))
          socket.write(`${upgradeRequest('/nope').join('\r\n')}\r\n\r\n`)
        }),
    ),
  )
}

t.test('acceptRate: connections over it are closed at accept, counted, summarized', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_LIMITS_ACCEPT_RATE: '2' })
  const answers = await burstOfRequests(gw.port, '127.0.0.9', 12)
  const dropped = answers.filter((a) => a.status === 0).length
  const answered = answers.filter((a) => a.status === 404).length
  t.equal(dropped + answered, 12, 'each was either answered (404) or closed without a word')
  // A bucket of 2 and 2 more a second: a burst of 12 within a few ms gets 2 or 3 through.
  t.ok(answered >= 2 && answered <= 4, `answered ${answered}`)
  const metrics = await scrape(gw.adminUrl)
  t.equal(
    value(metrics, 'drawbridge_handshake_rejections_total', { reason: 'accept_rate' }),
    dropped,
    'every drop counted',
  )
  const summary = await gw.waitForLog((l) => l.msg.includes('limits.acceptRate'), 3_000)
  t.match(summary, { listener: 'ws', dropped, acceptRate: 2, clients: [/^127\.0\.0\.9:/] })
  t.equal(
    gw.logs.filter((l) => l.msg.includes('limits.acceptRate')).length,
    1,
    'one line, not one per socket',
  )
})

/** A raw MQTT client over ws from `localAddress`, its CONNECT answered. */
async function rawFrom(t: Teardown, url: string, localAddress: string): Promise<RawMqttClient> {
  const client = await openRawClient(t, url, 'mqtt', { localAddress })
  client.ws.send(connectPacket(`limits-${localAddress}`))
  await client.next('connack')
  return client
}

/**
 * Cuts a client with a reset: a client held to its rate has a backlog in the kernel that a FIN
 * would only reach after it (the reset is what a client that gives up does, too).
 */
function reset(client: RawMqttClient): void {
  // ws has no public accessor for its socket.
  ;(client.ws as unknown as { _socket: net.Socket })._socket.resetAndDestroy()
}

/**
 * Sends `perTick` copies of `packet` every 10 ms for `ms`; resolves the times they were sent.
 * Bounded in time, and by the tick: at most ms / 10 * perTick packets.
 */
function sendFor(
  client: RawMqttClient,
  packet: Buffer,
  perTick: number,
  ms: number,
  stopped = (): boolean => false,
): Promise<number[]> {
  return new Promise((resolve) => {
    const start = performance.now()
    const sent: number[] = []
    const timer = setInterval(() => {
      const now = performance.now()
      if (now - start >= ms || stopped()) {
        clearInterval(timer)
        resolve(sent)
        return
      }
      for (let i = 0; i < perTick; i++) {
        client.ws.send(packet)
        sent.push(now)
      }
    }, 10)
  })
}

/** Arrivals at a subscriber on the broker itself, by the first level of their topic. */
async function countAtBroker(t: Teardown, port: number, topics: string[]) {
  const sub = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0 })
  t.teardown(() => sub.end(true))
  await sub.subscribeAsync(topics.map((topic) => `${topic}/#`))
  const arrivals = new Map<string, number[]>(topics.map((topic) => [topic, []]))
  sub.on('message', (topic) => arrivals.get(topic.split('/')[0] ?? '')?.push(performance.now()))
  return arrivals
}

// A client held for its rate is not read, so its reset is seen at the next ping (or when its
// pause ends): the tests ping often, to see it go within their teardown.
const NOTICE_RESETS = { DRAWBRIDGE_WS_PING_INTERVAL: '300ms', DRAWBRIDGE_WS_PONG_TIMEOUT: '1s' }

const within = (times: number[], from: number, to: number): number =>
  times.filter((x) => x >= from && x < to).length

t.test('messageRate: a client at 10x is held to its rate, another is unaffected', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_LIMITS_MESSAGE_RATE: '200',
    ...NOTICE_RESETS,
  })
  const arrivals = await countAtBroker(t, broker.port, ['fast', 'fair'])
  const fast = await rawFrom(t, gw.url, '127.0.0.10')
  const fair = await rawFrom(t, gw.url, '127.0.0.11')
  const publish = (topic: string): Buffer =>
    encode({ cmd: 'publish', topic, payload: Buffer.from('x'), qos: 0, dup: false, retain: false })
  const start = performance.now()
  const RUN_MS = 4_000
  // fast: 20 per 10 ms, 2,000/s, ten times its 200; fair: 1 per 10 ms, 100/s, within it.
  const [fastSent, fairSent] = await Promise.all([
    sendFor(fast, publish('fast/x'), 20, RUN_MS),
    sendFor(fair, publish('fair/x'), 1, RUN_MS),
  ])
  // The window leaves out the first second and a half (the bucket holds one second of burst).
  const from = start + 1_500
  const to = start + RUN_MS
  const seconds = (to - from) / 1000
  const fastRate = within(arrivals.get('fast') ?? [], from, to) / seconds
  const fastSentRate = within(fastSent, from, to) / seconds
  t.comment(
    `fast: sent ${fastSentRate.toFixed(0)}/s, arrived ${fastRate.toFixed(1)}/s in the window`,
  )
  t.ok(fastSentRate >= 1_000, `the fast client did send at many times its rate (${fastSentRate})`)
  t.ok(
    fastRate >= 180 && fastRate <= 220,
    `the fast client is held to 200/s within 10% (${fastRate.toFixed(1)})`,
  )
  const fairArrivals = arrivals.get('fair') ?? []
  t.ok(
    await eventually(() => Promise.resolve(fairArrivals.length === fairSent.length)),
    `every fair message arrives (${fairArrivals.length} of ${fairSent.length})`,
  )
  // Unaffected: what it sent in the window arrived in the window, none held back.
  const fairIn = within(fairArrivals, from, to)
  const fairOut = within(fairSent, from, to)
  t.comment(`fair: sent ${fairOut} and ${fairIn} arrived in the window`)
  t.ok(Math.abs(fairIn - fairOut) <= Math.max(2, fairOut * 0.05), 'the fair client keeps its pace')

  const views = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as ConnectionView[]
  const viewOf = (address: string) => views.find((v) => v.clientAddress === address)
  t.ok((viewOf('127.0.0.10')?.rate?.holds ?? 0) > 0, 'the fast one was held')
  t.equal(viewOf('127.0.0.11')?.rate?.holds, 0, 'the fair one never was')
  t.equal(viewOf('127.0.0.11')?.rate?.pausedSince, null)
  const metrics = await scrape(gw.adminUrl)
  t.ok(value(metrics, 'drawbridge_rate_pauses_total', { limit: 'message' }) > 0)
  reset(fast)
})

t.test('byteRate without mqtt.inspect counts bytes; messageRate needs inspect', async (t) => {
  t.throws(
    () =>
      loadConfig({
        profile: 'development',
        env: { DRAWBRIDGE_LIMITS_MESSAGE_RATE: '10', DRAWBRIDGE_MQTT_INSPECT: 'false' },
      }),
    /limits\.messageRate.*mqtt\.inspect/,
  )
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_MQTT_INSPECT: 'false',
    DRAWBRIDGE_LIMITS_BYTE_RATE: '512KiB',
    ...NOTICE_RESETS,
  })
  const arrivals = await countAtBroker(t, broker.port, ['bytes'])
  const client = await rawFrom(t, gw.url, '127.0.0.12')
  const packet = encode({
    cmd: 'publish',
    topic: 'bytes/x',
    payload: Buffer.alloc(1_000, 7),
    qos: 0,
    dup: false,
    retain: false,
  })
  const start = performance.now()
  // 50 per 10 ms: about 5 MB/s, ten times the rate. Without the framer each read is paid
  // for whole, so arrivals come in lumps of up to one read (64 KiB, an eighth of a second here).
  await sendFor(client, packet, 50, 4_000)
  const from = start + 1_500
  const to = start + 4_000
  const rate =
    (within(arrivals.get('bytes') ?? [], from, to) * packet.length) / ((to - from) / 1000)
  t.comment(`byte rate in the window: ${Math.round(rate)} B/s (limit 524288)`)
  t.ok(
    rate >= 524_288 * 0.9 && rate <= 524_288 * 1.1,
    `held to 512 KiB/s within 10% (${Math.round(rate)})`,
  )
  const metrics = await scrape(gw.adminUrl)
  t.ok(value(metrics, 'drawbridge_rate_pauses_total', { limit: 'byte' }) > 0)
  reset(client)
})

t.test('the rate and backpressure pauses do not resume each other', async (t) => {
  // A broker that accepts and then stops reading: its socket fills, the gateway's buffer passes
  // limits.highWaterMark, and the client is paused for backpressure as well as for its rate.
  const readers = new Set<net.Socket>()
  const stalled = net.createServer((socket) => {
    readers.add(socket)
    socket.pause()
  })
  stalled.listen(0, '127.0.0.1')
  await once(stalled, 'listening')
  t.teardown(() => {
    for (const socket of readers) socket.destroy()
    stalled.close()
  })
  const gw = await startTestGateway(t, (stalled.address() as net.AddressInfo).port, {
    DRAWBRIDGE_LIMITS_MESSAGE_RATE: '100',
    DRAWBRIDGE_LIMITS_HIGH_WATER_MARK: '16KiB',
    // Pings on (a reset is noticed), but no pong timeout within the test: a client paused for
    // backpressure cannot answer one either.
    DRAWBRIDGE_WS_PING_INTERVAL: '300ms',
    DRAWBRIDGE_WS_PONG_TIMEOUT: '60s',
  })
  const client = await openRawClient(t, gw.url, 'mqtt', { localAddress: '127.0.0.15' })
  client.ws.send(connectPacket('both-pauses'))
  const packet = encode({
    cmd: 'publish',
    topic: 'both/x',
    payload: Buffer.alloc(8_000, 1),
    qos: 0,
    dup: false,
    retain: false,
  })
  const view = async (): Promise<ConnectionView> => {
    const views = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as ConnectionView[]
    const found = views.find((v) => v.clientAddress === '127.0.0.15')
    if (found === undefined) throw new Error('the connection is gone')
    return found
  }
  // Some hundreds of packets a second offered, 100 (800 KB) let through: the broker fills.
  let done = false
  const sending = sendFor(client, packet, 10, 15_000, () => done)
  t.ok(
    await eventually(async () => {
      const v = await view()
      return v.paused.clientToBroker && (v.rate?.holds ?? 0) > 0 && v.rate?.pausedSince === null
    }, 12_000),
    'held by backpressure, after the rate had held it and let it go',
  )
  // The rate's timer has fired and found backpressure holding: nothing more is read.
  const held = await view()
  const again: number[] = []
  for (let i = 0; i < 10; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50))
    again.push((await view()).bytes.clientToBroker)
  }
  t.same(new Set(again), new Set([held.bytes.clientToBroker]), 'not read while the broker is full')
  // The broker reads again: its drain resumes the client, and bytes move on.
  for (const socket of readers) socket.resume()
  t.ok(
    await eventually(async () => (await view()).bytes.clientToBroker > held.bytes.clientToBroker),
    'read again once the broker drains',
  )
  done = true
  await sending
  reset(client)
})

/**
 * An mqtts client from `localAddress`: what it hears after its TLS handshake and a CONNECT,
 * 'connack' (the first byte of one) or 'closed' (the socket ended without a byte).
 */
function mqttsFrom(
  t: Teardown,
  port: number,
  ca: string,
  localAddress: string,
): Promise<{ heard: 'connack' | 'closed'; socket: tls.TLSSocket }> {
  const tcp = net.connect({ host: '127.0.0.1', port, localAddress })
  const socket = tls.connect({ socket: tcp, ca, servername: 'localhost' })
  t.teardown(() => socket.destroy())
  return new Promise((resolve, reject) => {
    socket.once('secureConnect', () => socket.write(connectPacket(`mqtts-${localAddress}`)))
    socket.once('data', (chunk: Buffer) => {
      if (chunk[0] === 0x20) resolve({ heard: 'connack', socket })
      else reject(new Error(`unexpected first byte ${chunk[0]}`))
    })
    socket.once('close', () => resolve({ heard: 'closed', socket }))
    socket.once('error', () => undefined)
  })
}

t.test('mqtts and wss share the per-client count; mqtts is closed after TLS', async (t) => {
  const pki = testPki()
  const broker = await startBroker(t, 'aedes')
  const files = writeServerFiles(t, pki)
  const gw = await startTestGateway(
    t,
    broker.port,
    tlsEnv(files, {
      DRAWBRIDGE_TCP_ENABLED: 'true',
      DRAWBRIDGE_LIMITS_PER_CLIENT_CONNECTIONS: '1',
    }),
  )
  const port = gw.mqttsPort as number
  const first = await mqttsFrom(t, port, pki.ca.cert, '127.0.0.13')
  t.equal(first.heard, 'connack', 'the first mqtts connection is bridged')
  t.equal((await mqttsFrom(t, port, pki.ca.cert, '127.0.0.13')).heard, 'closed', 'second: closed')
  const line = await gw.waitForLog((l) => l.msg === 'mqtts connection refused')
  t.match(line, {
    reason: 'client_connections',
    remote: /^127\.0\.0\.13:/,
    detail: /127\.0\.0\.13/,
  })
  // The same client over wss is the same client.
  const ws = new WebSocket(gw.url, 'mqtt', { localAddress: '127.0.0.13', ca: pki.ca.cert })
  ws.on('error', () => undefined)
  t.teardown(() => ws.terminate())
  const [, res] = (await once(ws, 'unexpected-response')) as [unknown, { statusCode: number }]
  t.equal(res.statusCode, 429, 'wss from the same address: 429')
  t.equal((await mqttsFrom(t, port, pki.ca.cert, '127.0.0.14')).heard, 'connack', 'another address')
  // The slot comes back when the mqtts connection closes.
  const closedBefore = gw.logs.filter((l) => l.msg === 'connection closed').length
  first.socket.end()
  await gw.waitForLogs((l) => l.msg === 'connection closed', closedBefore + 1)
  t.equal((await mqttsFrom(t, port, pki.ca.cert, '127.0.0.13')).heard, 'connack', 'in again')
})

t.test('IPv6 clients are counted by limits.ipv6Prefix', async (t) => {
  const table = new ClientTable(
    {
      perClientConnections: 1,
      perClientRate: 0,
      perClientBurst: 0,
      ipv6Prefix: 64,
      trackedClients: 10,
    },
    createMetrics({ version: 'test', perClient: false, maxClientSeries: 1, processMetrics: false }),
  )
  t.equal(table.keyOf('2001:db8:1:2:aaaa:bbbb:cccc:dddd'), '2001:db8:1:2:0:0:0:0/64')
  t.equal(table.keyOf('2001:db8:1:2::7'), '2001:db8:1:2:0:0:0:0/64')
  t.equal(table.keyOf('::ffff:127.0.0.1'), '127.0.0.1', 'IPv4-mapped counts as IPv4')
  const first = table.admit('2001:db8:1:2::1')
  t.ok('ok' in first)
  t.match(table.admit('2001:db8:1:2::2'), { status: 429 }, 'same /64: same client')
  t.ok('ok' in table.admit('2001:db8:1:3::1'), 'next /64: another client')
})

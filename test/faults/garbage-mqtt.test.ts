// Issue 12, the fault suite: garbage MQTT. The gateway never inspects MQTT bytes, so garbage
// must simply pass through and end like any other connection:
//
// - client side, gateway A in front of Mosquitto: seeded random bytes in valid binary frames,
//   after a valid CONNECT (and its CONNACK) or instead of one; Mosquitto drops the connection
//   and the gateway must end it with a close frame. One the broker keeps waiting on (the
//   garbage announced a long packet) is closed by the client, and the gateway must answer it.
// - broker side, gateway B in front of a raw TCP server that answers with random bytes (at
//   once, after the client's first bytes, or after a valid CONNACK) and then sends FIN, RST or
//   nothing: the client must get exactly those bytes, then close 1000, 1011 or its own answered.
//
// Meanwhile healthy clients on gateway A round-trip QoS 1 messages, none lost; both gateways
// keep answering /healthz and end with no connection and no descriptor left.
//
//   FAULTS_DEBUG=1  also prints both gateways' log lines other than connection opened/closed
import { createHash, type Hash } from 'node:crypto'
import t from 'tap'
import type { Teardown } from '../helpers/broker.js'
import {
  CLIENT_ID_PREFIX,
  startGarbageBroker,
  type GarbageConnection,
} from './lib/garbage-broker.js'
import { alive, healthz, settle, within } from './lib/gateway-watch.js'
import {
  figures,
  openFds,
  random,
  sized,
  startGatewayProcess,
  startSysMosquitto,
  type FaultGateway,
} from './lib/suite.js'
import {
  connectPacket,
  DISCONNECT,
  PacketReader,
  PacketType,
  parsePublish,
  prng,
  publishQos1,
  pubackPacket,
  StreamClient,
  subscribePacket,
  utf8Topic,
} from './lib/ws-stream.js'

const CLIENT_GARBAGE = sized(400, 5_000)
const CLIENT_GARBAGE_CONCURRENCY = 16
const BROKER_GARBAGE = sized(150, 2_000)
/** The garbage phases' time bound: past it no new garbage connection starts. */
const PHASE_MS = sized(12_000, 600_000)
/** How long Mosquitto gets to drop a garbage connection before the client closes it itself. */
const BROKER_VERDICT_MS = 500
const HEALTHY = 4
/** Each healthy client publishes one message per tick... */
const HEALTHY_TICK_MS = 10
/** ...at most this many in all, and with at most this many not yet back. */
const HEALTHY_MAX = sized(5_000, 200_000)
const HEALTHY_WINDOW = 50
const HEALTHZ_EVERY_MS = 200

interface Healthy {
  client: StreamClient
  topic: Buffer
  sent: number
  acked: number
  received: number
  sentAt: number[]
  rttMaxMs: number
  sentHash: Hash
  receivedHash: Hash
  anomalies: string[]
  rng: ReturnType<typeof prng>
  /** Called after every read: the drain at the end waits on it. */
  onProgress: () => void
}

interface ClientGarbageOutcome {
  kind: 'after-connect' | 'instead-of-connect'
  /** Who ended it: the gateway (its close frame came first) or the client, after waiting. */
  endedBy: 'gateway' | 'client'
  code: number
  reason: string
}

interface BrokerGarbageOutcome {
  /** Undefined when the broker hung up at accept, before the client could name itself. */
  server: GarbageConnection | undefined
  code: number
  reason: string
  /** False when the upgrade was refused (an HTTP status in `code`): no connection to close. */
  opened: boolean
  /** The close codes that are right for how the broker ended. */
  expected: number[]
  bytesEqual: boolean
}

/** Counts of each value, as `a:3,b:1`. */
function tally(values: readonly (string | number)[]): string {
  const counts = new Map<string | number, number>()
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1)
  return [...counts.entries()]
    .sort(([a], [b]) => String(a).localeCompare(String(b)))
    .map(([v, n]) => `${v}:${n}`)
    .join(',')
}

async function openHealthy(
  t: Teardown,
  gw: FaultGateway,
  seed: number,
  i: number,
  prefix: string,
): Promise<Healthy> {
  const topic = `${prefix}/healthy/${i}`
  let subacked: () => void = () => undefined
  const subscribed = new Promise<void>((resolve) => (subacked = resolve))
  const h: Healthy = {
    client: undefined as unknown as StreamClient, // set below, before any packet can arrive
    topic: utf8Topic(topic),
    sent: 0,
    acked: 0,
    received: 0,
    sentAt: [],
    rttMaxMs: 0,
    sentHash: createHash('sha256'),
    receivedHash: createHash('sha256'),
    anomalies: [],
    rng: prng(seed + 31 * (i + 1)),
    onProgress: () => undefined,
  }
  const reader = new PacketReader((header, body) => {
    const type = header >> 4
    if (type === PacketType.SUBACK) subacked()
    if (type === PacketType.PUBACK) h.acked++
    if (type !== PacketType.PUBLISH) return
    const msg = parsePublish(header, body)
    if (msg.qos === 1) h.client.write(pubackPacket(msg.packetId))
    const seq = msg.payload.readUInt32BE(0)
    if (msg.topic !== topic || seq !== h.received || msg.dup) {
      h.anomalies.push(`${msg.topic} seq ${seq} (expected ${h.received}) dup=${msg.dup}`)
    }
    h.receivedHash.update(msg.payload)
    h.rttMaxMs = Math.max(h.rttMaxMs, performance.now() - (h.sentAt[seq] ?? 0))
    h.received++
  })
  h.client = await StreamClient.open(t, gw.url, { kind: 'whole' }, (data) => {
    reader.push(data)
    h.client.flush()
    h.onProgress()
  })
  h.client.write(connectPacket(`garbage-healthy-${seed}-${i}`))
  h.client.write(subscribePacket(1, topic, 1))
  h.client.flush()
  await within(subscribed, 5_000, `SUBACK of healthy client ${i}`)
  return h
}

function publishHealthy(h: Healthy): void {
  if (h.sent >= HEALTHY_MAX || h.sent - h.received >= HEALTHY_WINDOW || !h.client.open) return
  const payload = h.rng.bytes(4 + h.rng.int(65))
  payload.writeUInt32BE(h.sent, 0)
  h.sentHash.update(payload)
  h.sentAt[h.sent] = performance.now()
  h.client.write(publishQos1(h.topic, (h.sent % 65535) + 1, payload))
  h.client.flush()
  h.sent++
}

/** Random frames into gateway A, after a CONNECT or instead of one. */
async function clientGarbage(
  t: Teardown,
  gw: FaultGateway,
  seed: number,
  k: number,
): Promise<ClientGarbageOutcome> {
  const rng = prng(seed + 1_000_003 * (k + 1))
  const kind = rng.next() < 0.5 ? 'after-connect' : 'instead-of-connect'
  let answered: () => void = () => undefined
  const connack = new Promise<void>((resolve) => (answered = resolve))
  const client = await StreamClient.open(t, gw.url, { kind: 'whole' }, () => answered())
  if (kind === 'after-connect') {
    client.write(connectPacket(`garbage-${seed}-${k}`))
    client.flush()
    await within(Promise.race([connack, client.closed]), 5_000, `CONNACK of garbage client ${k}`)
  }
  const frames = 1 + rng.int(8)
  for (let f = 0; f < frames && client.open; f++) {
    client.write(rng.bytes(1 + rng.int(rng.next() < 0.5 ? 64 : 2048)))
    client.flush()
  }
  let verdict: NodeJS.Timeout | undefined
  const waited = new Promise<'waited'>((resolve) => {
    verdict = setTimeout(() => resolve('waited'), BROKER_VERDICT_MS)
  })
  const first = await Promise.race([client.closed, waited])
  clearTimeout(verdict)
  const endedBy = first === 'waited' ? 'client' : 'gateway'
  const close = await within(
    client.close(1000, 'garbage sent'),
    5_000,
    `close handshake of garbage client ${k}`,
  )
  return { kind, endedBy, code: close.code, reason: close.reason }
}

/** One connection through gateway B to the garbage broker: the bytes, then the end it chose. */
async function brokerGarbage(
  t: Teardown,
  gw: FaultGateway,
  server: (index: number) => Promise<GarbageConnection>,
  k: number,
): Promise<BrokerGarbageOutcome> {
  const chunks: Buffer[] = []
  let expected = Infinity
  let seenAll: () => void = () => undefined
  const all = new Promise<void>((resolve) => (seenAll = resolve))
  let bytesIn = 0
  // Bytes sent at accept may come in the read that completes the upgrade, before open() returns.
  const onData = (data: Buffer): void => {
    chunks.push(Buffer.from(data))
    bytesIn += data.length
    if (bytesIn >= expected) seenAll()
  }
  let client: StreamClient
  try {
    client = await StreamClient.open(t, gw.url, { kind: 'whole' }, onData)
  } catch (err) {
    // A broker that resets before the gateway saw its connect complete is one that did not
    // accept: the upgrade is refused 502 (DRAWBRIDGE_ERR_UPSTREAM_REFUSED).
    const refused = /Unexpected server response: (\d+)/.exec(String(err))
    if (refused === null) throw err
    const code = Number(refused[1])
    return {
      server: undefined,
      code,
      reason: String(err),
      opened: false,
      expected: [502],
      bytesEqual: true,
    }
  }
  client.write(connectPacket(`${CLIENT_ID_PREFIX}${k}`))
  client.flush()
  const conn = await within(
    Promise.race([server(k), client.closed.then(() => undefined)]),
    5_000,
    `garbage broker connection ${k}`,
  )
  if (conn === undefined) {
    // The broker hung up at accept: no byte may come, then 1000 (FIN) or 1011 (RST).
    const { code, reason } = await client.closed
    return {
      server: undefined,
      code,
      reason,
      opened: true,
      expected: [1000, 1011],
      bytesEqual: bytesIn === 0,
    }
  }
  expected = conn.bytes.length
  if (bytesIn >= expected) seenAll()
  const got = await within(
    Promise.race([all.then(() => 'all' as const), client.closed]),
    5_000,
    `garbage of broker connection ${k}`,
  ).catch(() => 'timeout' as const)
  if (conn.end === 'rst' && got === 'all') conn.reset()
  // A client that did not get every byte, or a broker that holds on, gets the client's close.
  const close = await within(
    conn.end === 'hold' || got === 'timeout' ? client.close(1000, 'seen it all') : client.closed,
    5_000,
    `close of broker connection ${k}`,
  ).catch(() => {
    client.ws.terminate()
    const state = typeof got === 'string' ? got : 'closed'
    return { code: -1, reason: `no close within 5 s (${state}, ${client.bytesIn} bytes)` }
  })
  return {
    server: conn,
    code: close.code,
    reason: close.reason,
    opened: true,
    expected: [conn.end === 'rst' ? 1011 : 1000],
    bytesEqual: Buffer.concat(chunks).equals(conn.bytes),
  }
}

t.test('garbage MQTT from clients and from the broker', async (t) => {
  const rng = random(t, 'garbage-mqtt')
  const prefix = `faults/garbage/${rng.seed.toString(36)}`
  const mosquitto = await startSysMosquitto(t)
  const garbage = await startGarbageBroker(t, rng.seed)
  const gwA = await startGatewayProcess(t, mosquitto.port)
  // Gateway B's readiness check connects to the garbage broker too: once at start, not every 5 s.
  const gwB = await startGatewayProcess(t, garbage.port, {
    DRAWBRIDGE_ADMIN_READINESS_INTERVAL: '1h',
  })
  const baselineA = openFds(gwA.pid)
  const baselineB = openFds(gwB.pid)

  const healthy: Healthy[] = []
  for (let i = 0; i < HEALTHY; i++) healthy.push(await openHealthy(t, gwA, rng.seed, i, prefix))
  const ticker = setInterval(() => healthy.forEach(publishHealthy), HEALTHY_TICK_MS)
  t.teardown(() => clearInterval(ticker))

  const phaseEnds = performance.now() + PHASE_MS
  const phase = { running: true }
  let probes = 0
  let unhealthy = 0
  const probing = (async () => {
    while (phase.running && probes < 10_000) {
      probes++
      for (const gw of [gwA, gwB]) if ((await healthz(gw)) !== 200) unhealthy++
      await new Promise((resolve) => setTimeout(resolve, HEALTHZ_EVERY_MS))
    }
  })()

  const fromClients: ClientGarbageOutcome[] = []
  let nextClient = 0
  const clientWorkers = Array.from({ length: CLIENT_GARBAGE_CONCURRENCY }, async () => {
    while (nextClient < CLIENT_GARBAGE && performance.now() < phaseEnds) {
      const k = nextClient++
      fromClients.push(
        await clientGarbage(t, gwA, rng.seed, k).catch((err: unknown) => ({
          kind: 'after-connect' as const,
          endedBy: 'client' as const,
          code: -1,
          reason: `garbage client ${k}: ${String(err)}`,
        })),
      )
    }
  })
  const fromBroker: BrokerGarbageOutcome[] = []
  const brokerErrors: string[] = []
  const brokerWorker = (async () => {
    for (let k = 0; k < BROKER_GARBAGE && performance.now() < phaseEnds; k++) {
      try {
        fromBroker.push(await brokerGarbage(t, gwB, garbage.connection, k))
      } catch (err) {
        brokerErrors.push(`broker garbage ${k}: ${String(err)}`)
        break
      }
    }
  })()
  const started = performance.now()
  try {
    await Promise.all([...clientWorkers, brokerWorker])
  } finally {
    phase.running = false
    await probing
  }
  const seconds = (performance.now() - started) / 1000

  // The healthy clients stop publishing and must get back everything they sent.
  clearInterval(ticker)
  const drained = await within(
    new Promise<boolean>((resolve) => {
      const check = (): void => {
        if (healthy.every((h) => h.received >= h.sent && h.acked >= h.sent)) resolve(true)
      }
      for (const h of healthy) h.onProgress = check
      check()
    }),
    5_000,
    'healthy clients getting back what they sent',
  ).catch(() => false)
  const healthAtEnd = [await healthz(gwA), await healthz(gwB)]
  const healthyCloses = await within(
    Promise.all(
      healthy.map((h) => {
        h.client.write(DISCONNECT)
        h.client.flush()
        return h.client.closed
      }),
    ),
    5_000,
    'healthy clients closing',
  )
  const afterA = await settle(gwA, HEALTHY + fromClients.length, baselineA)
  const openedB = fromBroker.filter((o) => o.opened).length
  const afterB = await settle(gwB, openedB, baselineB)

  const gatewayEnded = fromClients.filter((o) => o.endedBy === 'gateway')
  figures(t, 'garbage-mqtt', {
    seed: rng.seed,
    seconds,
    clientGarbage: `${fromClients.length}/${CLIENT_GARBAGE}`,
    clientKinds: tally(fromClients.map((o) => o.kind)),
    clientEndedBy: tally(fromClients.map((o) => o.endedBy)),
    clientCodes: tally(fromClients.map((o) => `${o.kind}-${o.endedBy}-${o.code}`)),
    brokerGarbage: `${fromBroker.length}/${BROKER_GARBAGE}`,
    brokerStarts: tally(fromBroker.map((o) => o.server?.start ?? 'hangup')),
    brokerCodes: tally(fromBroker.map((o) => `${o.server?.end ?? 'hangup'}-${o.code}`)), // 502: HTTP
    brokerHangups: `fin:${garbage.hangups.fin},rst:${garbage.hangups.rst}`,
    brokerAccepted: garbage.accepted(),
    brokerBytes: fromBroker.reduce((n, o) => n + (o.server?.bytes.length ?? 0), 0),
    healthySent: healthy.reduce((n, h) => n + h.sent, 0),
    healthyReceived: healthy.reduce((n, h) => n + h.received, 0),
    healthyRttMaxMs: Math.max(...healthy.map((h) => h.rttMaxMs)),
    healthzProbes: probes,
    healthzFailures: unhealthy,
    closesLogged: `${afterA.closesLogged}+${afterB.closesLogged}`,
    fdsA: `${afterA.fds}/${afterA.baselineFds}`,
    fdsB: `${afterB.fds}/${afterB.baselineFds}`,
    connectionsLeft: afterA.connections + afterB.connections,
    garbageBrokerSocketsLeft: garbage.open(),
  })

  if (process.env.FAULTS_DEBUG !== undefined) {
    for (const gw of [gwA, gwB]) {
      for (const l of gw.process.logs)
        if (!l.msg.startsWith('connection ')) t.comment(JSON.stringify(l))
    }
  }
  t.same(brokerErrors, [], 'every broker garbage connection opened')
  t.ok(fromClients.length > 0 && fromBroker.length > 0, 'garbage went both ways')
  t.same(
    fromClients.filter((o) => o.code === 1006),
    [],
    'every client-side garbage connection ended with a close frame',
  )
  t.same(
    gatewayEnded.filter((o) => o.code !== 1000 && o.code !== 1011),
    [],
    'the gateway ended client garbage with 1000 (broker closed) or 1011 (broker reset) only',
  )
  t.same(
    fromBroker
      .filter((o) => !o.expected.includes(o.code) || !o.bytesEqual)
      .map((o) => ({
        index: o.server?.index,
        start: o.server?.start ?? 'hangup',
        end: o.server?.end ?? 'hangup',
        bytes: o.server?.bytes.length ?? 0,
        code: o.code,
        reason: o.reason,
        expected: o.expected,
        bytesEqual: o.bytesEqual,
      })),
    [],
    'broker garbage reached the client unchanged, then FIN gave 1000 and RST 1011 (a hang-up at accept too)',
  )
  const hangupCodes = (codes: number[]): number =>
    fromBroker.filter((o) => o.server === undefined && codes.includes(o.code)).length
  // The readiness check's own connection may be one hung up on: at most, not exactly.
  t.ok(
    hangupCodes([1000]) <= garbage.hangups.fin && hangupCodes([1011, 502]) <= garbage.hangups.rst,
    'a FIN at accept gave 1000, an RST 1011 or a 502 refusal',
  )
  t.ok(drained, 'the healthy clients got back every message they sent')
  for (const h of healthy) {
    t.same(h.anomalies, [], 'healthy: no loss, duplicate, reorder or DUP')
    t.equal(h.receivedHash.digest('hex'), h.sentHash.digest('hex'), 'healthy: stream hash equal')
  }
  t.ok(
    healthy.every((h) => h.sent > 0),
    'every healthy client round-tripped during the garbage',
  )
  t.same(
    healthyCloses.map((c) => c.code),
    new Array<number>(HEALTHY).fill(1000),
    'healthy clients ended 1000 after DISCONNECT',
  )
  t.equal(unhealthy, 0, '/healthz answered 200 on both gateways throughout')
  t.same(healthAtEnd, [200, 200], '/healthz answers 200 at the end')
  t.ok(alive(gwA) && alive(gwB), 'both gateway processes are running')
  t.equal(afterA.closesLogged, HEALTHY + fromClients.length, 'gateway A logged every close')
  t.equal(afterB.closesLogged, openedB, 'gateway B logged every close')
  t.equal(afterA.connections + afterB.connections, 0, '/connections is empty on both')
  t.ok(afterA.fds <= baselineA, `gateway A fds back to baseline (${afterA.fds} <= ${baselineA})`)
  t.ok(afterB.fds <= baselineB, `gateway B fds back to baseline (${afterB.fds} <= ${baselineB})`)
  t.equal(garbage.open(), 0, 'no socket to the garbage broker left open')
})

// Issue 12, the fault suite: garbage MQTT. Garbage must end like any other connection, with a
// close frame, and never take the gateway or a healthy client down with it:
//
// - client side, gateway A (mqtt.inspect on, the default) in front of Mosquitto: seeded random
//   bytes in valid binary frames, after a valid CONNECT (and its CONNACK) or instead of one.
//   The framer closes malformed packets with 1002 (over mqtt.maxPacketSize: 1009) before they
//   reach the broker, and whatever passes it Mosquitto may drop (1000). A garbage packet whose
//   end never comes is closed by the client, and the gateway must answer it.
// - broker side, a raw TCP server that answers with random bytes (at once, after the client's
//   first bytes, or after a valid CONNACK) and then sends FIN, RST or nothing, behind two
//   gateways taking turns: B inspects, so the client gets a prefix of those bytes (the whole
//   packets before a malformed one, closed 1011); C is the blind pipe (mqtt.inspect=false), so
//   the client must get exactly those bytes. Then close 1000 (FIN), 1011 (RST) or its own.
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
  /** Through the inspecting gateway (B), else the blind one (C). */
  inspected: boolean
  /** Undefined when the broker hung up at accept, before the client could name itself. */
  server: GarbageConnection | undefined
  code: number
  reason: string
  /** False when the upgrade was refused (an HTTP status in `code`): no connection to close. */
  opened: boolean
  /** The close codes that are right for how the broker ended (and, inspected, 1011). */
  expected: number[]
  /** The client got the bytes it must: all of them (blind), a prefix of them (inspected). */
  bytesRight: boolean
  /** Inspected: garbage at accept closed it (1011) before the broker could tell who it was. */
  malformedUnnamed: boolean
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
  inspected: boolean,
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
      inspected,
      server: undefined,
      code,
      reason: String(err),
      opened: false,
      expected: [502],
      bytesRight: true,
      malformedUnnamed: false,
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
    // The broker hung up at accept: no byte may come, then 1000 (FIN) or 1011 (RST). Or,
    // inspected, the garbage it sent at once was malformed and closed the connection (1011)
    // before the client's CONNECT named it to the broker: its bytes cannot be compared.
    const { code, reason } = await client.closed
    const malformedUnnamed = inspected && reason.startsWith('malformed MQTT from the broker')
    return {
      inspected,
      server: undefined,
      code,
      reason,
      opened: true,
      expected: malformedUnnamed ? [1011] : [1000, 1011],
      bytesRight: malformedUnnamed || bytesIn === 0,
      malformedUnnamed,
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
  const received = Buffer.concat(chunks)
  const ends = [conn.end === 'rst' ? 1011 : 1000]
  return {
    inspected,
    server: conn,
    code: close.code,
    reason: close.reason,
    opened: true,
    // Inspected, a malformed packet ends it with 1011 however the broker would have.
    expected: inspected ? [...ends, 1011] : ends,
    bytesRight: inspected
      ? received.equals(conn.bytes.subarray(0, received.length))
      : received.equals(conn.bytes),
    malformedUnnamed: false,
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
  const gwC = await startGatewayProcess(t, garbage.port, {
    DRAWBRIDGE_ADMIN_READINESS_INTERVAL: '1h',
    DRAWBRIDGE_MQTT_INSPECT: 'false',
  })
  const baselineA = openFds(gwA.pid)
  const baselineB = openFds(gwB.pid)
  const baselineC = openFds(gwC.pid)

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
      for (const gw of [gwA, gwB, gwC]) if ((await healthz(gw)) !== 200) unhealthy++
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
        const inspected = k % 2 === 0
        fromBroker.push(
          await brokerGarbage(t, inspected ? gwB : gwC, garbage.connection, k, inspected),
        )
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
  const healthAtEnd = [await healthz(gwA), await healthz(gwB), await healthz(gwC)]
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
  const openedB = fromBroker.filter((o) => o.opened && o.inspected).length
  const openedC = fromBroker.filter((o) => o.opened && !o.inspected).length
  const afterB = await settle(gwB, openedB, baselineB)
  const afterC = await settle(gwC, openedC, baselineC)

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
    brokerCodes: tally(
      fromBroker.map(
        (o) =>
          `${o.inspected ? 'B' : 'C'}-${o.server?.end ?? (o.malformedUnnamed ? 'at-accept' : 'hangup')}-${o.code}`,
      ),
    ), // 502: HTTP
    brokerHangups: `fin:${garbage.hangups.fin},rst:${garbage.hangups.rst}`,
    brokerAccepted: garbage.accepted(),
    brokerBytes: fromBroker.reduce((n, o) => n + (o.server?.bytes.length ?? 0), 0),
    healthySent: healthy.reduce((n, h) => n + h.sent, 0),
    healthyReceived: healthy.reduce((n, h) => n + h.received, 0),
    healthyRttMaxMs: Math.max(...healthy.map((h) => h.rttMaxMs)),
    healthzProbes: probes,
    healthzFailures: unhealthy,
    closesLogged: `${afterA.closesLogged}+${afterB.closesLogged}+${afterC.closesLogged}`,
    fdsA: `${afterA.fds}/${afterA.baselineFds}`,
    fdsB: `${afterB.fds}/${afterB.baselineFds}`,
    fdsC: `${afterC.fds}/${afterC.baselineFds}`,
    connectionsLeft: afterA.connections + afterB.connections + afterC.connections,
    garbageBrokerSocketsLeft: garbage.open(),
  })

  if (process.env.FAULTS_DEBUG !== undefined) {
    for (const gw of [gwA, gwB, gwC]) {
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
    gatewayEnded.filter((o) => ![1000, 1002, 1009, 1011].includes(o.code)),
    [],
    'the gateway ended client garbage with 1002 (malformed), 1009 (too large), 1000 (broker closed) or 1011 (broker reset) only',
  )
  t.same(
    gatewayEnded.filter((o) => o.kind === 'instead-of-connect' && ![1002, 1009].includes(o.code)),
    [],
    'garbage instead of a CONNECT was refused by the framer (1002, 1009), never by the broker',
  )
  t.ok(
    gatewayEnded.some(
      (o) => o.code === 1002 && o.reason.startsWith('malformed MQTT from the client'),
    ),
    'the framer named what was malformed',
  )
  t.same(
    fromBroker
      .filter((o) => !o.expected.includes(o.code) || !o.bytesRight)
      .map((o) => ({
        inspected: o.inspected,
        index: o.server?.index,
        start: o.server?.start ?? 'hangup',
        end: o.server?.end ?? 'hangup',
        bytes: o.server?.bytes.length ?? 0,
        code: o.code,
        reason: o.reason,
        expected: o.expected,
        bytesRight: o.bytesRight,
      })),
    [],
    'broker garbage reached the client unchanged (blind) or as a prefix of whole packets (inspected), then FIN gave 1000 and RST 1011 (a hang-up at accept too), a malformed packet 1011',
  )
  t.ok(
    fromBroker.some((o) => o.inspected && o.reason.startsWith('malformed MQTT from the broker')),
    'the inspecting gateway closed malformed broker garbage with its reason',
  )
  const hangupCodes = (codes: number[]): number =>
    fromBroker.filter(
      (o) => o.server === undefined && !o.malformedUnnamed && codes.includes(o.code),
    ).length
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
  t.same(healthAtEnd, [200, 200, 200], '/healthz answers 200 at the end')
  t.ok(alive(gwA) && alive(gwB) && alive(gwC), 'the three gateway processes are running')
  t.equal(afterA.closesLogged, HEALTHY + fromClients.length, 'gateway A logged every close')
  t.equal(afterB.closesLogged, openedB, 'gateway B logged every close')
  t.equal(afterC.closesLogged, openedC, 'gateway C logged every close')
  t.equal(
    afterA.connections + afterB.connections + afterC.connections,
    0,
    '/connections is empty on all three',
  )
  t.ok(afterA.fds <= baselineA, `gateway A fds back to baseline (${afterA.fds} <= ${baselineA})`)
  t.ok(afterB.fds <= baselineB, `gateway B fds back to baseline (${afterB.fds} <= ${baselineB})`)
  t.ok(afterC.fds <= baselineC, `gateway C fds back to baseline (${afterC.fds} <= ${baselineC})`)
  t.equal(garbage.open(), 0, 'no socket to the garbage broker left open')
})

// Issue 12, the fault suite: stream integrity. 20 publishers send QoS 1 messages with random
// payloads through the gateway process to Mosquitto, and 2 subscribers, also through the
// gateway, each get every message back. Every client cuts its byte stream into WebSocket frames
// at random (a packet split over several frames, several packets in one frame, some messages as
// continuation frames: [MQTT-6.0.0-2]). Per publisher stream, a running sha256 of the payloads
// in order on the sending side must equal the one each subscriber computed for that
// publisher's topic: no loss, duplicate, reorder or corruption. Nothing reconnects, so a DUP is
// a failure too.
import { createHash, type Hash } from 'node:crypto'
import t from 'tap'
import { alive, healthz, settle, within } from './lib/gateway-watch.js'
import {
  figures,
  openFds,
  random,
  sized,
  startGatewayProcess,
  startSysMosquitto,
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
  type CloseEvent,
} from './lib/ws-stream.js'

const PUBLISHERS = 20
const SUBSCRIBERS = 2
const MESSAGES = sized(100_000, 1_000_000)
const PER_PUBLISHER = MESSAGES / PUBLISHERS
/** Messages a publisher may have out that a subscriber has not seen yet: bounds the broker's queues. */
const WINDOW = 100
/** The transfer's bound; the short size must leave room in the file's ~25 s. */
const TRANSFER_MS = sized(20_000, 300_000)
/** Payload: a 4-byte sequence number, then 0..MAX_EXTRA random bytes. */
const MAX_EXTRA = 40

interface Anomaly {
  subscriber: number
  publisher: number
  what: string
}

t.test(
  'integrity: QoS 1 through random frame splits, no loss/dup/reorder/corruption',
  async (t) => {
    const rng = random(t, 'integrity')
    const broker = await startSysMosquitto(t)
    const gw = await startGatewayProcess(t, broker.port)
    const baselineFds = openFds(gw.pid)
    const prefix = `faults/integrity/${rng.seed.toString(36)}`

    // ---- subscribers ---------------------------------------------------------------------------
    const received: number[][] = [] // [subscriber][publisher]
    const recvHash: Hash[][] = []
    const anomalies: Anomaly[] = []
    let anomalyCount = 0
    const note = (a: Anomaly): void => {
      anomalyCount++
      if (anomalies.length < 10) anomalies.push(a)
    }
    const totals = new Array<number>(SUBSCRIBERS).fill(0)
    const topicIndex = new Map<string, number>()
    for (let p = 0; p < PUBLISHERS; p++) topicIndex.set(`${prefix}/${p}`, p)
    let allReceived: () => void = () => undefined
    const everything = new Promise<void>((resolve) => (allReceived = resolve))
    const pumps: (() => void)[] = []
    /** Publishers whose window a subscriber's read moved: pumped once per read, not per message. */
    const woken = new Set<number>()

    const subscribers: StreamClient[] = []
    const subAcks: Promise<void>[] = []
    for (let s = 0; s < SUBSCRIBERS; s++) {
      received.push(new Array<number>(PUBLISHERS).fill(0))
      recvHash.push(Array.from({ length: PUBLISHERS }, () => createHash('sha256')))
      let ready: () => void = () => undefined
      subAcks.push(new Promise((resolve) => (ready = resolve)))
      // The reader runs on messages only: after open() has resolved and `client` is set.
      const reader = new PacketReader((header, body) => {
        const type = header >> 4
        if (type === PacketType.CONNACK) return
        if (type === PacketType.SUBACK) {
          if (body[2] !== 1)
            note({ subscriber: s, publisher: -1, what: `SUBACK granted ${body[2]}` })
          ready()
          return
        }
        if (type !== PacketType.PUBLISH) {
          note({ subscriber: s, publisher: -1, what: `unexpected packet type ${type}` })
          return
        }
        const msg = parsePublish(header, body)
        const p = topicIndex.get(msg.topic)
        if (p === undefined) {
          note({ subscriber: s, publisher: -1, what: `unknown topic ${msg.topic}` })
          return
        }
        if (msg.qos === 1) client.write(pubackPacket(msg.packetId))
        if (msg.qos !== 1 || msg.dup || msg.retain) {
          note({
            subscriber: s,
            publisher: p,
            what: `qos=${msg.qos} dup=${msg.dup} retain=${msg.retain}`,
          })
        }
        const row = received[s] as number[]
        const expected = row[p] ?? 0
        const seq = msg.payload.length >= 4 ? msg.payload.readUInt32BE(0) : -1
        if (seq !== expected) {
          const what = seq < expected ? 'duplicate' : seq > expected ? 'gap (loss or reorder)' : ''
          note({
            subscriber: s,
            publisher: p,
            what: `${what}: seq ${seq} where ${expected} was next`,
          })
        }
        recvHash[s]?.[p]?.update(msg.payload)
        row[p] = expected + 1
        totals[s] = (totals[s] ?? 0) + 1
        woken.add(p)
        if (totals.every((n) => n >= MESSAGES)) allReceived()
      })
      const client: StreamClient = await StreamClient.open(
        t,
        gw.url,
        { kind: 'random', rng: prng(rng.seed + 101 + s), typical: 4, fragmented: 0.02 },
        (data) => {
          reader.push(data)
          // The PUBACKs of one read go out together, cut at random like everything else.
          client.flush()
          for (const p of woken) pumps[p]?.()
          woken.clear()
        },
      )
      client.write(connectPacket(`integrity-sub-${s}`))
      client.write(subscribePacket(1, `${prefix}/+`, 1))
      client.flush()
      subscribers.push(client)
    }
    await within(Promise.all(subAcks), 5_000, 'SUBACKs')

    // ---- publishers ----------------------------------------------------------------------------
    const sentHash: Hash[] = []
    const sent = new Array<number>(PUBLISHERS).fill(0)
    const acked = new Array<number>(PUBLISHERS).fill(0)
    const publishers: StreamClient[] = []
    let strayAcks = 0
    let started = 0
    for (let p = 0; p < PUBLISHERS; p++) {
      const payloads = prng(rng.seed + 1 + p)
      const topic = utf8Topic(`${prefix}/${p}`)
      const outstanding = new Uint8Array(65536)
      const hash = createHash('sha256')
      sentHash.push(hash)
      let connacked: () => void = () => undefined
      const connack = new Promise<void>((resolve) => (connacked = resolve))
      const reader = new PacketReader((header, body) => {
        const type = header >> 4
        if (type === PacketType.CONNACK) {
          connacked()
          return
        }
        if (type !== PacketType.PUBACK) {
          note({ subscriber: -1, publisher: p, what: `publisher got packet type ${type}` })
          return
        }
        const id = body.readUInt16BE(0)
        if (outstanding[id] !== 1) strayAcks++
        outstanding[id] = 0
        acked[p] = (acked[p] ?? 0) + 1
      })
      // Another flush is coming while a fully sent PUBLISH waits for its PUBACK: only then may a
      // flush keep a packet's tail for later.
      const ackPending = (): boolean => client.completePackets - 1 > (acked[p] ?? 0)
      const pump = (): void => {
        if (started === 0) return
        let n = sent[p] ?? 0
        const delivered = Math.min(...received.map((row) => row[p] ?? 0))
        while (n < PER_PUBLISHER && n - delivered < WINDOW && n - (acked[p] ?? 0) < WINDOW) {
          const payload = payloads.bytes(4 + payloads.int(MAX_EXTRA + 1))
          payload.writeUInt32BE(n, 0)
          hash.update(payload)
          const id = (n % 65535) + 1
          outstanding[id] = 1
          client.write(publishQos1(topic, id, payload))
          n++
        }
        sent[p] = n
        client.flush(ackPending())
      }
      const client: StreamClient = await StreamClient.open(
        t,
        gw.url,
        { kind: 'random', rng: prng(rng.seed + 201 + p), typical: 48, fragmented: 0.02 },
        (data) => {
          reader.push(data)
          pump()
        },
      )
      client.write(connectPacket(`integrity-pub-${p}`))
      client.flush()
      await within(connack, 5_000, `CONNACK of publisher ${p}`)
      publishers.push(client)
      pumps.push(pump)
    }

    // ---- the transfer --------------------------------------------------------------------------
    started = performance.now()
    for (const pump of pumps) pump()
    let transferError: unknown
    await within(everything, TRANSFER_MS, 'the transfer').catch(
      (err: unknown) => (transferError = err),
    )
    const seconds = (performance.now() - started) / 1000

    const sentDigests = sentHash.map((h) => h.digest('hex'))
    let streamsEqual = 0
    const mismatched: string[] = []
    for (let s = 0; s < SUBSCRIBERS; s++) {
      for (let p = 0; p < PUBLISHERS; p++) {
        const digest = recvHash[s]?.[p]?.digest('hex')
        if (digest === sentDigests[p]) streamsEqual++
        else mismatched.push(`sub ${s} / pub ${p} (${received[s]?.[p]} of ${sent[p]} messages)`)
      }
    }
    const health = await healthz(gw)
    const stats = [...publishers, ...subscribers].map((c) => c.stats)
    const sum = (key: keyof StreamClient['stats']): number => stats.reduce((n, s) => n + s[key], 0)

    // ---- the end: every client says DISCONNECT, the broker closes, the gateway closes 1000 ------
    const closes: CloseEvent[] = await within(
      Promise.all(
        [...publishers, ...subscribers].map((c) => {
          c.flush()
          c.write(DISCONNECT)
          c.flush()
          return c.closed
        }),
      ),
      5_000,
      'closes after DISCONNECT',
    )
    const after = await settle(gw, PUBLISHERS + SUBSCRIBERS, baselineFds)

    figures(t, 'integrity', {
      seed: rng.seed,
      messages: MESSAGES,
      publishers: PUBLISHERS,
      subscribers: SUBSCRIBERS,
      seconds,
      msgsPerSecond: MESSAGES / seconds,
      delivered: totals.join('+'),
      streamsEqual: `${streamsEqual}/${PUBLISHERS * SUBSCRIBERS}`,
      anomalies: anomalyCount,
      strayAcks,
      framesSent: sum('frames'),
      splitPackets: sum('splitPackets'),
      packedFrames: sum('packedFrames'),
      heldTails: sum('heldTails'),
      fragmentedMessages: sum('fragmentedMessages'),
      bytesSent: sum('bytes'),
      closeCodes: [...new Set(closes.map((c) => c.code))].join(','),
      fds: `${after.fds}/${after.baselineFds}`,
      connectionsLeft: after.connections,
    })

    t.equal(transferError, undefined, 'every message reached both subscribers in time')
    t.same(
      anomalies,
      [],
      `no loss, duplicate, reorder, DUP or stray packet (${anomalyCount} in all)`,
    )
    t.same(mismatched, [], 'every stream hash equal on both sides')
    t.equal(strayAcks, 0, 'every PUBACK answered an outstanding PUBLISH')
    t.same(acked, new Array<number>(PUBLISHERS).fill(PER_PUBLISHER), 'every PUBLISH acknowledged')
    t.ok(sum('splitPackets') > 0 && sum('packedFrames') > 0, 'packets were split and packed')
    t.equal(health, 200, '/healthz answers 200')
    t.ok(alive(gw), 'the gateway process is running')
    t.same(
      closes.map((c) => c.code),
      new Array<number>(PUBLISHERS + SUBSCRIBERS).fill(1000),
      'every connection ended 1000 after its DISCONNECT',
    )
    t.equal(after.closesLogged, PUBLISHERS + SUBSCRIBERS, 'every close logged')
    t.equal(after.connections, 0, '/connections is empty')
    t.ok(after.fds <= baselineFds, `open fds back to baseline (${after.fds} <= ${baselineFds})`)
  },
)

// The broker dies under load: MQTT clients connected through the gateway are publishing when
// Mosquitto is killed with SIGKILL. Every client must get a WebSocket close frame with a code
// within 2 s (read on the client side: ws's 'close' event), the gateway must keep nothing of
// them, and once the broker is back new clients must round-trip at once, with no retry.
//
// The gateway's close for a broker failure is 1011 "broker connection failed: <code>" (the
// kernel reset the socket: the broker died with unread bytes) or 1000 "broker closed the
// connection" (a FIN); which one each client sees is reported, both are in the README.
//
// Short size: 50 clients; long: 200.
import mqttPacket, { type Packet } from 'mqtt-packet'
import t, { type Test } from 'tap'
import { WebSocket } from 'ws'
import { connectPacket, encode } from '../helpers/wsmqtt.js'
import { endClient, roundTrip } from './lib/clients.js'
import { expectSettled, measureQuiet, warmedUp } from './lib/settle.js'
import { within } from './lib/sockets.js'
import { figures, random, sized, startGatewayProcess, startSysMosquitto } from './lib/suite.js'

const CLIENTS = sized(50, 200)
/** PUBACKs each client must have had before the kill: all of them are really publishing. */
const WARM_PUBACKS = 3
/** Bounds each client's publishing loop in count; the kill bounds it in time. */
const MAX_PUBLISHES = 100_000
const CLOSE_WITHIN_MS = 2_000
const AFTER_RESTART = sized(10, 50)
const DOCUMENTED_BROKER_CLOSES = new Set([1000, 1011])

interface Publisher {
  index: number
  ws: WebSocket
  pubacks: number
  received: number
  published: number
  close: Promise<{ code: number; reason: string; at: number }>
}

/** A ws client speaking MQTT 3.1.1 that publishes QoS 1 to its own topic, one in flight. */
function publisher(
  t: Test,
  url: string,
  index: number,
  payload: Buffer,
  onPuback: () => void,
): Promise<Publisher> {
  const ws = new WebSocket(url, ['mqtt'])
  t.teardown(() => ws.terminate())
  const topic = `killed/${process.pid}/${index}`
  const self: Publisher = {
    index,
    ws,
    pubacks: 0,
    received: 0,
    published: 0,
    close: new Promise((resolve) => {
      ws.once('close', (code, reason) =>
        resolve({ code, reason: reason.toString(), at: Date.now() }),
      )
    }),
  }
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  const publishNext = (): void => {
    if (ws.readyState !== WebSocket.OPEN || self.published >= MAX_PUBLISHES) return
    self.published++
    const messageId = (self.published % 65_535) + 1
    ws.send(
      encode({ cmd: 'publish', topic, payload, qos: 1, messageId, dup: false, retain: false }),
    )
  }
  return new Promise((resolve, reject) => {
    ws.on('error', reject)
    ws.once('close', () => reject(new Error(`client ${index} closed before it was publishing`)))
    parser.on('packet', (packet: Packet) => {
      if (packet.cmd === 'connack') {
        ws.send(encode({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic, qos: 0 }] }))
      } else if (packet.cmd === 'suback') {
        publishNext()
      } else if (packet.cmd === 'puback') {
        self.pubacks++
        onPuback()
        if (self.pubacks === WARM_PUBACKS) resolve(self)
        publishNext()
      } else if (packet.cmd === 'publish') {
        self.received++
      }
    })
    ws.on('message', (data: Buffer) => parser.parse(data))
    ws.once('open', () => ws.send(connectPacket(`killed-${process.pid}-${index}`)))
  })
}

t.test('kill -9 of the broker: every client told with a close code, nothing kept', async (t) => {
  const rng = random(t, 'broker-killed')
  const broker = await startSysMosquitto(t)
  const gw = await startGatewayProcess(t, broker.port, {
    // No periodic readiness check: each would be one more broker socket in the counts.
    DRAWBRIDGE_ADMIN_READINESS_INTERVAL: '1h',
  })
  const { ctx, quiet } = await warmedUp(t, gw, broker)

  let pubacks = 0
  const publishers = await within(
    Promise.all(
      Array.from({ length: CLIENTS }, (_, i) =>
        publisher(t, gw.url, i, rng.bytes(16 + rng.int(512)), () => pubacks++),
      ),
    ),
    30_000,
    `${CLIENTS} clients publishing`,
  )
  await broker.waitForClients(quiet.sys + CLIENTS, 5_000)
  const pubacksBefore = pubacks

  const killedAt = Date.now()
  await broker.kill('SIGKILL')
  const exitedMs = Date.now() - killedAt
  const closes = await within(
    Promise.all(publishers.map((p) => p.close)),
    CLOSE_WITHIN_MS + 10_000,
    'a close for every client',
  )
  ctx.brokerAlive = false
  const settled = await expectSettled(t, ctx, quiet, killedAt, CLOSE_WITHIN_MS)

  const afterMs = closes.map((c) => c.at - killedAt)
  const late = afterMs.filter((ms) => ms > CLOSE_WITHIN_MS).length
  const byCode: Record<string, number> = {}
  const byReason: Record<string, number> = {}
  for (const c of closes) {
    byCode[c.code] = (byCode[c.code] ?? 0) + 1
    byReason[c.reason] = (byReason[c.reason] ?? 0) + 1
  }
  t.equal(late, 0, `every client's close within ${CLOSE_WITHIN_MS} ms of the kill`)
  const undocumented = closes.filter((c) => !DOCUMENTED_BROKER_CLOSES.has(c.code))
  t.same(
    undocumented.map((c) => `${c.code} ${c.reason}`),
    [],
    'every client got a close frame: 1011 (broker connection failed) or 1000 (broker closed)',
  )
  const unexplained = closes.filter((c) =>
    c.code === 1011
      ? !c.reason.startsWith('broker connection failed: ')
      : c.reason !== 'broker closed the connection',
  )
  t.same(
    unexplained.map((c) => `${c.code} ${c.reason}`),
    [],
    'each close says why, as the README table words it',
  )
  const received = publishers.reduce((sum, p) => sum + p.received, 0)

  // Back: new clients round-trip on their first try, no retry, no wait for a readiness check.
  await broker.restart()
  const restartedAt = Date.now()
  const trips = await within(
    Promise.all(
      Array.from({ length: AFTER_RESTART }, (_, i) =>
        roundTrip(t, gw.url, `killed/after/${process.pid}/${i}`),
      ),
    ),
    15_000,
    'round trips after the restart',
  )
  const firstTripsMs = Date.now() - restartedAt
  t.equal(trips.length, AFTER_RESTART, 'every new client round-tripped at its first attempt')
  // The restarted broker's own baseline: a new process, with startSysMosquitto's subscriber
  // reconnected to it.
  await Promise.all(trips.map((trip) => endClient(trip.client)))
  ctx.brokerAlive = true
  const quietAgain = await measureQuiet(ctx)
  t.equal(quietAgain.gatewayFds, quiet.gatewayFds, 'gateway descriptors as before the kill')
  const endedAt = Date.now()
  await expectSettled(t, ctx, quietAgain, endedAt)

  figures(t, 'broker-killed', {
    clients: CLIENTS,
    pubacksBeforeKill: pubacksBefore,
    publishesEchoed: received,
    brokerExitMs: exitedMs,
    closeMsMin: Math.min(...afterMs),
    closeMsMax: Math.max(...afterMs),
    late,
    codes: Object.entries(byCode)
      .map(([code, n]) => `${code}:${n}`)
      .join(','),
    reasons: Object.entries(byReason)
      .map(([reason, n]) => `${reason.replace(/ /g, '_')}:${n}`)
      .join(','),
    gatewayBackMs: settled.gatewayMs,
    roundTripsAfterRestart: trips.length,
    roundTripMsMax: Math.max(...trips.map((trip) => trip.ms)),
    allRoundTripsMs: firstTripsMs,
  })
})

// Slowloris against the upgrade: sockets that send half a request line and then nothing, and
// sockets that trickle their request one byte at a time, slower than ws.handshakeTimeout lets
// them finish. Every one must be dropped at the timeout, answered 408 (README: "No complete
// request within ws.handshakeTimeout"), counted, and leave nothing behind, while a normal MQTT
// client connects and round-trips in the middle of them and keeps its connection past the
// timeout.
//
// Short size: 100 sockets; long: 500.
import t from 'tap'
import { endClient, roundTrip } from './lib/clients.js'
import { RawWsClient, upgradeBytes } from './lib/killable-client.js'
import { adminGetClosing, expectSettled, warmedUp } from './lib/settle.js'
import { within } from './lib/sockets.js'
import { nextMessage } from '../helpers/mqtt.js'
import { parseExposition, value } from '../helpers/scrape.js'
import { figures, random, sized, startGatewayProcess, startSysMosquitto } from './lib/suite.js'

const SOCKETS = sized(100, 500)
const TIMEOUT_MS = 1_000
/**
 * Sockets open at random moments within this window, well inside the timeout: the normal
 * client goes once all of them are open, and must be done before the first is dropped.
 */
const WINDOW_MS = sized(200, 500)
/** One byte per tick: ~7 bytes before the timeout of a ~170-byte request. */
const TRICKLE_MS = 150
/** A drop counts as "at the timeout" up to this late (2 cores, shared with other work). */
const LATE_MS = 1_000
/** The client's connect is seen a little before the gateway's 'connection' starts its timer. */
const EARLY_MS = 50

type Kind = 'stall' | 'trickle'

interface Slow {
  kind: Kind
  client: RawWsClient
  /** Bytes of the request written so far. */
  sent: number
}

async function rejections(adminUrl: string): Promise<number> {
  const metrics = parseExposition((await adminGetClosing(adminUrl, '/metrics')).body)
  return value(metrics, 'drawbridge_handshake_rejections_total', { reason: 'handshake_timeout' })
}

t.test(`${SOCKETS} slow handshakes dropped at ws.handshakeTimeout`, async (t) => {
  const rng = random(t, 'slow-handshakes')
  const broker = await startSysMosquitto(t)
  const gw = await startGatewayProcess(t, broker.port, {
    DRAWBRIDGE_WS_HANDSHAKE_TIMEOUT: `${TIMEOUT_MS}ms`,
    // No periodic readiness check: each would be one more broker socket in the counts.
    DRAWBRIDGE_ADMIN_READINESS_INTERVAL: '1h',
  })
  const { ctx, quiet } = await warmedUp(t, gw, broker)
  const rejectedBefore = await rejections(gw.adminUrl)

  // Drawn before anything starts: the same seed gives the same run.
  const plan = Array.from(
    { length: SOCKETS },
    (): { kind: Kind; startAt: number; cut: number } => ({
      kind: rng.next() < 0.5 ? 'stall' : 'trickle',
      startAt: Math.floor(rng.next() * WINDOW_MS),
      // Half a request line: "GET /mqtt HTTP/1.1" cut somewhere in its first half.
      cut: 1 + rng.int(9),
    }),
  )
  const request = upgradeBytes()
  const slow: Slow[] = []
  const timers = new Set<NodeJS.Timeout>()
  t.teardown(() => {
    timers.forEach((timer) => clearTimeout(timer))
    slow.forEach((s) => s.client.socket.destroy())
  })
  const started = Date.now()
  const opened = Promise.all(
    plan.map(
      (p) =>
        new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => {
            timers.delete(timer)
            const s: Slow = { kind: p.kind, client: new RawWsClient(gw.port), sent: 0 }
            slow.push(s)
            s.client.connected().then(() => {
              s.sent = p.kind === 'stall' ? p.cut : 1
              s.client.write(request.subarray(0, s.sent))
              resolve()
            }, reject)
          }, p.startAt)
          timers.add(timer)
        }),
    ),
  )
  // The trickle: one byte more per socket every TRICKLE_MS, bounded by the request's length
  // (it would take ~25 s to finish) and by the sockets still open.
  const trickle = setInterval(() => {
    let open = 0
    for (const s of slow) {
      if (s.kind !== 'trickle' || s.client.isClosed || s.client.received.length > 0) continue
      if (s.client.connectedAt === undefined || s.sent >= request.length - 1) continue
      open++
      s.client.write(request.subarray(s.sent, ++s.sent))
    }
    if (open === 0 && slow.length === SOCKETS) clearInterval(trickle)
  }, TRICKLE_MS)
  t.teardown(() => clearInterval(trickle))
  await within(opened, WINDOW_MS + 5_000, 'every slow socket connected')

  // In the middle of them: a normal client connects and round-trips before any is dropped.
  const normal = await roundTrip(t, gw.url, `slow/normal/${process.pid}`, 5_000)
  const normalDoneAt = Date.now()

  await within(
    Promise.all(slow.map((s) => s.client.closed)),
    WINDOW_MS + TIMEOUT_MS + LATE_MS + 5_000,
    'every slow socket dropped',
  )
  clearInterval(trickle)
  const drops = slow.map((s) => (s.client.closedAt ?? 0) - (s.client.connectedAt ?? 0))
  const sinceStart = slow.map((s) => (s.client.closedAt ?? 0) - started)
  const firstDropAt = Math.min(...slow.map((s) => s.client.closedAt ?? 0))
  // Early is measured from before the socket's connect call, which the gateway's accept (its
  // timer's start) cannot precede: a busy test process sees 'connect' late, not the gateway.
  const early = slow.filter(
    (s) => (s.client.closedAt ?? 0) - s.client.openedAt < TIMEOUT_MS - EARLY_MS,
  ).length
  const late = drops.filter((ms) => ms > TIMEOUT_MS + LATE_MS).length
  const got408 = slow.filter((s) => s.client.head?.status === 408)
  const other = slow.filter((s) => s.client.head !== undefined && s.client.head.status !== 408)
  t.equal(early, 0, `none dropped before ${TIMEOUT_MS} ms`)
  t.equal(late, 0, `every one dropped within ${LATE_MS} ms of the timeout`)
  t.equal(other.length, 0, 'no answer but 408', {
    statuses: other.map((s) => s.client.head?.status),
  })
  t.equal(
    got408.filter((s) => s.kind === 'stall').length,
    slow.filter((s) => s.kind === 'stall').length,
    'every stalled socket was answered 408',
  )
  t.ok(normalDoneAt < firstDropAt, 'the normal client round-tripped before the first drop')

  // Its connection is past the handshake and must outlive the timeout: a second round trip.
  const topic = `slow/normal/${process.pid}`
  const again = nextMessage(normal.client, topic, 5_000)
  await normal.client.publishAsync(topic, 'ping', { qos: 1 })
  t.equal((await again).payload.toString(), 'ping', 'the normal client still round-trips after')
  await endClient(normal.client)

  const lastGone = Date.now()
  const settled = await expectSettled(t, ctx, quiet, lastGone)
  const counted = (await rejections(gw.adminUrl)) - rejectedBefore
  t.equal(
    counted,
    SOCKETS,
    'each counted in handshake_rejections_total{reason="handshake_timeout"}',
  )

  figures(t, 'slow-handshakes', {
    sockets: SOCKETS,
    stall: slow.filter((s) => s.kind === 'stall').length,
    trickle: slow.filter((s) => s.kind === 'trickle').length,
    dropped: slow.filter((s) => s.client.isClosed).length,
    got408: got408.length,
    trickle408: got408.filter((s) => s.kind === 'trickle').length,
    closedWithout408: slow.length - got408.length,
    dropMsMin: Math.min(...drops),
    dropMsMax: Math.max(...drops),
    droppedAtMsAfterStartMin: Math.min(...sinceStart),
    droppedAtMsAfterStartMax: Math.max(...sinceStart),
    trickledBytesMax: Math.max(...slow.map((s) => s.sent)),
    normalRoundTripMs: normal.ms,
    normalDoneBeforeFirstDropMs: firstDropAt - normalDoneAt,
    counted,
    fdsBackMs: settled.gatewayMs,
    baselineFds: quiet.gatewayFds,
  })
})

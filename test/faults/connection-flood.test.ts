// A flood of upgrades at once against limits.maxConnections = N: 2N upgrades, exactly N let
// in (101), every other one answered 503 with Retry-After (README, "The WebSocket handshake").
// Then the same again after the first wave has closed: the second wave must be answered the
// same way, leave nothing behind either, and not grow the gateway's memory.
//
// Memory is read after a full GC in the gateway (lib/gc.ts): resident size without one swung
// by +-30 MiB between identical waves of 2,000, with the heap itself flat. The raw readings
// are printed too.
//
// Short size: N = 100; long: N = 2000.
import t, { type Test } from 'tap'
import { endClient, roundTrip } from './lib/clients.js'
import { INSPECTOR_ENV, memoryAfterGc, type Memory } from './lib/gc.js'
import { clientFrame, RawWsClient, upgradeBytes } from './lib/killable-client.js'
import { expectSettled, warmedUp, type Quiet, type SettleContext } from './lib/settle.js'
import { within } from './lib/sockets.js'
import { figures, random, sized, startGatewayProcess, startSysMosquitto } from './lib/suite.js'

const N = sized(100, 2_000)
/** Flat: the second wave within 5 % or 4 MiB of the first, whichever is more (seen: < 1 MiB). */
const RSS_SLACK = (rss: number): number => Math.max(rss * 0.05, 4 * 1024 * 1024)
/** The JavaScript heap after a GC: within 10 % or 2 MiB (seen: < 0.5 MiB). */
const HEAP_SLACK = (heap: number): number => Math.max(heap * 0.1, 2 * 1024 * 1024)
/** Back to quiet after a wave closed: 2 s, and 1 ms per client more for the long size. */
const SETTLE_MS = 2_000 + sized(0, N)
const MiB = (bytes: number): number => bytes / 1024 / 1024

const memory = (ctx: SettleContext): Promise<Memory> => memoryAfterGc(ctx.gw)

interface Wave {
  statuses: Record<string, number>
  answeredMs: number
  open: Memory
  closed: Memory
  closedMs: number
}

async function wave(t: Test, ctx: SettleContext, quiet: Quiet, name: string): Promise<Wave> {
  const started = Date.now()
  const clients = Array.from({ length: 2 * N }, () => new RawWsClient(ctx.gw.port))
  t.teardown(() => clients.forEach((c) => c.socket.destroy()))
  // Each request is written the moment its socket connects: 2N upgrades in flight at once.
  await within(
    Promise.all(
      clients.map(async (c) => {
        try {
          await c.connected()
          c.write(upgradeBytes())
          await c.response()
        } catch {
          // Counted below as status 0: no answer before the socket closed.
        }
      }),
    ),
    30_000 + 10 * N,
    `${name}: an answer to every upgrade`,
  )
  const answeredMs = Date.now() - started
  const statuses: Record<string, number> = {}
  const retryAfter: Record<string, number> = {}
  for (const c of clients) {
    const status = c.head?.status ?? 0
    statuses[status] = (statuses[status] ?? 0) + 1
    if (status === 503) {
      const value = c.head?.headers['retry-after'] ?? 'none'
      retryAfter[value] = (retryAfter[value] ?? 0) + 1
    }
  }
  const accepted = clients.filter((c) => c.head?.status === 101)
  t.equal(accepted.length, N, `${name}: exactly ${N} of ${2 * N} let in`, { statuses })
  t.equal(statuses['503'] ?? 0, N, `${name}: every other one answered 503`, { statuses })
  t.same(Object.keys(retryAfter), ['5'], `${name}: every 503 says Retry-After: 5`, {
    retryAfter,
  })
  // The refused ones are closed by the gateway once their answer is written.
  await within(
    Promise.all(clients.filter((c) => c.head?.status !== 101).map((c) => c.closed)),
    10_000,
    `${name}: every refused client closed by the gateway`,
  )
  const open = await memory(ctx)
  // A normal close: a close frame (1000), the gateway's answer, then the gateway's FIN.
  for (const c of accepted) c.write(clientFrame(Buffer.from([0x03, 0xe8]), 8))
  await within(
    Promise.all(accepted.map((c) => c.closed)),
    10_000 + 5 * N,
    `${name}: every accepted client closed`,
  )
  const lastClosed = Math.max(...accepted.map((c) => c.closedAt ?? 0))
  const settled = await expectSettled(t, ctx, quiet, lastClosed, SETTLE_MS)
  return { statuses, answeredMs, open, closed: await memory(ctx), closedMs: settled.gatewayMs }
}

t.test(`${2 * N} upgrades at once against maxConnections=${N}`, async (t) => {
  random(t, 'connection-flood') // no randomness here; printed so every case names its run
  const broker = await startSysMosquitto(t)
  const gw = await startGatewayProcess(t, broker.port, {
    DRAWBRIDGE_LIMITS_MAX_CONNECTIONS: String(N),
    // No periodic readiness check: each would be one more broker socket in the counts.
    DRAWBRIDGE_ADMIN_READINESS_INTERVAL: '1h',
    ...INSPECTOR_ENV,
  })
  const { ctx, quiet } = await warmedUp(t, gw, broker)
  const rest = await memory(ctx)

  const first = await wave(t, ctx, quiet, 'first wave')
  const second = await wave(t, ctx, quiet, 'second wave')

  const flat = (what: string, a: number, b: number, slack: number): void => {
    t.ok(b - a <= slack, `${what}: second wave within ${MiB(slack).toFixed(1)} MiB of the first`, {
      firstMiB: MiB(a),
      secondMiB: MiB(b),
    })
  }
  flat('RSS after GC, N open', first.open.rss, second.open.rss, RSS_SLACK(first.open.rss))
  flat('RSS after GC, closed', first.closed.rss, second.closed.rss, RSS_SLACK(first.closed.rss))
  flat(
    'heap after GC, closed',
    first.closed.heap,
    second.closed.heap,
    HEAP_SLACK(first.closed.heap),
  )
  // And the gateway still serves after both floods.
  const after = await roundTrip(t, gw.url, `flood/after/${process.pid}`)
  await endClient(after.client)

  figures(t, 'connection-flood', {
    max: N,
    upgrades: 2 * N,
    wave1: Object.entries(first.statuses)
      .map(([s, n]) => `${s}:${n}`)
      .join(','),
    wave2: Object.entries(second.statuses)
      .map(([s, n]) => `${s}:${n}`)
      .join(','),
    answeredMs1: first.answeredMs,
    answeredMs2: second.answeredMs,
    backMs1: first.closedMs,
    backMs2: second.closedMs,
    rssRestMiB: MiB(rest.rss),
    rssOpen1MiB: MiB(first.open.rss),
    rssClosed1MiB: MiB(first.closed.rss),
    rssOpen2MiB: MiB(second.open.rss),
    rssClosed2MiB: MiB(second.closed.rss),
    rssGrowthMiB: MiB(second.closed.rss - first.closed.rss),
    heapKiBPerOpenConnection: (first.open.heap - rest.heap) / 1024 / N,
    heapClosed1MiB: MiB(first.closed.heap),
    heapClosed2MiB: MiB(second.closed.heap),
    rawRss: [first.open.raw, first.closed.raw, second.open.raw, second.closed.raw]
      .map((r) => MiB(r).toFixed(1))
      .join('/'),
    roundTripAfterMs: after.ms,
  })
})

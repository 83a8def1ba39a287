// A flood of upgrades from many distinct source addresses (the loopback /8 gives them: Linux
// routes all of 127.0.0.0/8 to lo) against the per-client table: limits.trackedClients bounds
// it, the least recently seen client is forgotten first and counted
// (drawbridge_limits_evicted_clients_total), and a second flood of as many new addresses
// leaves the gateway's memory where the first left it.
//
// Each upgrade passes the per-client step (limits.perClientRate keeps an entry for every
// client) and is then refused 503 by limits.maxConnections=0, so the flood costs the table and
// not a broker connection each. Memory is read after a full GC in the gateway (lib/gc.ts).
//
// Short size: 10,000 addresses per flood (20,000 in all), trackedClients 1,000; long: 100,000
// per flood and 20,000.
import net from 'node:net'
import t from 'tap'
import { parseResponse } from '../helpers/raw.js'
import { parseExposition, value } from '../helpers/scrape.js'
import { INSPECTOR_ENV, memoryAfterGc } from './lib/gc.js'
import { upgradeBytes } from './lib/killable-client.js'
import { adminGetClosing } from './lib/settle.js'
import { within } from './lib/sockets.js'
import { figures, random, sized, startGatewayProcess, startSysMosquitto } from './lib/suite.js'

const ADDRESSES = sized(10_000, 100_000)
const TRACKED = sized(1_000, 20_000)
/** Upgrades in flight at once. */
const CONCURRENCY = 64
/** Flat: the second flood within 5 % or 8 MiB of the first, whichever is more. */
const RSS_SLACK = (rss: number): number => Math.max(rss * 0.05, 8 * 1024 * 1024)
const MiB = (bytes: number): number => bytes / 1024 / 1024

/** The i-th loopback address from 127.1.0.1 on, never .0 or .255 in the last byte. */
function loopback(i: number): string {
  const rest = Math.floor(i / 254)
  return `127.${1 + Math.floor(rest / 256)}.${rest % 256}.${(i % 254) + 1}`
}

/** One upgrade from `localAddress`: the status it was answered with (0: none). */
function upgradeFrom(port: number, localAddress: string): Promise<number> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress })
    let data = ''
    socket.setTimeout(10_000, () => socket.destroy())
    socket.on('connect', () => socket.write(upgradeBytes()))
    socket.on('data', (chunk: Buffer) => (data += chunk.toString('latin1')))
    socket.on('error', () => undefined)
    socket.on('close', () => resolve(parseResponse(data).status))
  })
}

/** `count` upgrades from addresses first..first+count-1, CONCURRENCY at a time. */
async function flood(port: number, first: number, count: number): Promise<Record<string, number>> {
  const statuses: Record<string, number> = {}
  let next = first
  const worker = async (): Promise<void> => {
    while (next < first + count) {
      const status = await upgradeFrom(port, loopback(next++))
      statuses[status] = (statuses[status] ?? 0) + 1
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  return statuses
}

t.test(`${ADDRESSES} distinct client addresses against trackedClients=${TRACKED}`, async (t) => {
  random(t, 'client-flood') // no randomness here; printed so every case names its run
  const broker = await startSysMosquitto(t)
  const gw = await startGatewayProcess(t, broker.port, {
    DRAWBRIDGE_LIMITS_MAX_CONNECTIONS: '0',
    DRAWBRIDGE_LIMITS_PER_CLIENT_RATE: '1',
    DRAWBRIDGE_LIMITS_TRACKED_CLIENTS: String(TRACKED),
    DRAWBRIDGE_ADMIN_READINESS_INTERVAL: '1h',
    ...INSPECTOR_ENV,
  })
  const metrics = async () => parseExposition((await adminGetClosing(gw.adminUrl, '/metrics')).body)
  const rest = await memoryAfterGc(gw)

  const started = Date.now()
  const first = await within(flood(gw.port, 0, ADDRESSES), 60_000 + ADDRESSES, 'first flood')
  const firstMs = Date.now() - started
  t.same(first, { 503: ADDRESSES }, 'every upgrade passed its own limit and met capacity 0')
  const afterFirst = await memoryAfterGc(gw)
  const m1 = await metrics()
  t.equal(value(m1, 'drawbridge_limits_tracked_clients'), TRACKED, 'the table is full, no more')
  t.equal(
    value(m1, 'drawbridge_limits_evicted_clients_total'),
    ADDRESSES - TRACKED,
    'every client past the bound evicted and counted',
  )

  const second = await within(
    flood(gw.port, ADDRESSES, ADDRESSES),
    60_000 + ADDRESSES,
    'second flood',
  )
  t.same(second, { 503: ADDRESSES }, 'second flood: the same answers')
  const afterSecond = await memoryAfterGc(gw)
  const m2 = await metrics()
  t.equal(value(m2, 'drawbridge_limits_tracked_clients'), TRACKED)
  t.equal(value(m2, 'drawbridge_limits_evicted_clients_total'), 2 * ADDRESSES - TRACKED)
  const slack = RSS_SLACK(afterFirst.rss)
  t.ok(afterSecond.rss - afterFirst.rss <= slack, 'RSS after GC flat across the floods', {
    firstMiB: MiB(afterFirst.rss),
    secondMiB: MiB(afterSecond.rss),
  })
  figures(t, 'client-flood', {
    addresses: ADDRESSES,
    tracked: TRACKED,
    floodMs: firstMs,
    evicted: value(m2, 'drawbridge_limits_evicted_clients_total'),
    rssRestMiB: MiB(rest.rss),
    rssFlood1MiB: MiB(afterFirst.rss),
    rssFlood2MiB: MiB(afterSecond.rss),
    heapRestMiB: MiB(rest.heap),
    heapFlood1MiB: MiB(afterFirst.heap),
    heapFlood2MiB: MiB(afterSecond.heap),
  })
})

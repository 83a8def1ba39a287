// "Nothing is left behind", as the fault cases check it after each fault: the gateway's
// descriptors back to what they were before, the broker's too, the broker's own $SYS count of
// connected clients back, no connection in /connections and drawbridge_connections_active 0.
//
// Mosquitto 2.0 publishes $SYS only when `now - sys_interval > last_update` in whole seconds:
// with sys_interval 1 that is every 2 s (measured: uptime 0, 2, 4, 6 s), and a value only when
// it changed. So the $SYS count may lag the broker by one 2 s tick, and a value that did not
// change since before the fault is the old one. The two checks together are still sound: the
// broker's descriptors show at once that it holds no connection from the fault (a client it
// still counted would hold one), and $SYS must then agree within one tick.
import http from 'node:http'
import type { Test } from 'tap'
import type { Teardown } from '../../helpers/broker.js'
import { parseExposition, value } from '../../helpers/scrape.js'
import { endClient, roundTrip } from './clients.js'
import { describeSockets, pollUntil, tcpSocketsOf } from './sockets.js'
import { openFds, type FaultGateway, type SysBroker } from './suite.js'

/** How long $SYS may lag the broker: one publication tick (see above). */
export const SYS_TICK_MS = 2_000

/**
 * GET on the admin listener with `Connection: close` and no agent, resolved once the socket has
 * closed: a kept-alive admin connection would be one more descriptor in the gateway and spoil
 * the very count being checked.
 */
export function adminGetClosing(
  adminUrl: string,
  path: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      `${adminUrl}${path}`,
      { agent: false, headers: { Connection: 'close' } },
      (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => (body += chunk))
        res.on('end', () => {
          const done = (): void => resolve({ status: res.statusCode ?? 0, body })
          if (res.socket.destroyed) done()
          else res.socket.once('close', done)
        })
      },
    )
    req.setTimeout(5_000, () => req.destroy(new Error(`admin ${path}: no answer within 5 s`)))
    req.on('error', reject)
  })
}

/** The connections /connections lists (their ids), and drawbridge_connections_active. */
export async function gatewayView(
  adminUrl: string,
): Promise<{ connections: string[]; active: number }> {
  const list = await adminGetClosing(adminUrl, '/connections')
  if (list.status !== 200) throw new Error(`/connections answered ${list.status}: ${list.body}`)
  const connections = (JSON.parse(list.body) as { id: string }[]).map((c) => c.id)
  const metrics = await adminGetClosing(adminUrl, '/metrics')
  if (metrics.status !== 200) throw new Error(`/metrics answered ${metrics.status}`)
  const scrape = parseExposition(metrics.body)
  const active =
    value(scrape, 'drawbridge_connections_active', { listener: 'ws' }) +
    value(scrape, 'drawbridge_connections_active', { listener: 'wss' })
  return { connections, active }
}

export interface Quiet {
  gatewayFds: number
  brokerFds: number
  /** $SYS connected clients, startSysMosquitto's subscriber not counted. */
  sys: number
}

export interface SettleContext {
  gw: FaultGateway
  broker: SysBroker
  /** False while the broker is dead (killed): its descriptors and $SYS are not checked. */
  brokerAlive: boolean
  /** Port numbers named in failure messages. */
  names: Record<number, string>
}

export interface Settled {
  ok: boolean
  /** ms from `since` until each was back; -1 when it was not in time. */
  gatewayMs: number
  brokerMs: number
  sysMs: number
  /** The gateway's TCP sockets left when it was not back (empty when it was). */
  left: string
}

/**
 * Waits (up to `deadlineMs` after `since`, one $SYS tick more for $SYS) for the gateway and the
 * broker to be back to `quiet`, all three at once, and records one assertion per property.
 */
export async function expectSettled(
  t: Test,
  ctx: SettleContext,
  quiet: Quiet,
  since: number,
  deadlineMs = 2_000,
): Promise<Settled> {
  const sysSlack = SYS_TICK_MS + 500
  const remaining = (extra = 0): number => Math.max(1, since + deadlineMs + extra - Date.now())
  /** When `check` first held (ms after `since`), or undefined if not by the deadline. */
  const when = async (
    check: () => boolean | Promise<boolean>,
    extra = 0,
  ): Promise<number | undefined> => {
    const met = await pollUntil(check, remaining(extra))
    const ms = Date.now() - since
    // A check that first runs after the deadline does not count.
    return met && ms <= deadlineMs + extra ? ms : undefined
  }
  const gatewayFds = (): number => openFds(ctx.gw.pid)
  const brokerFds = (): number => (ctx.brokerAlive ? openFds(ctx.broker.pid) : 0)
  let left = ''
  const [gatewayMs, brokerMs, sysMs] = await Promise.all([
    when(() => gatewayFds() === quiet.gatewayFds).then((ms) => {
      if (ms === undefined) left = describeSockets(ctx.gw.pid, ctx.names)
      return ms
    }),
    when(() => brokerFds() === quiet.brokerFds),
    ctx.brokerAlive
      ? ctx.broker.waitForClients(quiet.sys, remaining(sysSlack)).then(
          () => (Date.now() - since <= deadlineMs + sysSlack ? Date.now() - since : undefined),
          () => undefined,
        )
      : Promise.resolve(0),
  ])
  t.ok(
    gatewayMs !== undefined,
    `gateway descriptors back to ${quiet.gatewayFds} within ${deadlineMs} ms`,
    {
      fds: gatewayFds(),
      ms: gatewayMs ?? Date.now() - since,
      sockets: left,
    },
  )
  if (ctx.brokerAlive) {
    t.ok(
      brokerMs !== undefined,
      `broker descriptors back to ${quiet.brokerFds} within ${deadlineMs} ms`,
      {
        fds: brokerFds(),
      },
    )
  }
  if (ctx.brokerAlive) {
    t.ok(
      sysMs !== undefined,
      `$SYS connected count back to ${quiet.sys} within ${deadlineMs} ms and a tick`,
      { sys: ctx.broker.connectedClients() },
    )
  }
  const view = await gatewayView(ctx.gw.adminUrl)
  t.same(view.connections, [], '/connections is empty')
  t.equal(view.active, 0, 'drawbridge_connections_active is 0')
  // Still back after that (a count can pass through its old value on the way up): the gateway
  // less the admin connection just used, which may not have closed yet on its side.
  const adminPort = Number(new URL(ctx.gw.adminUrl).port)
  const adminSockets = tcpSocketsOf(ctx.gw.pid).filter(
    (s) => s.localPort === adminPort && s.state !== 'LISTEN',
  ).length
  const still =
    gatewayFds() - adminSockets === quiet.gatewayFds &&
    (!ctx.brokerAlive || brokerFds() === quiet.brokerFds)
  t.ok(still, 'and still back after the admin checks', {
    gateway: gatewayFds() - adminSockets,
    broker: brokerFds(),
  })
  return {
    ok:
      still &&
      gatewayMs !== undefined &&
      (brokerMs !== undefined || !ctx.brokerAlive) &&
      sysMs !== undefined &&
      view.connections.length === 0 &&
      view.active === 0,
    gatewayMs: gatewayMs ?? -1,
    brokerMs: brokerMs ?? -1,
    sysMs: sysMs ?? -1,
    left,
  }
}

/**
 * The quiet state: no TCP socket in the gateway but its listeners (nothing connected, nothing
 * half-closed) and $SYS at `sys`; then the gateway's descriptors and the broker's.
 */
export async function measureQuiet(ctx: SettleContext, sys = 0): Promise<Quiet> {
  const quietNow = (): boolean => tcpSocketsOf(ctx.gw.pid).every((s) => s.state === 'LISTEN')
  if (!(await pollUntil(quietNow, 5_000))) {
    throw new Error(`gateway never quiet: ${describeSockets(ctx.gw.pid, ctx.names)}`)
  }
  // Two ticks: the first value after a (re)subscription may be an old retained one.
  if (ctx.brokerAlive) await ctx.broker.waitForClients(sys, 2 * SYS_TICK_MS + 1_000)
  return {
    gatewayFds: openFds(ctx.gw.pid),
    brokerFds: ctx.brokerAlive ? openFds(ctx.broker.pid) : 0,
    sys,
  }
}

/**
 * A gateway ready for a case to measure against: its first readiness check done (that broker
 * connect made and closed), then, with `warmUp`, one real MQTT round trip, so whatever the
 * gateway opens lazily on its first connection is in the baseline and not counted as a leak;
 * then its quiet state.
 */
export async function warmedUp(
  t: Teardown,
  gw: FaultGateway,
  broker: SysBroker,
  options: { names?: Record<number, string>; warmUp?: boolean } = {},
): Promise<{ ctx: SettleContext; quiet: Quiet }> {
  await gw.process.waitForLog((l) => l.msg === 'upstream reachable: ready', 15_000)
  if (options.warmUp ?? true) {
    const warm = await roundTrip(t, gw.url, `faults/warm/${gw.port}`)
    await endClient(warm.client)
    await gw.process.waitForLog((l) => l.msg === 'connection closed')
  }
  const names = options.names ?? { [broker.port]: 'broker', [gw.port]: 'gateway' }
  const ctx: SettleContext = { gw, broker, brokerAlive: true, names }
  return { ctx, quiet: await measureQuiet(ctx) }
}

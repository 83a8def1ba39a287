// The admin listener over real sockets: health, readiness, /connections for a known exchange,
// DELETE with 1008, and the bearer token.
import { once } from 'node:events'
import t from 'tap'
import { WebSocket, type RawData } from 'ws'
import mqttPacket from 'mqtt-packet'
import { bearerMatches } from '../src/admin/auth.js'
import type { ConnectionView } from '../src/admin/connections.js'
import { loadConfig } from '../src/config/load.js'
import { startEmbeddedBroker } from '../src/dev/broker.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { adminGet, delta, eventually, scrape, value } from './helpers/scrape.js'

const CONNACK = Buffer.from([0x20, 0x02, 0x00, 0x00])
const PINGREQ = Buffer.from([0xc0, 0x00])
const PINGRESP = Buffer.from([0xd0, 0x00])

/** Sends `data` as one binary frame and resolves with the next message from the gateway. */
async function exchange(ws: WebSocket, data: Buffer): Promise<Buffer> {
  const reply = once(ws, 'message') as Promise<[RawData]>
  ws.send(data)
  const [message] = await reply
  return message as Buffer
}

t.test('healthz, readyz, unknown paths and methods', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port)
  const health = await adminGet(gw.adminUrl, '/healthz')
  t.equal(health.status, 200)
  t.equal(health.body, 'ok\n')
  t.equal(health.headers.get('cache-control'), 'no-store')
  t.ok(
    await eventually(async () => (await adminGet(gw.adminUrl, '/readyz')).status === 200),
    'ready once the first upstream check reached the broker',
  )
  t.equal((await adminGet(gw.adminUrl, '/readyz')).body, 'ready: ready\n')
  t.same(JSON.parse((await adminGet(gw.adminUrl, '/connections')).body), [])
  const metrics = await adminGet(gw.adminUrl, '/metrics')
  t.match(metrics.headers.get('content-type'), /^text\/plain; version=0\.0\.4/)
  t.match(metrics.body, /^process_cpu_user_seconds_total /m, 'default process metrics')
  t.match(metrics.body, /^drawbridge_ready 1$/m)
  t.match(metrics.body, /^drawbridge_upstream_up 1$/m)
  t.equal((await adminGet(gw.adminUrl, '/nope')).status, 404)
  t.equal((await adminGet(gw.adminUrl, '/connections/nope')).status, 404)
  t.equal((await adminGet(gw.adminUrl, '/connections/nope', { method: 'DELETE' })).status, 404)
  const post = await adminGet(gw.adminUrl, '/metrics', { method: 'POST' })
  t.equal(post.status, 405)
  t.equal(post.headers.get('allow'), 'GET')

  // The public port serves none of this.
  const onPublic = await fetch(`http://127.0.0.1:${gw.port}/metrics`)
  t.equal(onPublic.status, 404)
  await onPublic.text()
})

t.test(
  '/connections shows the exact bytes of a known exchange; DELETE closes with 1008',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const gw = await startTestGateway(t, broker.port)
    const ws = new WebSocket(gw.url, ['mqtt'])
    await once(ws, 'open')
    const connect = mqttPacket.generate({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clientId: 'obs-known-exchange',
      clean: true,
      keepalive: 0,
    })
    t.same(await exchange(ws, connect), CONNACK)
    t.same(await exchange(ws, PINGREQ), PINGRESP)
    t.same(await exchange(ws, PINGREQ), PINGRESP)

    const list = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as ConnectionView[]
    t.equal(list.length, 1)
    const view = list[0] as ConnectionView
    t.match(view, {
      listener: 'ws',
      remoteAddress: /^127\.0\.0\.1:\d+$/,
      forwardedFor: null,
      subprotocol: 'mqtt',
      tls: null,
      broker: `127.0.0.1:${broker.port}`,
      bytes: {
        clientToBroker: connect.length + 2 * PINGREQ.length,
        brokerToClient: CONNACK.length + 2 * PINGRESP.length,
      },
      frames: { clientToBroker: 3, brokerToClient: 3 },
      paused: { clientToBroker: false, brokerToClient: false },
      pauses: { clientToBroker: 0, brokerToClient: 0 },
    })
    t.ok(Date.parse(view.openedAt) <= Date.parse(view.lastActivity), 'activity after open')
    t.ok(view.durationSeconds >= 0 && view.idleSeconds >= 0)

    const one = await adminGet(gw.adminUrl, `/connections/${encodeURIComponent(view.id)}`)
    t.equal(one.status, 200)
    t.same((JSON.parse(one.body) as ConnectionView).bytes, view.bytes)

    const before = await scrape(gw.adminUrl)
    const clientClosed = once(ws, 'close') as Promise<[number, Buffer]>
    const del = await adminGet(
      gw.adminUrl,
      `/connections/${encodeURIComponent(view.id)}?reason=${encodeURIComponent('ticket 42')}`,
      { method: 'DELETE' },
    )
    t.equal(del.status, 202)
    t.same(JSON.parse(del.body), {
      id: view.id,
      code: 1008,
      reason: 'closed by an operator: ticket 42',
    })
    const [code, reason] = await clientClosed
    t.equal(code, 1008, 'the client sees 1008')
    t.equal(reason.toString(), 'closed by an operator: ticket 42', 'and the reason')
    const logged = await gw.waitForLog((l) => l.msg === 'connection closed by operator')
    t.equal(logged.conn, view.id)
    t.equal(logged.reason, 'closed by an operator: ticket 42')
    const closed = await gw.waitForLog((l) => l.msg === 'connection closed')
    t.match(closed, { conn: view.id, code: 1008, initiator: 'gateway' })
    t.equal(
      (await adminGet(gw.adminUrl, `/connections/${encodeURIComponent(view.id)}`)).status,
      404,
    )
    const after = await scrape(gw.adminUrl)
    t.equal(
      delta(before, after, 'drawbridge_closes_total', { code: '1008', initiator: 'gateway' }),
      1,
    )
  },
)

t.test('a long close reason is cut to what a close frame can carry', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port)
  const ws = new WebSocket(gw.url, ['mqtt'])
  await once(ws, 'open')
  const [view] = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as ConnectionView[]
  const clientClosed = once(ws, 'close') as Promise<[number, Buffer]>
  const del = await adminGet(
    gw.adminUrl,
    `/connections/${view?.id ?? ''}?reason=${encodeURIComponent('é'.repeat(200))}`,
    { method: 'DELETE' },
  )
  t.equal(del.status, 202)
  const [code, reason] = await clientClosed
  t.equal(code, 1008)
  t.ok(reason.length <= 123, `reason is ${reason.length} bytes (RFC 6455 5.5: at most 123)`)
  t.match(reason.toString(), /^closed by an operator: é+$/, 'cut on a character boundary')
})

t.test(
  'admin.token: 401 without or with a wrong token, 200 with it; probes stay open',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const token = 's3cret-token'
    const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_ADMIN_TOKEN: token })
    const ws = new WebSocket(gw.url, ['mqtt'])
    await once(ws, 'open')
    t.teardown(() => ws.terminate())
    const [view] = (await (
      await fetch(`${gw.adminUrl}/connections`, { headers: { Authorization: `Bearer ${token}` } })
    ).json()) as ConnectionView[]
    const id = view?.id ?? ''

    for (const [method, path] of [
      ['GET', '/metrics'],
      ['GET', '/connections'],
      ['GET', `/connections/${id}`],
      ['DELETE', `/connections/${id}`],
      ['GET', '/nope'],
    ] as const) {
      for (const [what, authorization] of [
        ['no header', undefined],
        ['wrong token', 'Bearer s3cret-tokeX'],
        ['shorter token', 'Bearer s3cret'],
        ['longer token', `Bearer ${token}x`],
        ['other scheme', `Basic ${Buffer.from(`admin:${token}`).toString('base64')}`],
        ['bare token', token],
      ] as const) {
        const headers: Record<string, string> =
          authorization === undefined ? {} : { Authorization: authorization }
        const res = await adminGet(gw.adminUrl, path, { method, headers })
        t.equal(res.status, 401, `${method} ${path}, ${what}`)
        if (what === 'no header') {
          t.equal(res.headers.get('www-authenticate'), 'Bearer realm="drawbridge-admin"')
        }
      }
    }
    t.equal(gw.gateway.connections.size, 1, 'no unauthorised DELETE closed anything')

    const auth = { Authorization: `Bearer ${token}` }
    t.equal((await adminGet(gw.adminUrl, '/metrics', { headers: auth })).status, 200)
    t.equal((await adminGet(gw.adminUrl, '/connections', { headers: auth })).status, 200)
    t.equal(
      (await adminGet(gw.adminUrl, '/metrics', { headers: { Authorization: `bearer  ${token}` } }))
        .status,
      200,
      'the scheme is case-insensitive (RFC 7235 section 2.1)',
    )
    t.equal((await adminGet(gw.adminUrl, '/healthz')).status, 200, '/healthz needs no token')
    t.ok(
      await eventually(async () => (await adminGet(gw.adminUrl, '/readyz')).status === 200),
      '/readyz needs no token',
    )
    t.equal(
      (await adminGet(gw.adminUrl, `/connections/${id}`, { method: 'DELETE', headers: auth }))
        .status,
      202,
    )
    await once(ws, 'close')

    t.ok(bearerMatches(`Bearer ${token}`, token))
    t.notOk(bearerMatches(undefined, token))
    t.notOk(bearerMatches('Bearer ', token))
  },
)

t.test('readiness: 503 with the reason when the broker stops, 200 when it is back', async (t) => {
  const broker = await startEmbeddedBroker({ host: '127.0.0.1', port: 0 })
  t.teardown(() => broker.close())
  const gw = await startTestGateway(t, broker.address.port, {
    DRAWBRIDGE_ADMIN_READINESS_INTERVAL: '100ms',
    DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT: '500ms',
  })
  const readyz = (): Promise<{ status: number; body: string }> => adminGet(gw.adminUrl, '/readyz')
  t.ok(await eventually(async () => (await readyz()).status === 200), 'ready with the broker up')

  await broker.close()
  t.ok(await eventually(async () => (await readyz()).status === 503), '503 once it stopped')
  t.match((await readyz()).body, /^not ready: no upstream broker reachable: .*ECONNREFUSED/)
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_ready'), 0)
  t.equal(value(s, 'drawbridge_upstream_up'), 0)
  await gw.waitForLog((l) => l.msg === 'upstream unreachable: not ready')

  const restarted = await startEmbeddedBroker({ host: '127.0.0.1', port: broker.address.port })
  t.teardown(() => restarted.close())
  t.ok(await eventually(async () => (await readyz()).status === 200), '200 again once it is back')
})

t.test(
  'readiness: 503 as soon as the gateway drains, while connections are still open',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const gw = await startTestGateway(t, broker.port)
    t.ok(await eventually(async () => (await adminGet(gw.adminUrl, '/readyz')).status === 200))
    const ws = new WebSocket(gw.url, ['mqtt'])
    await once(ws, 'open')
    gw.gateway.drain()
    const res = await adminGet(gw.adminUrl, '/readyz')
    t.equal(res.status, 503)
    t.equal(res.body, 'not ready: shutting down\n')
    t.equal((await adminGet(gw.adminUrl, '/healthz')).status, 200, 'still alive while draining')
    t.equal(ws.readyState, WebSocket.OPEN, 'open connections are not cut by draining')
    ws.close()
    await once(ws, 'close')
  },
)

t.test('admin.token is redacted from the resolved config', async (t) => {
  const loaded = loadConfig({ profile: 'development', env: { DRAWBRIDGE_ADMIN_TOKEN: 'hush' } })
  t.equal(loaded.config.admin.token, 'hush')
  t.notMatch(JSON.stringify(loaded.redacted()), /hush/)
})

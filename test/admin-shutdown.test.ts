// SIGTERM to the real CLI process: /readyz must turn 503 at once, while an open connection is
// still being drained and /healthz still answers, and the process then exits 0.
import { existsSync } from 'node:fs'
import { once } from 'node:events'
import net from 'node:net'
import t from 'tap'
import { startBroker } from './helpers/broker.js'
import { CLI, listeningPort, spawnGateway } from './helpers/process.js'
import { upgradeRequest } from './helpers/raw.js'
import { adminGet, eventually } from './helpers/scrape.js'

t.test('SIGTERM: readiness 503 first, connections drained, exit 0', async (t) => {
  t.ok(existsSync(CLI), 'dist/cli.js is built (npm test builds before running tap)')
  const broker = await startBroker(t, 'aedes')
  const gw = spawnGateway(t, {
    DRAWBRIDGE_PROFILE: 'development',
    DRAWBRIDGE_LISTEN_HOST: '127.0.0.1',
    DRAWBRIDGE_LISTEN_PORT: '0',
    DRAWBRIDGE_ADMIN_HOST: '127.0.0.1',
    DRAWBRIDGE_ADMIN_PORT: '0',
    DRAWBRIDGE_UPSTREAM_EMBEDDED: 'false',
    DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${broker.port}`,
    DRAWBRIDGE_ADMIN_READINESS_INTERVAL: '200ms',
    DRAWBRIDGE_SHUTDOWN_GRACE: '3s',
  })
  const publicPort = await listeningPort(gw)
  const adminLine = await gw.waitForLog((l) => l.msg === 'admin listening')
  const adminUrl = `http://${String(adminLine.admin)}`
  t.ok(await eventually(async () => (await adminGet(adminUrl, '/readyz')).status === 200))

  // A client that completes its upgrade and then ignores the 1001 close: it holds the gateway
  // in its shutdown grace period, during which readiness must already say 503.
  const client = net.connect(publicPort, '127.0.0.1')
  client.on('error', () => undefined)
  t.teardown(() => client.destroy())
  await once(client, 'connect')
  client.write(`${upgradeRequest('/mqtt').join('\r\n')}\r\n\r\n`)
  const [head] = (await once(client, 'data')) as [Buffer]
  t.match(head.toString('latin1'), /^HTTP\/1\.1 101 /)

  gw.child.kill('SIGTERM')
  let answer = { status: 0, body: '' }
  const drained = await eventually(
    async () => {
      answer = await adminGet(adminUrl, '/readyz')
      return answer.status === 503
    },
    2_000,
    10,
  )
  t.ok(drained, '/readyz turned 503 after SIGTERM')
  t.equal(answer.body, 'not ready: shutting down\n')
  t.equal(gw.child.exitCode, null, 'while the process is still draining')
  t.equal((await adminGet(adminUrl, '/healthz')).status, 200, 'and still alive')

  t.same(await gw.exited, { code: 0, signal: null }, 'exit 0')
  const order = gw.logs.map((l) => l.msg)
  t.ok(
    order.indexOf('shutting down') < order.indexOf('connection closed'),
    'the connection closed after the drain began',
  )
})

// SIGTERM to the real CLI process: /readyz must turn 503 at once, while an open connection is
// still being drained and /healthz still answers, and the process then exits 0.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { once } from 'node:events'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { startBroker } from './helpers/broker.js'
import { upgradeRequest } from './helpers/raw.js'
import { adminGet, eventually } from './helpers/scrape.js'

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url))

t.test('SIGTERM: readiness 503 first, connections drained, exit 0', async (t) => {
  t.ok(existsSync(CLI), 'dist/cli.js is built (npm test builds before running tap)')
  const broker = await startBroker(t, 'aedes')
  const child = spawn(process.execPath, [CLI], {
    env: {
      PATH: process.env.PATH,
      DRAWBRIDGE_PROFILE: 'development',
      DRAWBRIDGE_LISTEN_HOST: '127.0.0.1',
      DRAWBRIDGE_LISTEN_PORT: '0',
      DRAWBRIDGE_ADMIN_HOST: '127.0.0.1',
      DRAWBRIDGE_ADMIN_PORT: '0',
      DRAWBRIDGE_UPSTREAM_EMBEDDED: 'false',
      DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${broker.port}`,
      DRAWBRIDGE_ADMIN_READINESS_INTERVAL: '200ms',
      DRAWBRIDGE_SHUTDOWN_GRACE: '3s',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  const exited = once(child, 'exit') as Promise<[number | null, string | null]>
  const lines: Record<string, unknown>[] = []
  let buffered = ''
  child.stdout.on('data', (chunk: Buffer) => {
    buffered += chunk.toString()
    const parts = buffered.split('\n')
    buffered = parts.pop() ?? ''
    for (const line of parts) if (line.trim() !== '') lines.push(JSON.parse(line) as never)
  })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))

  const started = await eventually(
    async () => lines.some((l) => l.msg === 'admin listening'),
    10_000,
  )
  t.ok(started, `gateway started ${stderr}`)
  const address = (msg: string, field: string): string => {
    const found = lines.find((l) => l.msg === msg)?.[field]
    return typeof found === 'string' ? found : ''
  }
  const adminUrl = `http://${address('admin listening', 'admin')}`
  const publicPort = Number(address('gateway listening', 'listen').split(':')[1])
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

  child.kill('SIGTERM')
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
  t.equal(child.exitCode, null, 'while the process is still draining')
  t.equal((await adminGet(adminUrl, '/healthz')).status, 200, 'and still alive')

  const [code, signal] = await exited
  t.equal(code, 0, 'exit 0')
  t.equal(signal, null)
  const order = lines.map((l) => l.msg)
  t.ok(
    order.indexOf('shutting down') < order.indexOf('connection closed'),
    'the connection closed after the drain began',
  )
})

// The CLI as users run it: dist/cli.js in its own process. Exit codes, the one-line error that
// names the bad key, check-config output, and a graceful SIGTERM.
import { spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { WebSocket } from 'ws'
import { CLI, listeningPort, spawnGateway } from './helpers/process.js'

function run(
  args: string[],
  env: Record<string, string> = {},
): { status: number | null; stdout: string; stderr: string } {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('DRAWBRIDGE_') && k !== 'NODE_ENV'),
  )
  const result = spawnSync(process.execPath, [CLI, ...args], {
    // Both profiles serve wss (tls.enabled); these tests speak plain ws unless they opt in.
    env: { ...clean, DRAWBRIDGE_TLS_ENABLED: 'false', ...env },
    encoding: 'utf8',
    timeout: 20_000,
  })
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  version: string
}

t.test('--version and --help', async (t) => {
  const version = run(['--version'])
  t.equal(version.status, 0)
  t.equal(version.stdout.trim(), pkg.version)
  const help = run(['--help'])
  t.equal(help.status, 0)
  t.match(help.stdout, /drawbridge check-config/)
  const bad = run(['frobnicate'])
  t.equal(bad.status, 2)
  t.match(bad.stderr, /^drawbridge: unknown command: frobnicate/)
})

t.test('check-config prints the resolved config with secrets redacted', async (t) => {
  const ok = run(['check-config'], {
    DRAWBRIDGE_WS_PING_INTERVAL: '30s',
    DRAWBRIDGE_LIMITS_HIGH_WATER_MARK: '64KiB',
  })
  t.equal(ok.status, 0, ok.stderr)
  const printed = JSON.parse(ok.stdout) as {
    profile: string
    ws: { pingInterval: number }
    limits: { highWaterMark: number }
  }
  t.equal(printed.profile, 'development')
  t.equal(printed.ws.pingInterval, 30_000, 'durations resolved to ms')
  t.equal(printed.limits.highWaterMark, 65_536, 'sizes resolved to bytes')

  const production = run(['check-config'], {
    NODE_ENV: 'production',
    DRAWBRIDGE_UPSTREAM_BROKERS: 'broker:1883',
  })
  t.equal(production.status, 0, production.stderr)
  t.match(JSON.parse(production.stdout), {
    profile: 'production',
    upstream: { embedded: false, brokers: ['broker:1883'] },
  })
})

t.test('invalid config: exit 2 with one line naming the key', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'drawbridge-cli-'))
  const unknownKey = join(dir, 'unknown.json')
  writeFileSync(unknownKey, JSON.stringify({ ws: { pth: '/x' } }))
  const badFile = join(dir, 'bad.json')
  writeFileSync(badFile, JSON.stringify({ ws: { path: 'no-slash' } }))
  const cases: [string, string[], Record<string, string>, RegExp][] = [
    ['port not a number', ['check-config'], { DRAWBRIDGE_LISTEN_PORT: 'eighty' }, /listen\.port: /],
    [
      'bad duration',
      ['check-config'],
      { DRAWBRIDGE_WS_PING_INTERVAL: 'fast' },
      /ws\.pingInterval: must be a duration/,
    ],
    [
      'bad size',
      ['check-config'],
      { DRAWBRIDGE_WS_MAX_PAYLOAD: '16 parsecs' },
      /ws\.maxPayload: must be a size/,
    ],
    [
      'bad boolean',
      ['check-config'],
      { DRAWBRIDGE_UPSTREAM_EMBEDDED: 'flase' },
      /upstream\.embedded: must be true or false/,
    ],
    [
      'bad broker',
      ['check-config'],
      { DRAWBRIDGE_UPSTREAM_BROKERS: 'broker' },
      /upstream\.brokers: "broker" is not host:port/,
    ],
    [
      'bad log level',
      ['check-config'],
      { DRAWBRIDGE_LOG_LEVEL: 'loud' },
      /log\.level: must be one of/,
    ],
    [
      'production without broker',
      ['check-config'],
      { DRAWBRIDGE_PROFILE: 'production' },
      /upstream\.brokers: at least one broker is required/,
    ],
    [
      'embedded in production',
      ['check-config'],
      {
        DRAWBRIDGE_PROFILE: 'production',
        DRAWBRIDGE_UPSTREAM_BROKERS: 'b:1',
        DRAWBRIDGE_UPSTREAM_EMBEDDED: 'true',
      },
      /upstream\.embedded: must be false in the production profile/,
    ],
    [
      'unknown key in file',
      ['check-config', '--config', unknownKey],
      {},
      /ws\.pth: is not a Drawbridge setting/,
    ],
    [
      'bad value in file',
      ['check-config', '--config', badFile],
      {},
      /ws\.path: must be a URL path/,
    ],
    [
      'spread not below grace',
      ['check-config'],
      { DRAWBRIDGE_SHUTDOWN_GRACE: '10s', DRAWBRIDGE_SHUTDOWN_SPREAD: '10s' },
      /shutdown\.spread: \(10000 ms\) must be less than shutdown\.grace \(10000 ms\)/,
    ],
    [
      'connect mode without inspection',
      ['check-config'],
      { DRAWBRIDGE_UPSTREAM_CONNECT_ON: 'connect', DRAWBRIDGE_MQTT_INSPECT: 'false' },
      /upstream\.connectOn: connect needs mqtt\.inspect=true/,
    ],
    [
      'affinity without connect mode',
      ['check-config'],
      { DRAWBRIDGE_UPSTREAM_AFFINITY: 'clientId' },
      /upstream\.affinity: clientId needs upstream\.connectOn=connect/,
    ],
    [
      'connect mode without inspection, at start',
      [],
      { DRAWBRIDGE_UPSTREAM_CONNECT_ON: 'connect', DRAWBRIDGE_MQTT_INSPECT: 'false' },
      /upstream\.connectOn: connect needs mqtt\.inspect=true/,
    ],
    ['missing file', ['--config', join(dir, 'nope.json')], {}, /--config: file not found/],
    ['unknown profile', ['check-config', '--profile', 'staging'], {}, /profile: must be one of/],
  ]
  for (const [name, args, env, expected] of cases) {
    const result = run(args, env)
    t.equal(result.status, 2, `${name}: exit 2`)
    const lines = result.stderr.trim().split('\n')
    t.equal(lines.length, 1, `${name}: one line`)
    t.match(lines[0], /^drawbridge: invalid config: /, `${name}: prefixed`)
    t.match(lines[0], expected, `${name}: names the key`)
  }
})

t.test('Kubernetes service env vars do not break start-up; typos are warned about', async (t) => {
  const result = run(['check-config'], {
    DRAWBRIDGE_PORT: 'tcp://10.0.0.1:443',
    DRAWBRIDGE_PORT_443_TCP: 'tcp://10.0.0.1:443',
    DRAWBRIDGE_PORT_443_TCP_ADDR: '10.0.0.1',
    DRAWBRIDGE_PORT_443_TCP_PORT: '443',
    DRAWBRIDGE_PORT_443_TCP_PROTO: 'tcp',
    DRAWBRIDGE_SERVICE_HOST: '10.0.0.1',
    DRAWBRIDGE_SERVICE_PORT: '443',
    DRAWBRIDGE_SERVICE_PORT_WSS: '443',
    DRAWBRIDGE_LISTEN_PROT: '9000',
  })
  t.equal(result.status, 0, result.stderr)
  t.equal(
    (JSON.parse(result.stdout) as { listen: { port: number } }).listen.port,
    8443,
    'the injected names do not touch listen.port (the development profile says 8443)',
  )
  t.equal(result.stderr.trim().split('\n').length, 1, 'exactly one warning')
  t.match(result.stderr, /DRAWBRIDGE_LISTEN_PROT is set but is not a Drawbridge setting/)
})

t.test('a taken port: exit 1 with one line', async (t) => {
  const blocker = net.createServer()
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => blocker.close())
  const port = (blocker.address() as net.AddressInfo).port
  const result = run([], {
    DRAWBRIDGE_PROFILE: 'production',
    DRAWBRIDGE_LISTEN_HOST: '127.0.0.1',
    DRAWBRIDGE_LISTEN_PORT: String(port),
    DRAWBRIDGE_UPSTREAM_BROKERS: '127.0.0.1:1',
  })
  t.equal(result.status, 1)
  t.match(
    result.stderr,
    new RegExp(`^drawbridge: cannot listen on 127\\.0\\.0\\.1:${port}: EADDRINUSE\\n$`),
  )
})

t.test('embedded broker + SIGTERM: clients get 1001, the process exits 0', async (t) => {
  const gw = spawnGateway(t, {
    DRAWBRIDGE_LISTEN_PORT: '0',
    DRAWBRIDGE_UPSTREAM_BROKERS: '127.0.0.1:0',
    DRAWBRIDGE_SHUTDOWN_GRACE: '3s',
  })
  const port = await listeningPort(gw)
  const embedded = await gw.waitForLog((l) => l.msg.startsWith('embedded Aedes broker'))
  t.match(
    embedded.broker,
    /^127\.0\.0\.1:\d+$/,
    'the development profile starts the embedded broker',
  )

  const ws = new WebSocket(`ws://127.0.0.1:${port}/mqtt`, ['mqtt'])
  await once(ws, 'open')
  const closed = once(ws, 'close') as Promise<[number, Buffer]>
  gw.child.kill('SIGTERM')
  const [code, reason] = await closed
  t.equal(code, 1001)
  t.equal(reason.toString(), 'server shutting down')
  const exit = await gw.exited
  t.equal(exit.code, 0, 'exit 0 after a graceful stop')
  t.ok(
    gw.logs.some((l) => l.msg === 'gateway stopped'),
    'logs the stop',
  )
  t.ok(
    gw.logs.some(
      (l) => l.msg === 'connection closed' && l.code === 1001 && l.initiator === 'gateway',
    ),
    'close line says 1001 by the gateway',
  )
})

t.test(
  'SIGTERM with a client that ignores 1001: cut after shutdown.grace, still exit 0',
  async (t) => {
    const gw = spawnGateway(t, {
      DRAWBRIDGE_LISTEN_PORT: '0',
      DRAWBRIDGE_UPSTREAM_BROKERS: '127.0.0.1:0',
      DRAWBRIDGE_SHUTDOWN_GRACE: '300ms',
    })
    const port = await listeningPort(gw)
    // A raw socket that completes the upgrade and then never answers the close frame.
    const socket = net.connect(port, '127.0.0.1')
    t.teardown(() => socket.destroy())
    socket.write(
      'GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n',
    )
    await once(socket, 'data')
    gw.child.kill('SIGTERM')
    const exit = await gw.exited
    t.equal(exit.code, 0)
    t.ok(
      gw.logs.some((l) => l.msg === 'shutdown.grace over; cutting remaining connections'),
      'logs the cut',
    )
  },
)

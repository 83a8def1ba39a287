// Certificate rotation without dropping connections, three ways: files replaced in place (and
// by rename, as editors and certbot do), a Kubernetes Secret update (`..data` symlink swap), and
// new paths in the configuration (gateway.reload(), and SIGHUP to a spawned process). Each time
// a connection opened before keeps round-tripping and a new handshake sees the new serial;
// invalid material is refused with a reason and the old serial stays served.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t, { type Test } from 'tap'
import { loadConfig } from '../src/config/load.js'
import type { IssuedCert } from '../src/dev/certs.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway, type LogLine, type TestGateway } from './helpers/gateway.js'
import { serialOf, tempDir, testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { connectMqtt, roundTrip, servedSerial } from './helpers/tls-clients.js'

const pki = testPki()
const [A, B, C] = pki.servers

function reloadedTo(serial: string) {
  return (line: LogLine): boolean =>
    line.msg === 'TLS material reloaded' && (line.cert as { serial: string }).serial === serial
}

async function expectServed(t: Test, gw: TestGateway, cert: IssuedCert, what: string) {
  t.equal(await servedSerial(gw.port, pki.ca.cert), serialOf(cert), what)
}

t.test('files replaced in place and by rename: reloaded, open connection untouched', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const files = writeServerFiles(t, pki, 0)
  const gw = await startTestGateway(t, broker.port, tlsEnv(files))
  await expectServed(t, gw, A, 'serves A at start')
  const started = await gw.waitForLog((line) => line.msg === 'serving TLS certificate')
  t.match(started.cert, { serial: serialOf(A), daysLeft: 364 })

  const before = await connectMqtt(gw.url, { ca: pki.ca.cert })
  t.teardown(() => before.end(true))
  t.equal(await roundTrip(before, 'rot/a', 'one'), 'one')

  // In place: the same inodes rewritten (cp, or a tool that truncates and writes).
  writeFileSync(files.key, B.key)
  writeFileSync(files.cert, B.cert)
  await gw.waitForLog(reloadedTo(serialOf(B)))
  await expectServed(t, gw, B, 'new handshakes see B')
  t.equal(await roundTrip(before, 'rot/a', 'two'), 'two', 'the connection from before still works')

  // By rename: a new file moved over the old one (editors, certbot's symlink flip).
  writeFileSync(`${files.cert}.tmp`, C.cert)
  writeFileSync(`${files.key}.tmp`, C.key)
  renameSync(`${files.key}.tmp`, files.key)
  renameSync(`${files.cert}.tmp`, files.cert)
  await gw.waitForLog(reloadedTo(serialOf(C)))
  await expectServed(t, gw, C, 'new handshakes see C')
  t.equal(await roundTrip(before, 'rot/a', 'three'), 'three')
  t.equal(gw.gateway.connections.size, 1, 'no connection dropped')
  t.notOk(gw.logs.some((line) => line.msg === 'connection closed'))
  t.ok(gw.tlsEvents.some((e) => e.type === 'reload' && e.result === 'ok'))
})

t.test('Kubernetes Secret update: ..data symlink swap', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const dir = tempDir(t)
  // The layout kubelet makes for a Secret volume: versioned directory, ..data -> it, and
  // each key a symlink through ..data. An update writes a new directory and renames a
  // ..data_tmp symlink over ..data (one atomic step), then deletes the old directory.
  const version = (name: string, cert: IssuedCert): void => {
    mkdirSync(join(dir, name))
    writeFileSync(join(dir, name, 'tls.crt'), cert.cert)
    writeFileSync(join(dir, name, 'tls.key'), cert.key)
    writeFileSync(join(dir, name, 'ca.crt'), pki.ca.cert)
  }
  version('..2026_01_01_00_00_00.1', A)
  symlinkSync('..2026_01_01_00_00_00.1', join(dir, '..data'))
  for (const file of ['tls.crt', 'tls.key', 'ca.crt']) {
    symlinkSync(join('..data', file), join(dir, file))
  }
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_TLS_ENABLED: 'true',
    DRAWBRIDGE_TLS_CERT: join(dir, 'tls.crt'),
    DRAWBRIDGE_TLS_KEY: join(dir, 'tls.key'),
    DRAWBRIDGE_TLS_CA: join(dir, 'ca.crt'),
    DRAWBRIDGE_TLS_RELOAD_DEBOUNCE: '100ms',
  })
  await expectServed(t, gw, A, 'serves A at start')
  const before = await connectMqtt(gw.url, { ca: pki.ca.cert })
  t.teardown(() => before.end(true))

  for (const [name, next, old] of [
    ['..2026_02_01_00_00_00.2', B, '..2026_01_01_00_00_00.1'],
    ['..2026_03_01_00_00_00.3', C, '..2026_02_01_00_00_00.2'],
  ] as const) {
    version(name, next)
    symlinkSync(name, join(dir, '..data_tmp'))
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
    rmSync(join(dir, old), { recursive: true })
    await gw.waitForLog(reloadedTo(serialOf(next)))
    await expectServed(t, gw, next, `new handshakes see ${name}`)
    t.equal(await roundTrip(before, 'rot/k8s', name), name, 'the connection from before works')
  }
  t.equal(gw.gateway.connections.size, 1)
})

t.test('invalid material is refused and the old certificate stays served', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const files = writeServerFiles(t, pki, 0)
  const gw = await startTestGateway(t, broker.port, tlsEnv(files))
  const before = await connectMqtt(gw.url, { ca: pki.ca.cert })
  t.teardown(() => before.end(true))

  const cases: [string, string, string, RegExp][] = [
    // Server 2 has server 0's key; server 1's certificate with it does not match.
    ['key_mismatch', B.cert, C.key, /tls\.key .* does not match the certificate/],
    ['parse', 'this is not a certificate\n', A.key, /holds no PEM certificate/],
    ['expired', pki.expiredServer.cert, pki.expiredServer.key, /expired on/],
  ]
  for (const [reason, cert, key, message] of cases) {
    const failuresBefore = gw.logs.filter((l) => l.msg.startsWith('TLS reload refused')).length
    writeFileSync(files.key, key)
    writeFileSync(files.cert, cert)
    const line = await gw.waitForLog(
      (l) =>
        l.msg === 'TLS reload refused; still serving the previous certificate' &&
        l.reason === reason,
    )
    t.match(line, { err: message, servingSerial: serialOf(A), cause: 'file change' }, reason)
    t.ok(
      gw.logs.filter((l) => l.msg.startsWith('TLS reload refused')).length > failuresBefore,
      `${reason}: one more refusal logged`,
    )
    await expectServed(t, gw, A, `${reason}: still serving A`)
    t.equal(await roundTrip(before, 'rot/bad', reason), reason)
  }
  t.match(
    gw.tlsEvents.filter((e) => e.type === 'reload' && e.result === 'failed'),
    [{ reason: 'key_mismatch' }, { reason: 'parse' }, { reason: 'expired' }],
    'each failure counted with its reason',
  )
  t.notOk(gw.logs.some((line) => line.msg === 'TLS material reloaded'))

  // Good material again: served at once.
  writeFileSync(files.key, B.key)
  writeFileSync(files.cert, B.cert)
  await gw.waitForLog(reloadedTo(serialOf(B)))
  await expectServed(t, gw, B, 'recovers with valid material')
})

t.test(
  'reload() with changed paths in the configuration (the SIGHUP path, in-process)',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const first = writeServerFiles(t, pki, 0)
    const second = writeServerFiles(t, pki, 1)
    const gw = await startTestGateway(
      t,
      broker.port,
      tlsEnv(first, { DRAWBRIDGE_TLS_WATCH: 'false' }),
    )
    const before = await connectMqtt(gw.url, { ca: pki.ca.cert })
    t.teardown(() => before.end(true))

    const reread = (env: Record<string, string>) =>
      loadConfig({ profile: 'development', env: { ...gw.env, ...env } }).config

    const bad = gw.gateway.reload(reread({ DRAWBRIDGE_TLS_CERT: join(second.dir, 'missing.crt') }))
    t.match(bad, { ok: false, error: /tls\.cert .*missing\.crt.* cannot be read: ENOENT/ })
    await expectServed(t, gw, A, 'a missing file keeps A')

    const good = gw.gateway.reload(
      reread({
        DRAWBRIDGE_TLS_CERT: second.cert,
        DRAWBRIDGE_TLS_KEY: second.key,
        DRAWBRIDGE_WS_PATH: '/elsewhere',
        DRAWBRIDGE_TLS_CLIENT_AUTH: 'required',
      }),
    )
    t.match(good, { ok: true, changed: true, served: { serial: serialOf(B) } })
    await expectServed(t, gw, B, 'new paths served')
    t.equal(await roundTrip(before, 'rot/conf', 'kept'), 'kept')
    await gw.waitForLog(
      (l) =>
        l.msg === 'these settings changed but take effect only after a restart' &&
        JSON.stringify(l.keys) === '["ws.path"]',
    )
    await gw.waitForLog(
      (l) =>
        l.msg.startsWith('these settings take effect only after a restart') &&
        JSON.stringify(l.keys) === '["tls.clientAuth"]',
    )
    const again = gw.gateway.reload()
    t.match(again, { ok: true, changed: false }, 'same material: nothing swapped')
  },
)

t.test('SIGHUP to the process re-reads --config and serves the new paths', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const first = writeServerFiles(t, pki, 0)
  const second = writeServerFiles(t, pki, 1)
  const dir = tempDir(t)
  const configFile = join(dir, 'drawbridge.json')
  const writeConfig = (cert: string, key: string): void =>
    writeFileSync(
      configFile,
      JSON.stringify({
        listen: { host: '127.0.0.1', port: 0 },
        upstream: { brokers: [`127.0.0.1:${broker.port}`], embedded: false },
        // watch off: only the signal can have caused the reload.
        tls: {
          enabled: true,
          cert,
          key,
          ca: '',
          clientAuth: 'none',
          watch: false,
          generateDevCerts: false,
        },
      }),
    )
  writeConfig(first.cert, first.key)
  const cli = new URL('../dist/cli.js', import.meta.url).pathname
  const child = spawn(process.execPath, [cli, '--config', configFile], {
    cwd: dir,
    env: { PATH: process.env.PATH ?? '', DRAWBRIDGE_PROFILE: 'development' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  const lines: LogLine[] = []
  const waiters = new Set<() => void>()
  createInterface({ input: child.stdout }).on('line', (text) => {
    lines.push(JSON.parse(text) as LogLine)
    for (const wake of waiters) wake()
  })
  // Each line the child prints wakes the waiters; the timer is only the deadline.
  const waitFor = (match: (l: LogLine) => boolean): Promise<LogLine> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const found = lines.find(match)
        if (found === undefined) return
        waiters.delete(check)
        clearTimeout(deadline)
        resolve(found)
      }
      const deadline = setTimeout(() => {
        waiters.delete(check)
        reject(new Error('log line not seen within 10 s'))
      }, 10_000)
      waiters.add(check)
      check()
    })
  const listening = await waitFor((l) => l.msg.startsWith('gateway listening'))
  const port = Number(/:(\d+)$/.exec(String(listening.listen))?.[1])
  t.equal(listening.scheme, 'wss')
  t.equal(await servedSerial(port, pki.ca.cert), serialOf(A))
  const before = await connectMqtt(`wss://127.0.0.1:${port}/mqtt`, { ca: pki.ca.cert })
  t.teardown(() => before.end(true))

  writeConfig(second.cert, second.key)
  child.kill('SIGHUP')
  const reloaded = await waitFor(reloadedTo(serialOf(B)))
  t.equal(reloaded.cause, 'reload with configuration')
  t.equal(await servedSerial(port, pki.ca.cert), serialOf(B), 'new handshakes see B')
  t.equal(await roundTrip(before, 'rot/hup', 'after'), 'after', 'the connection from before works')

  await before.endAsync(true)
  child.kill('SIGTERM')
  const [code] = (await once(child, 'exit')) as [number | null]
  t.equal(code, 0, 'clean exit after SIGTERM')
})

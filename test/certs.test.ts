// `drawbridge certs init | client | show` as a user runs them (spawned dist/cli.js): files and
// permissions, `openssl verify` against the CA, the PKCS#12 bundle opens, and Node and python
// clients trust what was generated. Also the development profile's first start.
import { execFile } from 'node:child_process'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { startBroker } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { tempDir } from './helpers/pki.js'
import { runPaho, tryMqtt } from './helpers/tls-clients.js'

const run = promisify(execFile)
const CLI = new URL('../dist/cli.js', import.meta.url).pathname

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    // A clean env: tap's NODE_OPTIONS (coverage loader) would make each start take seconds.
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], {
      timeout: 20_000,
      env: { PATH: process.env.PATH ?? '' },
    })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string }
    return { code: e.code, stdout: e.stdout, stderr: e.stderr }
  }
}

t.test('certs init, client and show; openssl and real clients accept the result', async (t) => {
  const dir = join(tempDir(t), 'certs')
  const init = await cli('certs', 'init', '--dir', dir, '--host', 'edge.example.test')
  t.equal(init.code, 0, init.stderr)
  t.match(init.stdout, /wrote .*ca\.crt/)
  const added = await cli('certs', 'client', 'device-7', '--dir', dir, '--password', 's3cret')
  t.equal(added.code, 0, added.stderr)

  for (const file of [
    'ca.key',
    'server.key',
    'client.key',
    'client.p12',
    'device-7.key',
    'device-7.p12',
  ]) {
    t.equal(statSync(join(dir, file)).mode & 0o777, 0o600, `${file} is 0600`)
  }
  for (const file of ['ca.crt', 'server.crt', 'client.crt', 'device-7.crt']) {
    t.ok(existsSync(join(dir, file)), `${file} written`)
  }

  const verify = await run('openssl', [
    'verify',
    '-CAfile',
    join(dir, 'ca.crt'),
    join(dir, 'server.crt'),
    join(dir, 'client.crt'),
    join(dir, 'device-7.crt'),
  ])
  t.equal(verify.stdout.match(/: OK$/gm)?.length, 3, 'openssl verify: all three OK')
  const purpose = await run('openssl', [
    'verify',
    '-purpose',
    'sslserver',
    '-CAfile',
    join(dir, 'ca.crt'),
    join(dir, 'server.crt'),
  ])
  t.match(purpose.stdout, /OK/, 'server certificate fit for TLS servers')
  const p12 = await run('openssl', [
    'pkcs12',
    '-in',
    join(dir, 'device-7.p12'),
    '-passin',
    'pass:s3cret',
    '-nokeys',
  ])
  t.match(p12.stdout, /subject=CN ?= ?device-7/, 'PKCS#12 opens with its password')

  const show = await cli('certs', 'show', join(dir, 'server.crt'))
  t.equal(show.code, 0)
  t.match(show.stdout, /subject: +CN=localhost/)
  t.match(
    show.stdout,
    /DNS:localhost, IP Address:127\.0\.0\.1, IP Address:0:0:0:0:0:0:0:1, DNS:edge\.example\.test/,
  )
  t.match(show.stdout, /issuer: +CN=Drawbridge development CA/)
  t.match(show.stdout, /valid to: .*\(36[45] days left\)/)
  t.match(show.stdout, /sha256: +([0-9A-F]{2}:){31}[0-9A-F]{2}/)

  const missing = await cli('certs', 'show', join(dir, 'nope.crt'))
  t.equal(missing.code, 1)
  t.match(missing.stderr, /nope\.crt/)
  const noCa = await cli('certs', 'client', 'x', '--dir', join(dir, 'empty'))
  t.equal(noCa.code, 1)
  t.match(noCa.stderr, /run "drawbridge certs init" first/)
  const usage = await cli('certs', 'frobnicate')
  t.equal(usage.code, 2)

  // The generated files in use: required client certificates, MQTT.js and paho.
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_TLS_ENABLED: 'true',
    DRAWBRIDGE_TLS_CERT: join(dir, 'server.crt'),
    DRAWBRIDGE_TLS_KEY: join(dir, 'server.key'),
    DRAWBRIDGE_TLS_CA: join(dir, 'ca.crt'),
    DRAWBRIDGE_TLS_CLIENT_AUTH: 'required',
  })
  const ca = readFileSync(join(dir, 'ca.crt'), 'utf8')
  const device = {
    cert: readFileSync(join(dir, 'device-7.crt'), 'utf8'),
    key: readFileSync(join(dir, 'device-7.key'), 'utf8'),
    serial: '',
  }
  t.equal(await tryMqtt(gw.url, ca, device), 'ok', 'MQTT.js trusts the CA and is trusted')
  const paho = await runPaho('websockets', gw.port, [
    {
      name: 'client',
      ca: join(dir, 'ca.crt'),
      cert: join(dir, 'client.crt'),
      key: join(dir, 'client.key'),
    },
  ])
  t.equal(paho.client, 'ok', 'paho trusts the CA and is trusted')
})

t.test('development profile: certificates generated on first start, kept after', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const dir = join(tempDir(t), 'certs')
  const env = {
    DRAWBRIDGE_TLS_ENABLED: 'true',
    DRAWBRIDGE_TLS_GENERATE_DEV_CERTS: 'true',
    DRAWBRIDGE_TLS_CERT: join(dir, 'server.crt'),
    DRAWBRIDGE_TLS_KEY: join(dir, 'server.key'),
    DRAWBRIDGE_TLS_CA: join(dir, 'ca.crt'),
    DRAWBRIDGE_TLS_CLIENT_AUTH: 'optional',
  }
  const gw = await startTestGateway(t, broker.port, env)
  const generated = await gw.waitForLog(
    (line) => line.msg === 'generated development certificates (not for production)',
  )
  t.equal(generated.dir, dir)
  t.match(generated.trust, /ca\.crt as a trusted CA/)
  const ca = readFileSync(join(dir, 'ca.crt'), 'utf8')
  t.equal(await tryMqtt(gw.url, ca, undefined), 'ok', 'a client trusting the dev CA connects')

  const again = await startTestGateway(t, broker.port, env)
  await again.waitForLog((line) => line.msg === 'serving TLS certificate')
  t.notOk(
    again.logs.some((line) => line.msg.startsWith('generated development certificates')),
    'existing certificates are reused',
  )
  t.equal(readFileSync(join(dir, 'ca.crt'), 'utf8'), ca, 'CA unchanged')
})

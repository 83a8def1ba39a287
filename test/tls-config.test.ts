// TLS configuration rules and material validation without a listener: each bad setting names
// its key; each bad file is refused with a reason; expiry is warned about.
import { createPrivateKey } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { loadConfig } from '../src/config/load.js'
import { loadTlsMaterial, type TlsFiles } from '../src/edge/tls.js'
import { ConfigError, TlsMaterialError } from '../src/errors.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { serialOf, testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'

const pki = testPki()

t.test('configuration rules name the key', async (t) => {
  const load = (env: Record<string, string>, profile = 'development') =>
    loadConfig({ profile, env: { DRAWBRIDGE_TLS_GENERATE_DEV_CERTS: 'false', ...env } })
  const cases: [Record<string, string>, string, RegExp][] = [
    [{ DRAWBRIDGE_TLS_CERT: '' }, 'tls.cert', /required while tls\.enabled/],
    [
      { DRAWBRIDGE_TLS_CLIENT_AUTH: 'required', DRAWBRIDGE_TLS_CA: '' },
      'tls.ca',
      /required while tls\.clientAuth is required/,
    ],
    [{ DRAWBRIDGE_TLS_CLIENT_AUTH: 'sometimes' }, 'tls.clientAuth', /must be one of/],
    [{ DRAWBRIDGE_TLS_MIN_VERSION: 'TLSv1.1' }, 'tls.minVersion', /must be one of/],
    [
      { DRAWBRIDGE_TLS_ENABLED: 'false', DRAWBRIDGE_TCP_ENABLED: 'true' },
      'tcp.enabled',
      /needs tls\.enabled/,
    ],
  ]
  for (const [env, key, reason] of cases) {
    t.throws(() => load(env), { name: 'ConfigError', key, reason }, key)
  }
  t.throws(
    () =>
      load(
        {
          DRAWBRIDGE_UPSTREAM_BROKERS: 'broker:1883',
          DRAWBRIDGE_TLS_CERT: '/c',
          DRAWBRIDGE_TLS_KEY: '/k',
          DRAWBRIDGE_TLS_GENERATE_DEV_CERTS: 'true',
        },
        'production',
      ),
    { name: 'ConfigError', key: 'tls.generateDevCerts' },
    'no generated certificates in production',
  )

  const production = load(
    {
      DRAWBRIDGE_UPSTREAM_BROKERS: 'broker:1883',
      DRAWBRIDGE_TLS_CERT: '/c',
      DRAWBRIDGE_TLS_KEY: '/k',
    },
    'production',
  )
  t.match(production.config, { listen: { port: 443 }, tls: { enabled: true, clientAuth: 'none' } })
  t.equal(production.config.tcp.port, 8883)
  const development = loadConfig({ profile: 'development', env: {} }).config
  t.match(development, {
    listen: { host: '127.0.0.1', port: 8443 },
    tls: { enabled: true, generateDevCerts: true, cert: 'certs/server.crt' },
  })
  const redacted = loadConfig({
    profile: 'development',
    env: { DRAWBRIDGE_TLS_PASSPHRASE: 'hunter2' },
  }).redacted()
  t.notMatch(JSON.stringify(redacted), /hunter2/, 'passphrase redacted')
  t.ok(new ConfigError('a', 'b') instanceof Error)
})

t.test('loadTlsMaterial refuses bad files with a reason', async (t) => {
  const files = writeServerFiles(t, pki)
  const base: TlsFiles = {
    cert: files.cert,
    key: files.key,
    passphrase: '',
    ca: files.ca,
    crl: files.crl,
    minVersion: 'TLSv1.2',
    ciphers: '',
  }
  t.equal(loadTlsMaterial(base).served.serial, serialOf(pki.servers[0]))
  const write = (name: string, data: string): string => {
    const path = join(files.dir, name)
    writeFileSync(path, data)
    return path
  }
  const cases: [string, Partial<TlsFiles>, string, RegExp][] = [
    ['missing file', { cert: join(files.dir, 'nope') }, 'unreadable', /ENOENT/],
    ['garbage key', { key: write('bad.key', 'nonsense') }, 'parse', /tls\.key .* cannot be read/],
    [
      'chain out of order',
      { cert: write('chain.crt', pki.ca.cert + pki.servers[0].cert) },
      'chain_order',
      /put the server certificate first/,
    ],
    ['garbage CA', { ca: write('bad-ca.crt', 'x') }, 'parse', /tls\.ca .* no PEM certificate/],
    ['garbage CRL', { crl: write('bad.crl', 'x') }, 'parse', /tls\.crl .* no PEM CRL/],
    [
      'corrupt CRL',
      { crl: write('corrupt.crl', '-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n') },
      'parse',
      /OpenSSL refused/,
    ],
    ['bad ciphers', { ciphers: 'NOT-A-CIPHER' }, 'parse', /OpenSSL refused/],
  ]
  for (const [name, change, reason, message] of cases) {
    t.throws(() => loadTlsMaterial({ ...base, ...change }), { reason, message }, name)
  }

  // An encrypted key: opens with its passphrase, refused with a hint without it.
  const encrypted = createPrivateKey(pki.servers[0].key)
    .export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'open sesame' })
    .toString()
  const key = write('encrypted.key', encrypted)
  t.equal(
    loadTlsMaterial({ ...base, key, passphrase: 'open sesame' }).served.serial,
    serialOf(pki.servers[0]),
  )
  t.throws(() => loadTlsMaterial({ ...base, key, passphrase: 'wrong' }), {
    reason: 'parse',
    message: /wrong tls\.passphrase/,
  })
})

t.test('start-up fails on bad material; expiry is warned about', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const files = writeServerFiles(t, pki)
  writeFileSync(files.key, pki.servers[1].key)
  await t.rejects(startTestGateway(t, broker.port, tlsEnv(files)), {
    code: 'DRAWBRIDGE_ERR_TLS_MATERIAL',
    reason: 'key_mismatch',
  })
  t.ok(new TlsMaterialError('x') instanceof Error)

  writeFileSync(files.key, pki.servers[0].key)
  const gw = await startTestGateway(
    t,
    broker.port,
    tlsEnv(files, { DRAWBRIDGE_TLS_EXPIRY_WARNING_DAYS: '400' }),
  )
  const warning = await gw.waitForLog((line) =>
    /^TLS certificate expires in \d+ days$/.test(line.msg),
  )
  t.match(warning, { level: 40, serial: serialOf(pki.servers[0]), expiryWarningDays: 400 })
})

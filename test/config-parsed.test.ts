// loadConfig hands over parsed values: brokers as {host, port}, trusted proxies as CIDRs, allowed
// origins as compiled rules. check-config and the start log (redacted()) keep the strings.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadConfig } from '../src/config/load.js'
import { originAllowed } from '../src/edge/handshake.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'

const env = {
  DRAWBRIDGE_UPSTREAM_BROKERS: 'broker.internal:1883, [::1]:1884',
  DRAWBRIDGE_UPSTREAM_EMBEDDED: 'false',
  DRAWBRIDGE_HTTP_TRUSTED_PROXIES: '10.0.0.0/8,192.0.2.7,fd00::/8',
  DRAWBRIDGE_WS_ALLOWED_ORIGINS:
    'https://app.example.com,HTTPS://*.Example.org,http://[::1]:8080,null',
}

t.test('brokers, trusted proxies and origins come back parsed', async (t) => {
  const { config } = loadConfig({ env })
  t.strictSame(config.upstream.brokers, [
    { host: 'broker.internal', port: 1883 },
    { host: '::1', port: 1884 },
  ])
  t.strictSame(config.http.trustedProxies, [
    { address: '10.0.0.0', prefix: 8, family: 'ipv4' },
    { address: '192.0.2.7', prefix: 32, family: 'ipv4' },
    { address: 'fd00::', prefix: 8, family: 'ipv6' },
  ])
  t.strictSame(config.ws.allowedOrigins, [
    { scheme: 'https', host: 'app.example.com', port: undefined, anySubdomain: false },
    { scheme: 'https', host: '.example.org', port: undefined, anySubdomain: true },
    { scheme: 'http', host: '[::1]', port: '8080', anySubdomain: false },
    'null',
  ])
  t.ok(originAllowed('https://a.example.org', config.ws.allowedOrigins), 'the rules are usable')
  t.notOk(originAllowed('https://example.org', config.ws.allowedOrigins))
  t.ok(Object.isFrozen(config.upstream.brokers[0]), 'parsed entries are frozen too')
  t.ok(Object.isFrozen(config.ws.allowedOrigins[0]))
  t.ok(Object.isFrozen(config.http.trustedProxies))
})

t.test('values from a JSON file are parsed the same way', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'drawbridge-config-'))
  const file = join(dir, 'config.json')
  writeFileSync(
    file,
    JSON.stringify({
      upstream: { brokers: ['b1:1883', 'b2:1884'], embedded: false },
      http: { trustedProxies: ['127.0.0.1'] },
      ws: { allowedOrigins: ['https://app.example.com:8443'] },
    }),
  )
  const { config } = loadConfig({ env: {}, configFile: file })
  t.strictSame(config.upstream.brokers, [
    { host: 'b1', port: 1883 },
    { host: 'b2', port: 1884 },
  ])
  t.strictSame(config.http.trustedProxies, [{ address: '127.0.0.1', prefix: 32, family: 'ipv4' }])
  t.strictSame(config.ws.allowedOrigins, [
    { scheme: 'https', host: 'app.example.com', port: '8443', anySubdomain: false },
  ])
})

t.test('redacted() keeps showing the strings as written', async (t) => {
  const printed = loadConfig({ env }).redacted() as {
    upstream: { brokers: unknown }
    http: { trustedProxies: unknown }
    ws: { allowedOrigins: unknown }
  }
  t.strictSame(printed.upstream.brokers, ['broker.internal:1883', '[::1]:1884'])
  t.strictSame(printed.http.trustedProxies, ['10.0.0.0/8', '192.0.2.7', 'fd00::/8'])
  t.strictSame(printed.ws.allowedOrigins, [
    'https://app.example.com',
    'HTTPS://*.Example.org',
    'http://[::1]:8080',
    'null',
  ])
})

t.test(
  'reload(next) compares the parsed values: respelled is unchanged, changed is named',
  async (t) => {
    const pki = testPki()
    const broker = await startBroker(t, 'aedes')
    const files = writeServerFiles(t, pki)
    const gw = await startTestGateway(
      t,
      broker.port,
      tlsEnv(files, {
        DRAWBRIDGE_TLS_WATCH: 'false',
        DRAWBRIDGE_WS_ALLOWED_ORIGINS: 'https://app.example.com',
        DRAWBRIDGE_HTTP_TRUSTED_PROXIES: '127.0.0.1',
      }),
    )
    const reread = (changes: Record<string, string>) =>
      loadConfig({ profile: 'development', env: { ...gw.env, ...changes } }).config
    const restartOnly = 'these settings changed but take effect only after a restart'

    // The same values written differently parse to the same config: nothing to warn about.
    gw.gateway.reload(
      reread({
        DRAWBRIDGE_WS_ALLOWED_ORIGINS: 'HTTPS://App.Example.com',
        DRAWBRIDGE_HTTP_TRUSTED_PROXIES: '127.0.0.1/32',
      }),
    )
    gw.gateway.reload(
      reread({
        DRAWBRIDGE_WS_ALLOWED_ORIGINS: 'https://app.example.com,https://*.example.org',
        DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${broker.port},127.0.0.1:1`,
        DRAWBRIDGE_HTTP_TRUSTED_PROXIES: '10.0.0.0/8',
      }),
    )
    const line = await gw.waitForLog((l) => l.msg === restartOnly)
    t.strictSame(line.keys, ['ws.allowedOrigins', 'upstream.brokers', 'http.trustedProxies'])
    t.equal(
      gw.logs.filter((l) => l.msg === restartOnly).length,
      1,
      'the respelled reload, logged first, warned about nothing',
    )
  },
)

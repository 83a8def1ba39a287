import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { parseDuration, parseHostPort, parseSize, splitList } from '../src/config/formats.js'
import { forEachSchemaKey, loadConfig } from '../src/config/load.js'
import { schema } from '../src/config/schema.js'
import { ConfigError } from '../src/errors.js'

const upperSnake = (path: string): string =>
  path
    .split('.')
    .map((part) => part.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase())
    .join('_')

t.test('every key has doc, default, format and env DRAWBRIDGE_ + UPPER_SNAKE(path)', async (t) => {
  let keys = 0
  forEachSchemaKey(schema, (path, spec) => {
    keys++
    t.type(spec.doc, 'string', `${path} doc`)
    t.ok((spec.doc as string).length > 20, `${path} doc says something`)
    t.ok('default' in spec, `${path} default`)
    t.ok(spec.format !== undefined, `${path} format`)
    t.equal(spec.env, `DRAWBRIDGE_${upperSnake(path)}`, `${path} env name`)
  })
  t.ok(keys >= 17, `the schema has the core keys (${keys})`)
  t.equal(upperSnake('tls.clientAuth'), 'TLS_CLIENT_AUTH', 'the naming rule itself')
})

t.test('durations, sizes, lists and host:port', async (t) => {
  t.equal(parseDuration('500ms'), 500)
  t.equal(parseDuration('30s'), 30_000)
  t.equal(parseDuration('2m'), 120_000)
  t.equal(parseDuration('1h'), 3_600_000)
  t.equal(parseDuration('1.5s'), 1_500)
  t.equal(parseDuration(250), 250)
  t.equal(parseDuration('250'), 250)
  t.throws(() => parseDuration('soon'), /must be a duration/)
  t.throws(() => parseDuration(-1), /whole number/)
  t.throws(() => parseDuration(true), /must be a duration/)
  t.equal(parseSize('64KiB'), 65_536)
  t.equal(parseSize('16MiB'), 16 * 1024 * 1024)
  t.equal(parseSize('1MB'), 1_000_000)
  t.equal(parseSize('1gib'), 1024 ** 3)
  t.equal(parseSize(10), 10)
  t.throws(() => parseSize('12 apples'), /must be a size/)
  t.same(splitList(' mqtt, ,mqttv3.1 '), ['mqtt', 'mqttv3.1'])
  t.same(parseHostPort('broker.internal:1883'), { host: 'broker.internal', port: 1883 })
  t.same(parseHostPort('[::1]:1884'), { host: '::1', port: 1884 })
  t.throws(() => parseHostPort('::1:1883'), /not host:port/)
  t.throws(() => parseHostPort('host:70000'), /not host:port/)
})

t.test('precedence: env beats file beats profile beats default', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'drawbridge-config-'))
  const file = join(dir, 'config.json')
  writeFileSync(
    file,
    JSON.stringify({
      ws: { path: '/from-file', pingInterval: '40s' },
      limits: { maxConnections: 7 },
    }),
  )

  const defaults = loadConfig({ env: {} }).config
  t.equal(defaults.profile, 'development')
  t.equal(defaults.listen.host, '127.0.0.1', 'development profile beats the schema default 0.0.0.0')
  t.equal(defaults.upstream.embedded, true, 'development profile turns the embedded broker on')
  t.equal(defaults.ws.path, '/mqtt', 'schema default')

  const fromFile = loadConfig({ env: {}, configFile: file }).config
  t.equal(fromFile.ws.path, '/from-file', 'file beats default')
  t.equal(fromFile.ws.pingInterval, 40_000, 'file values get units too')
  t.equal(fromFile.listen.host, '127.0.0.1', 'profile still applies under the file')

  const fromEnv = loadConfig({
    env: {
      DRAWBRIDGE_WS_PATH: '/from-env',
      DRAWBRIDGE_LIMITS_MAX_CONNECTIONS: '9',
      DRAWBRIDGE_WS_SUBPROTOCOLS: 'mqtt',
    },
    configFile: file,
  }).config
  t.equal(fromEnv.ws.path, '/from-env', 'env beats file')
  t.equal(fromEnv.limits.maxConnections, 9)
  t.same(fromEnv.ws.subprotocols, ['mqtt'], 'lists from a comma-separated env var')
  t.ok(Object.isFrozen(fromEnv.ws), 'the config is frozen')
})

t.test('profile selection', async (t) => {
  const production = loadConfig({
    env: {
      NODE_ENV: 'production',
      DRAWBRIDGE_UPSTREAM_BROKERS: 'b:1883',
      DRAWBRIDGE_TLS_CERT: '/tls/tls.crt',
      DRAWBRIDGE_TLS_KEY: '/tls/tls.key',
    },
  }).config
  t.equal(production.profile, 'production', 'NODE_ENV=production selects production')
  t.equal(production.listen.host, '0.0.0.0')
  t.equal(production.upstream.embedded, false)
  const explicit = loadConfig({
    env: { NODE_ENV: 'production', DRAWBRIDGE_PROFILE: 'development' },
  }).config
  t.equal(explicit.profile, 'development', 'DRAWBRIDGE_PROFILE beats NODE_ENV')
  const option = loadConfig({
    env: {
      DRAWBRIDGE_PROFILE: 'development',
      DRAWBRIDGE_UPSTREAM_BROKERS: 'b:1',
      DRAWBRIDGE_TLS_ENABLED: 'false',
    },
    profile: 'production',
  }).config
  t.equal(option.profile, 'production', '--profile beats DRAWBRIDGE_PROFILE')
})

t.test('errors are ConfigError with the key', async (t) => {
  const cases: [Record<string, string>, string][] = [
    [{ DRAWBRIDGE_WS_PONG_TIMEOUT: '0', DRAWBRIDGE_WS_PING_INTERVAL: '10s' }, 'ws.pongTimeout'],
    [{ DRAWBRIDGE_WS_SUBPROTOCOLS: '' }, 'ws.subprotocols'],
    [
      { DRAWBRIDGE_UPSTREAM_BROKERS: 'a:1,b:0', DRAWBRIDGE_UPSTREAM_EMBEDDED: 'false' },
      'upstream.brokers',
    ],
    [{ DRAWBRIDGE_LIMITS_MAX_CONNECTIONS: '-3' }, 'limits.maxConnections'],
    [{ DRAWBRIDGE_HTTP_TRUSTED_PROXIES: '10.0.0.0/33' }, 'http.trustedProxies'],
    [{ DRAWBRIDGE_HTTP_TRUSTED_PROXIES: 'proxy.example.com' }, 'http.trustedProxies'],
    [{ DRAWBRIDGE_WS_ALLOWED_ORIGINS: 'https://app.example.com/page' }, 'ws.allowedOrigins'],
    [{ DRAWBRIDGE_WS_ALLOWED_ORIGINS: 'app.example.com' }, 'ws.allowedOrigins'],
    [{ DRAWBRIDGE_SHUTDOWN_SPREAD: '20s', DRAWBRIDGE_SHUTDOWN_GRACE: '10s' }, 'shutdown.spread'],
    [{ DRAWBRIDGE_SHUTDOWN_SPREAD: '10s', DRAWBRIDGE_SHUTDOWN_GRACE: '10s' }, 'shutdown.spread'],
    [{ DRAWBRIDGE_SHUTDOWN_SPREAD: 'slowly' }, 'shutdown.spread'],
    [{ DRAWBRIDGE_SHUTDOWN_SERVER_REFERENCE: 'other\u0000host' }, 'shutdown.serverReference'],
    [{ DRAWBRIDGE_SHUTDOWN_SERVER_REFERENCE: 'x'.repeat(65_536) }, 'shutdown.serverReference'],
    [
      { DRAWBRIDGE_UPSTREAM_CONNECT_ON: 'connect', DRAWBRIDGE_MQTT_INSPECT: 'false' },
      'upstream.connectOn',
    ],
    [{ DRAWBRIDGE_UPSTREAM_CONNECT_ON: 'publish' }, 'upstream.connectOn'],
    [{ DRAWBRIDGE_UPSTREAM_AFFINITY: 'clientId' }, 'upstream.affinity'],
    [
      { DRAWBRIDGE_UPSTREAM_CONNECT_ON: 'connect', DRAWBRIDGE_UPSTREAM_AFFINITY: 'clientid' },
      'upstream.affinity',
    ],
  ]
  for (const [env, key] of cases) {
    try {
      loadConfig({ env })
      t.fail(`${key} should have been refused`)
    } catch (err) {
      t.ok(err instanceof ConfigError, `${key}: ConfigError`)
      t.equal((err as ConfigError).key, key)
      t.equal((err as ConfigError).code, 'DRAWBRIDGE_ERR_CONFIG')
    }
  }
  const shutdown = loadConfig({
    env: {
      DRAWBRIDGE_SHUTDOWN_GRACE: '30s',
      DRAWBRIDGE_SHUTDOWN_SPREAD: '20s',
      DRAWBRIDGE_SHUTDOWN_SERVER_REFERENCE: 'mqtt-b.example.com:443',
    },
  }).config.shutdown
  t.same(
    shutdown,
    { grace: 30_000, spread: 20_000, serverReference: 'mqtt-b.example.com:443' },
    'a spread below the grace, a server reference',
  )
  t.same(
    loadConfig({ env: { DRAWBRIDGE_SHUTDOWN_GRACE: '0' } }).config.shutdown.spread,
    0,
    'no spread (the default) needs no grace',
  )
  t.match(
    loadConfig({
      env: { DRAWBRIDGE_UPSTREAM_CONNECT_ON: 'connect', DRAWBRIDGE_UPSTREAM_AFFINITY: 'username' },
    }).config.upstream,
    { connectOn: 'connect', affinity: 'username' },
    'affinity with connect mode (and mqtt.inspect, the default) is fine',
  )
  t.same(
    loadConfig({ env: { DRAWBRIDGE_WS_PING_INTERVAL: '0', DRAWBRIDGE_WS_PONG_TIMEOUT: '0' } })
      .config.ws.pingInterval,
    0,
    'pings off needs no pong timeout',
  )
})

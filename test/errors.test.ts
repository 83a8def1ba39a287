// The error classes (src/errors.ts): each carries its stable code, the upstream ones the HTTP
// status and reason label their upgrade is answered with, and ERROR_CODES is read off them.
import t from 'tap'
import {
  ConfigError,
  DrawbridgeError,
  EmbeddedBrokerError,
  ERROR_CLASSES,
  ERROR_CODES,
  ListenError,
  MqttMalformedError,
  TlsMaterialError,
  UpstreamError,
  UpstreamRefusedError,
  UpstreamTimeoutError,
} from '../src/errors.js'
import { Refusals } from '../src/edge/refusals.js'

const cases: {
  error: DrawbridgeError
  code: string
  name: string
  status?: number
  reason?: string
}[] = [
  {
    error: new ConfigError('ws.path', 'must start with /'),
    code: 'DRAWBRIDGE_ERR_CONFIG',
    name: 'ConfigError',
  },
  {
    error: new UpstreamRefusedError('no broker accepted the connection'),
    code: 'DRAWBRIDGE_ERR_UPSTREAM_REFUSED',
    name: 'UpstreamRefusedError',
    status: 502,
    reason: 'upstream_refused',
  },
  {
    error: new UpstreamTimeoutError('no broker answered'),
    code: 'DRAWBRIDGE_ERR_UPSTREAM_TIMEOUT',
    name: 'UpstreamTimeoutError',
    status: 504,
    reason: 'upstream_timeout',
  },
  {
    error: new EmbeddedBrokerError('port taken'),
    code: 'DRAWBRIDGE_ERR_EMBEDDED_BROKER',
    name: 'EmbeddedBrokerError',
  },
  { error: new ListenError('EADDRINUSE'), code: 'DRAWBRIDGE_ERR_LISTEN', name: 'ListenError' },
  {
    error: new TlsMaterialError('bad key', { reason: 'key_mismatch' }),
    code: 'DRAWBRIDGE_ERR_TLS_MATERIAL',
    name: 'TlsMaterialError',
  },
  {
    error: new MqttMalformedError('expected_connect', 'the first packet is PUBLISH, not CONNECT', {
      sender: 'client',
      packetType: 3,
      offset: 0,
    }),
    code: 'DRAWBRIDGE_ERR_MQTT_MALFORMED',
    name: 'MqttMalformedError',
  },
]

for (const { error, code, name, status, reason } of cases) {
  t.test(name, async (t) => {
    t.ok(error instanceof DrawbridgeError)
    t.equal(error.code, code)
    t.equal(error.name, name, 'the name says which class, in logs and stack traces')
    if (status === undefined) {
      t.notOk(error instanceof UpstreamError)
      return
    }
    if (!(error instanceof UpstreamError)) {
      t.fail('an upstream error class')
      return
    }
    const upstream = error
    t.equal(upstream.status, status)
    t.equal(upstream.reason, reason)
    t.match(Refusals.upstream(upstream), { status, reason, message: error.message })
  })
}

t.test('ERROR_CODES is every class, each code once', async (t) => {
  t.same(
    ERROR_CODES,
    cases.map((c) => c.code),
  )
  t.equal(new Set(ERROR_CODES).size, ERROR_CLASSES.length)
})

t.test('ConfigError names the key', async (t) => {
  const err = new ConfigError('ws.path', 'must start with /')
  t.equal(err.key, 'ws.path')
  t.equal(err.message, 'ws.path: must start with /')
})

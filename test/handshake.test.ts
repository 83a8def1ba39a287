import type { IncomingMessage } from 'node:http'
import { once } from 'node:events'
import t from 'tap'
import { WebSocket } from 'ws'
import { compileOrigins } from '../src/config/origin.js'
import {
  originAllowed,
  parseSubprotocols,
  sameOrigin,
  pickSubprotocol,
  requestPath,
  validateUpgrade,
  type HandshakePolicy,
} from '../src/edge/handshake.js'
import { freePort, startBroker, startSilentBroker } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { rawRequest, upgradeRequest } from './helpers/raw.js'

const policy: HandshakePolicy = {
  path: '/mqtt',
  subprotocols: new Set(['mqtt', 'mqttv3.1']),
  requireSubprotocol: true,
  allowedOrigins: [],
  requireOrigin: false,
}

function request(
  method: string,
  url: string,
  headers: Record<string, string>,
  httpVersion = '1.1',
): IncomingMessage {
  const [major, minor] = httpVersion.split('.').map(Number)
  return {
    method,
    url,
    headers,
    rawHeaders: Object.entries(headers).flat(),
    httpVersion,
    httpVersionMajor: major,
    httpVersionMinor: minor,
  } as unknown as IncomingMessage
}

const goodHeaders: Record<string, string> = {
  host: 'localhost',
  upgrade: 'websocket',
  'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
  'sec-websocket-version': '13',
}

t.test('validateUpgrade decides each case with its own status (pure)', async (t) => {
  const cases: [string, IncomingMessage, HandshakePolicy, number | string | false][] = [
    [
      'accepts mqtt',
      request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'mqtt' }),
      policy,
      'mqtt',
    ],
    [
      'first acceptable in client order',
      request('GET', '/mqtt?x=1', {
        ...goodHeaders,
        'sec-websocket-protocol': 'foo, mqttv3.1, mqtt',
      }),
      policy,
      'mqttv3.1',
    ],
    [
      'legacy mqttv3.1',
      request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'mqttv3.1' }),
      policy,
      'mqttv3.1',
    ],
    [
      'wrong path',
      request('GET', '/other', { ...goodHeaders, 'sec-websocket-protocol': 'mqtt' }),
      policy,
      404,
    ],
    [
      'absolute-form target',
      request('GET', 'http://host/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'mqtt' }),
      policy,
      'mqtt',
    ],
    [
      'POST',
      request('POST', '/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'mqtt' }),
      policy,
      405,
    ],
    [
      'HTTP/1.0 (RFC 6455 4.1 needs 1.1)',
      request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'mqtt' }, '1.0'),
      policy,
      400,
    ],
    [
      'HTTP/2.0 is later than 1.1',
      request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'mqtt' }, '2.0'),
      policy,
      'mqtt',
    ],
    [
      'no Host header',
      request('GET', '/mqtt', {
        upgrade: 'websocket',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        'sec-websocket-version': '13',
        'sec-websocket-protocol': 'mqtt',
      }),
      policy,
      400,
    ],
    ['Upgrade: h2c', request('GET', '/mqtt', { ...goodHeaders, upgrade: 'h2c' }), policy, 400],
    [
      'bad key',
      request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-key': 'short' }),
      policy,
      400,
    ],
    [
      'version 12',
      request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-version': '12' }),
      policy,
      400,
    ],
    [
      'duplicate protocol',
      request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'mqtt, mqtt' }),
      policy,
      400,
    ],
    [
      'protocol not a token',
      request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'mq tt' }),
      policy,
      400,
    ],
    [
      'no acceptable protocol',
      request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'foo' }),
      policy,
      400,
    ],
    ['no protocol at all', request('GET', '/mqtt', goodHeaders), policy, 400],
    [
      'optional protocol',
      request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'foo' }),
      { ...policy, requireSubprotocol: false },
      false,
    ],
  ]
  for (const [name, req, p, expected] of cases) {
    const decision = validateUpgrade(req, p)
    if (typeof expected === 'number') {
      t.equal(decision.ok ? 101 : decision.refusal.status, expected, name)
    } else {
      t.same(decision, { ok: true, protocol: expected }, name)
    }
  }
  const refused = validateUpgrade(
    request('GET', '/mqtt', { ...goodHeaders, 'sec-websocket-protocol': 'foo' }),
    policy,
  )
  t.match(refused, {
    ok: false,
    refusal: { reason: 'subprotocol', message: /offered: foo.*accepted: mqtt, mqttv3\.1/ },
  })
})

t.test('origin rules (pure): exact scheme, host and port; *. for subdomains only', async (t) => {
  const patterns = ['https://app.example.com', 'https://*.example.org', 'http://localhost:8080']
  const cases: [string, boolean][] = [
    ['https://app.example.com', true],
    ['HTTPS://App.Example.com', true],
    ['http://app.example.com', false],
    ['https://app.example.com:8443', false],
    ['https://evil.example.com', false],
    ['https://app.example.com.evil.net', false],
    ['https://a.example.org', true],
    ['https://a.b.example.org', true],
    ['https://example.org', false],
    ['https://badexample.org', false],
    ['http://localhost:8080', true],
    ['http://localhost', false],
    ['null', false],
    ['not an origin', false],
  ]
  for (const [origin, expected] of cases) {
    t.equal(originAllowed(origin, compileOrigins(patterns)), expected, origin)
  }
  t.equal(originAllowed('https://anything.net', []), true, 'empty list allows any origin')
  t.equal(originAllowed('null', compileOrigins(['null'])), true, '"null" only when listed')

  const withOrigins = { ...policy, allowedOrigins: compileOrigins(['https://app.example.com']) }
  const mqtt = { ...goodHeaders, 'sec-websocket-protocol': 'mqtt' }
  t.match(
    validateUpgrade(request('GET', '/mqtt', { ...mqtt, origin: 'https://x.net' }), withOrigins),
    {
      ok: false,
      refusal: { status: 403, reason: 'origin', message: /origin https:\/\/x\.net is not allowed/ },
    },
  )
  t.same(validateUpgrade(request('GET', '/mqtt', mqtt), withOrigins), {
    ok: true,
    protocol: 'mqtt',
  })
  const own = { ...mqtt, host: 'gw.example.net:8443', origin: 'https://gw.example.net:8443' }
  t.same(
    validateUpgrade(request('GET', '/mqtt', own), withOrigins),
    { ok: true, protocol: 'mqtt' },
    "the gateway's own pages (same origin as Host) are always allowed",
  )
  t.equal(sameOrigin('https://gw.example.net', 'gw.example.net:8443'), false, 'port must match')
  t.equal(sameOrigin('https://evil.net', 'gw.example.net'), false)
  t.match(validateUpgrade(request('GET', '/mqtt', mqtt), { ...policy, requireOrigin: true }), {
    ok: false,
    refusal: { status: 403, reason: 'origin', message: /Origin header is required/ },
  })
})

t.test('subprotocol helpers', async (t) => {
  t.same(parseSubprotocols(undefined), [])
  t.same(parseSubprotocols(' mqtt ,mqttv3.1'), ['mqtt', 'mqttv3.1'])
  // RFC 9110 5.6.1.2: a recipient ignores empty list elements.
  t.same(parseSubprotocols('a,,b'), ['a', 'b'])
  t.equal(pickSubprotocol(['x', 'y'], new Set(['mqtt'])), false)
  t.equal(requestPath('/mqtt#frag'), '/mqtt')
  t.equal(requestPath(undefined), '/')
})

t.test('refusals over real sockets: status, headers, body, log line', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port)

  const wrongPath = await rawRequest(gw.port, upgradeRequest('/nope'))
  t.equal(wrongPath.status, 404)
  t.match(wrongPath.body, /use \/mqtt/)
  t.equal(wrongPath.headers.connection, 'close')

  const plainGet = await rawRequest(gw.port, ['GET /mqtt HTTP/1.1', 'Host: x', 'Connection: close'])
  t.equal(plainGet.status, 426)
  t.equal(plainGet.headers.upgrade, 'websocket')
  t.match(plainGet.body, /MQTT over WebSocket/)

  const stripped = await rawRequest(gw.port, [
    'GET /mqtt HTTP/1.1',
    'Host: x',
    'Connection: close',
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
  ])
  t.equal(stripped.status, 426)
  t.match(stripped.body, /proxy on the way probably removed them/)

  const otherGet = await rawRequest(gw.port, [
    'GET /index.html HTTP/1.1',
    'Host: x',
    'Connection: close',
  ])
  t.equal(otherGet.status, 404)

  const badKey = await rawRequest(gw.port, upgradeRequest('/mqtt', { 'Sec-WebSocket-Key': 'abc' }))
  t.equal(badKey.status, 400)
  t.match(badKey.body, /Sec-WebSocket-Key/)

  const badVersion = await rawRequest(
    gw.port,
    upgradeRequest('/mqtt', { 'Sec-WebSocket-Version': '7' }),
  )
  t.equal(badVersion.status, 400)
  t.equal(badVersion.headers['sec-websocket-version'], '13, 8')

  const post = await rawRequest(gw.port, [
    'POST /mqtt HTTP/1.1',
    ...upgradeRequest('/mqtt').slice(1),
    'Content-Length: 0',
  ])
  t.equal(post.status, 405)

  const noProtocol = await rawRequest(
    gw.port,
    upgradeRequest('/mqtt', { 'Sec-WebSocket-Protocol': 'foo, bar' }),
  )
  t.equal(noProtocol.status, 400)
  t.match(
    noProtocol.body,
    /no acceptable subprotocol \(offered: foo, bar\); accepted: mqtt, mqttv3\.1/,
  )

  const missing = await rawRequest(
    gw.port,
    upgradeRequest('/mqtt', { 'Sec-WebSocket-Protocol': undefined }),
  )
  t.equal(missing.status, 400)
  t.match(missing.body, /none was offered/)

  const reasons = gw.logs.filter((l) => l.msg === 'upgrade refused').map((l) => l.reason)
  t.same(reasons, [
    'path',
    'not_websocket',
    'not_websocket',
    'path',
    'malformed',
    'malformed',
    'method',
    'subprotocol',
    'subprotocol',
  ])
})

t.test('subprotocol choice seen by a real client', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port)
  for (const [offer, expected] of [
    [['foo', 'mqtt'], 'mqtt'],
    [['mqttv3.1'], 'mqttv3.1'],
    [['mqttv3.1', 'mqtt'], 'mqttv3.1'],
  ] as const) {
    const ws = new WebSocket(gw.url, [...offer])
    await once(ws, 'open')
    t.equal(ws.protocol, expected, `offer ${offer.join(',')}`)
    ws.close()
    await once(ws, 'close')
  }

  const lenient = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_WS_REQUIRE_SUBPROTOCOL: 'false',
  })
  const ws = new WebSocket(lenient.url)
  await once(ws, 'open')
  t.equal(ws.protocol, '', 'accepted without a subprotocol when not required')
  ws.close()
  await once(ws, 'close')
})

t.test('capacity: 503 with Retry-After past limits.maxConnections', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_LIMITS_MAX_CONNECTIONS: '1' })
  const first = new WebSocket(gw.url, ['mqtt'])
  await once(first, 'open')
  const second = await rawRequest(gw.port, upgradeRequest('/mqtt'))
  t.equal(second.status, 503)
  t.equal(second.headers['retry-after'], '5')
  t.match(second.body, /connection limit reached \(1\)/)
  first.close()
  await once(first, 'close')
  await gw.waitForLog((l) => l.msg === 'connection closed')
  const third = new WebSocket(gw.url, ['mqtt'])
  await t.resolves(once(third, 'open'), 'a slot freed by a close is usable again')
  // Refused, the handshake would have closed it already.
  if (third.readyState === WebSocket.OPEN) {
    third.close()
    await once(third, 'close')
  }
})

t.test('broker refused: 502 before any 101', async (t) => {
  const gw = await startTestGateway(t, await freePort())
  const res = await rawRequest(gw.port, upgradeRequest('/mqtt'))
  t.equal(res.status, 502)
  t.match(res.body, /no broker accepted the connection: 127\.0\.0\.1:\d+ ECONNREFUSED/)
  const line = await gw.waitForLog((l) => l.msg === 'upgrade refused')
  t.equal(line.reason, 'upstream_refused')
})

t.test('broker silent: 504 after upstream.connectTimeout', async (t) => {
  const silent = await startSilentBroker(t)
  const gw = await startTestGateway(t, silent, { DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT: '300ms' })
  const started = Date.now()
  const res = await rawRequest(gw.port, upgradeRequest('/mqtt'))
  t.equal(res.status, 504)
  t.match(res.body, /did not accept within 300 ms/)
  t.ok(Date.now() - started >= 290, 'waited for the connect timeout')
})

t.test('the next broker is used when the first refuses', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const dead = await freePort()
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${dead},127.0.0.1:${broker.port}`,
  })
  const ws = new WebSocket(gw.url, ['mqtt'])
  await once(ws, 'open')
  const opened = await gw.waitForLog((l) => l.msg === 'connection opened')
  t.equal(opened.broker, `127.0.0.1:${broker.port}`)
  ws.close()
  await once(ws, 'close')
})

t.test('a client that never finishes its upgrade is answered 408 and dropped', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_WS_HANDSHAKE_TIMEOUT: '300ms' })
  const partial = await rawRequest(gw.port, ['GET /mqtt HTTP/1.1', 'Host: x'], {
    timeoutMs: 3000,
    unfinished: true,
  })
  t.equal(partial.status, 408)
  const line = await gw.waitForLog((l) => l.reason === 'handshake_timeout')
  t.equal(line.status, 408)
})

t.test(
  'an upgrade over HTTP/1.0, or without Host, is refused with 400 (RFC 6455 4.1)',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const gw = await startTestGateway(t, broker.port)
    const old = upgradeRequest('/mqtt')
    old[0] = 'GET /mqtt HTTP/1.0'
    const oldResponse = await rawRequest(gw.port, old)
    t.equal(oldResponse.status, 400)
    t.match(oldResponse.body, /HTTP\/1\.1 or later/)
    const noHost = await rawRequest(gw.port, upgradeRequest('/mqtt', { Host: undefined }))
    t.equal(noHost.status, 400)
    t.match(noHost.body, /no Host header/)
    t.equal(gw.gateway.connections.size, 0)
  },
)

t.test(
  'two Host lines, a bad Host, a body, a CONNECT request: each refused with its answer',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const gw = await startTestGateway(t, broker.port)
    const twoHosts = upgradeRequest('/mqtt')
    twoHosts.push('Host: other.example')
    t.equal((await rawRequest(gw.port, twoHosts)).status, 400, 'two Host lines (RFC 9112 3.2)')
    const badHost = await rawRequest(gw.port, upgradeRequest('/mqtt', { Host: 'local host' }))
    t.equal(badHost.status, 400, 'a Host that is not a host')
    t.match(badHost.body, /exactly one Host header with a valid host/)
    const withBody = upgradeRequest('/mqtt', { 'Content-Length': '4' })
    const body = await rawRequest(gw.port, withBody)
    t.equal(body.status, 400, 'a body would be read as WebSocket frames')
    t.match(body.body, /carries no body/)
    const connect = await rawRequest(gw.port, [
      'CONNECT 127.0.0.1:1883 HTTP/1.1',
      'Host: 127.0.0.1:1883',
    ])
    t.equal(connect.status, 405, 'CONNECT: we are no forward proxy')
    t.equal(connect.headers.allow, 'GET')
    await gw.waitForLog((l) => l.msg === 'upgrade refused' && l.status === 405)
    t.equal(gw.gateway.connections.size, 0)
  },
)

t.test('an upgrade that ws itself refuses leaves no broker socket behind', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_WS_PER_MESSAGE_DEFLATE: 'true' })
  // Our checks do not read the extension offer; ws does, once the broker is connected.
  const res = await rawRequest(
    gw.port,
    upgradeRequest('/mqtt', { 'Sec-WebSocket-Extensions': 'permessage-deflate; =broken' }),
  )
  t.equal(res.status, 400)
  await gw.waitForLog((l) => l.msg === 'ws refused the upgrade')
  await gw.gateway.whenBrokerSocketsClosed()
  t.equal(gw.gateway.brokerSocketsOpen, 0)
})

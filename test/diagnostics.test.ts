// The diagnostics routes (http.diagnostics) over real sockets: what is served when it is on,
// that nothing changes when it is off, the JSON the page reads (TLS, peer, forwarding headers,
// refusals looked up by token), and the edge cases (methods, ws.path "/", query strings).
// The page itself is exercised from Chromium in test/browser-diagnostics.test.ts.
import { X509Certificate } from 'node:crypto'
import https from 'node:https'
import t from 'tap'
import type { DiagnosticsReport } from '../src/edge/diagnostics.js'
import { freePort, startBroker } from './helpers/broker.js'
import { startTestGateway, type TestGateway } from './helpers/gateway.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { rawRequest, upgradeRequest, type RawResponse } from './helpers/raw.js'

const ON = { DRAWBRIDGE_HTTP_DIAGNOSTICS: 'true' }

function get(gw: TestGateway, path: string, extra: string[] = [], method = 'GET') {
  return rawRequest(gw.port, [
    `${method} ${path} HTTP/1.1`,
    'Host: localhost',
    ...extra,
    'Connection: close',
  ])
}

function json(res: RawResponse): DiagnosticsReport {
  return JSON.parse(res.body) as DiagnosticsReport
}

const refusedLines = (gw: TestGateway): number =>
  gw.logs.filter((l) => l.msg === 'upgrade refused').length

t.test('off (the production default): GET / and the JSON stay 404', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_HTTP_DIAGNOSTICS: 'false' })
  for (const path of ['/', '/diagnostics.json', '/diagnostics.js']) {
    const res = await get(gw, path)
    t.equal(res.status, 404, `${path} is 404`)
    t.match(res.body, /the WebSocket endpoint is \/mqtt/)
  }
  t.equal((await get(gw, '/mqtt')).status, 426, 'ws.path still answers 426 to plain HTTP')
})

t.test('on: the page, its script and its JSON', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, ON)

  const page = await get(gw, '/?idle=2')
  t.equal(page.status, 200, 'GET / (query strings ignored) serves the page')
  t.match(page.headers['content-type'], /^text\/html; charset=utf-8$/)
  t.match(page.body, /<title>Drawbridge connection check<\/title>/)
  t.match(page.body, /<script src="\/diagnostics\.js"><\/script>/)
  t.notMatch(page.body, /https?:\/\/(?!www\.w3\.org)/, 'no external assets')
  t.equal(page.headers['cache-control'], 'no-store')
  t.equal(page.headers['x-content-type-options'], 'nosniff')
  t.match(page.headers['content-security-policy'], /default-src 'none'; script-src 'self';/)
  t.match(page.headers['content-security-policy'], /frame-ancestors 'none'/)

  const script = await get(gw, '/diagnostics.js')
  t.equal(script.status, 200)
  t.match(script.headers['content-type'], /^text\/javascript/)
  t.match(script.body, /Drawbridge connection check/)

  const head = await get(gw, '/', [], 'HEAD')
  t.equal(head.status, 200, 'HEAD / is 200')
  t.equal(head.body, '', 'without a body')
  t.equal(head.headers['content-length'], page.headers['content-length'])

  for (const method of ['POST', 'PUT', 'DELETE']) {
    const res = await get(gw, '/', ['Content-Length: 0'], method)
    t.equal(res.status, 405, `${method} / is 405`)
    t.equal(res.headers.allow, 'GET, HEAD')
  }

  const info = await get(gw, '/diagnostics.json')
  t.equal(info.status, 200)
  t.match(info.headers['content-type'], /^application\/json/)
  const report = json(info)
  t.equal(report.gateway.name, 'drawbridge')
  t.match(report.gateway.version, /^\d+\.\d+\.\d+/)
  t.equal(report.tls, null, 'plain ws listener: no TLS to report')
  t.match(report.request.peerAddress, /^127\.0\.0\.1:\d+$/, 'the TCP peer')
  // The client address is the peer here (no trusted proxy); its format is the one the logs use.
  t.match(report.request.clientAddress, /^127\.0\.0\.1(:\d+)?$/)
  t.same(report.request.forwardingHeaders, {}, 'no forwarding headers')
  t.same(report.websocket, {
    path: '/mqtt',
    subprotocols: ['mqtt', 'mqttv3.1'],
    requireSubprotocol: true,
    pingIntervalMs: 25_000,
    pongTimeoutMs: 10_000,
  })
  t.notOk('refusal' in report, 'no refusal asked for, none reported')

  t.equal(refusedLines(gw), 0, 'serving the page is not an upgrade refusal')
  t.equal((await get(gw, '/favicon.ico')).status, 404, 'other paths keep their 404')
  t.equal((await get(gw, '/mqtt')).status, 426, 'ws.path keeps its 426')
})

t.test('the JSON lists the forwarding headers a proxy added', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, ON)
  const report = json(
    await get(gw, '/diagnostics.json', [
      'Via: 1.1 proxy.example (squid/5.7)',
      'X-Forwarded-For: 203.0.113.7',
      'X-Forwarded-For: 198.51.100.1',
      'Forwarded: for=203.0.113.7;proto=https',
      'X-Unrelated: not listed',
    ]),
  )
  t.same(report.request.forwardingHeaders, {
    via: '1.1 proxy.example (squid/5.7)',
    forwarded: 'for=203.0.113.7;proto=https',
    'x-forwarded-for': '203.0.113.7, 198.51.100.1',
  })
})

t.test('over wss: the certificate served on that connection and the TLS parameters', async (t) => {
  const pki = testPki()
  const broker = await startBroker(t, 'aedes')
  const files = writeServerFiles(t, pki)
  const gw = await startTestGateway(t, broker.port, tlsEnv(files, ON))
  const body = await new Promise<string>((resolve, reject) => {
    https
      .get(
        `https://127.0.0.1:${gw.port}/diagnostics.json`,
        { ca: pki.ca.cert, servername: 'localhost', headers: { Via: '1.1 inspector' } },
        (res) => {
          let data = ''
          res.on('data', (chunk: Buffer) => (data += chunk.toString()))
          res.on('end', () => resolve(data))
        },
      )
      .on('error', reject)
  })
  const report = JSON.parse(body) as DiagnosticsReport
  const served = new X509Certificate(pki.servers[0].cert)
  t.match(report.tls?.protocol, /^TLSv1\.[23]$/)
  t.type(report.tls?.cipher, 'string')
  t.equal(report.tls?.alpn, false, 'node:https offers no ALPN (Chromium gets http/1.1)')
  t.equal(report.tls?.servername, 'localhost', 'the SNI name the client sent')
  t.equal(report.tls?.certificate?.fingerprint256, served.fingerprint256, 'the served certificate')
  t.equal(report.tls?.certificate?.subject, 'CN=localhost')
  t.match(report.tls?.certificate?.issuer, /CN=Drawbridge test CA/)
  t.equal(report.tls?.certificate?.validTo, new Date(served.validTo).toISOString())
  t.same(report.request.forwardingHeaders, { via: '1.1 inspector' })
})

t.test('a refused upgrade that carried ?diag=TOKEN can be looked up', async (t) => {
  const gw = await startTestGateway(t, await freePort(), ON)
  const token = 'abcdef0123456789'
  const refused = await rawRequest(gw.port, upgradeRequest(`/mqtt?diag=${token}`))
  t.equal(refused.status, 502, 'no broker: 502')
  const report = json(await get(gw, `/diagnostics.json?refusal=${token}`))
  t.equal(report.refusal?.status, 502)
  t.equal(report.refusal?.reason, 'upstream_refused')
  t.equal(`${report.refusal?.message ?? ''}\n`, refused.body, 'the same text the client was sent')
  t.match(report.refusal?.at, /^\d{4}-\d\d-\d\dT/)

  t.equal(json(await get(gw, '/diagnostics.json?refusal=unknown-token')).refusal, null)
  // A token that is not [A-Za-z0-9_-]{8,64} is not recorded.
  await rawRequest(gw.port, upgradeRequest('/mqtt?diag=short'))
  t.equal(json(await get(gw, '/diagnostics.json?refusal=short')).refusal, null)
  // Refusals before the path matched are recorded too (a page with a wrong ws.path).
  const wrongPath = await rawRequest(gw.port, upgradeRequest(`/other?diag=${token}x`))
  t.equal(wrongPath.status, 404)
  t.equal(json(await get(gw, `/diagnostics.json?refusal=${token}x`)).refusal?.reason, 'path')
})

t.test('ws.path "/": GET / is the page unless it asks for a WebSocket', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, { ...ON, DRAWBRIDGE_WS_PATH: '/' })
  const page = await get(gw, '/')
  t.equal(page.status, 200)
  t.match(page.body, /Drawbridge connection check/)
  // Sec-WebSocket-Key without Upgrade: a proxy removed the hop-by-hop headers (FIELD-NOTES 58).
  const stripped = await get(gw, '/', ['Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='])
  t.equal(stripped.status, 426)
  t.match(stripped.body, /a proxy on the way probably removed them/)
  const upgrade = await rawRequest(gw.port, upgradeRequest('/'), { timeoutMs: 2_000 }).catch(
    (err: unknown) => String(err),
  )
  // The 101 keeps the socket open, so the raw reader times out holding the 101 status line.
  t.match(upgrade, /HTTP\/1\.1 101 Switching Protocols/, 'upgrades on / still work')
})

// http.routes with real sockets: a real backend (node HTTP + a ws WebSocketServer on loopback)
// behind the gateway on ws:// and wss://. Bodies, paths, the X-Forwarded-* headers, hop-by-hop
// removal, 502/504, the backend's own WebSocket through the route, the admission steps on a
// routed upgrade, the config checks, and no socket left on either side.
import http from 'node:http'
import https from 'node:https'
import mqtt from 'mqtt'
import t from 'tap'
import WebSocket from 'ws'
import { loadConfig } from '../src/config/load.js'
import { ConfigError } from '../src/errors.js'
import { freePort, startBroker } from './helpers/broker.js'
import { startTestGateway, type TestGateway } from './helpers/gateway.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { eventually, parseExposition, value } from './helpers/scrape.js'
import {
  noRoutedSocketsLeft,
  startWebBackend,
  type Seen,
  type WebBackend,
} from './helpers/web-backend.js'

interface Answer {
  status: number
  headers: http.IncomingHttpHeaders
  body: string
}

const pki = testPki()

/** One request with exactly the headers given (no agent, so no socket is kept). */
function request(
  gw: TestGateway,
  path: string,
  options: { method?: string; headers?: http.OutgoingHttpHeaders; body?: string } = {},
): Promise<Answer> {
  const tls = gw.config.tls.enabled
  return new Promise((resolve, reject) => {
    const req = (tls ? https : http).request(
      {
        host: '127.0.0.1',
        port: gw.port,
        path,
        method: options.method ?? 'GET',
        headers: options.headers,
        agent: false,
        ...(tls && { ca: pki.ca.cert }),
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString(),
          }),
        )
      },
    )
    req.on('error', reject)
    req.end(options.body)
  })
}

/** What the backend said it saw (its JSON echo). */
function echoed(answer: Answer): Seen {
  return JSON.parse(answer.body) as Seen
}

/** Opens a WebSocket; resolves with it open, or with the HTTP status it was refused with. */
function openWs(
  url: string,
  options: WebSocket.ClientOptions = {},
): Promise<{ ws: WebSocket } | { status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { ca: pki.ca.cert, ...options })
    ws.once('open', () => resolve({ ws }))
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() })
        ws.terminate()
      })
    })
    ws.once('error', reject)
  })
}

/** A hand-written upgrade request; resolves with the status the gateway answered. */
function rawUpgrade(
  gw: TestGateway,
  path: string,
  headers: Record<string, string>,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port: gw.port,
      path,
      agent: false,
      headers: {
        Upgrade: 'websocket',
        'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
        'Sec-WebSocket-Version': '13',
        ...headers,
      },
    })
    req.once('upgrade', (res, socket) => {
      socket.destroy()
      resolve(res.statusCode ?? 0)
    })
    req.once('response', (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.once('error', reject)
    req.end()
  })
}

async function echoOnce(ws: WebSocket, text: string): Promise<string> {
  const reply = new Promise<string>((resolve) =>
    ws.once('message', (data: Buffer) => resolve(data.toString())),
  )
  ws.send(text)
  const answer = await reply
  const closed = new Promise((resolve) => ws.once('close', resolve))
  ws.close()
  await closed
  return answer
}

async function routeSamples(gw: TestGateway): Promise<ReturnType<typeof parseExposition>> {
  return parseExposition(await gw.gateway.metrics.render())
}

const broker = await startBroker(t, 'aedes')
const backend = await startWebBackend(t)
const closedPort = await freePort()
const routes = (web: WebBackend): string =>
  JSON.stringify([
    { prefix: '/app/', target: web.origin, ws: true },
    { prefix: '/app/strip/', target: web.origin, stripPrefix: true },
    { prefix: '/plain/', target: web.origin, ws: false },
    { prefix: '/silent/', target: web.origin, ws: true, timeout: '300ms' },
    { prefix: '/down/', target: `http://127.0.0.1:${closedPort}`, ws: true },
    { prefix: '/hang/', target: web.origin, ws: true, timeout: '1m' },
    // Next to ws.path (/mqtt) but not covering it: /mqtt itself stays MQTT's.
    { prefix: '/mqtt/', target: web.origin },
  ])
const files = writeServerFiles(t, pki)
const plain = await startTestGateway(t, broker.port, {
  DRAWBRIDGE_HTTP_ROUTES: routes(backend),
  DRAWBRIDGE_WS_ALLOWED_ORIGINS: 'https://app.example',
})
const secure = await startTestGateway(
  t,
  broker.port,
  tlsEnv(files, {
    DRAWBRIDGE_TLS_CLIENT_AUTH: 'none',
    DRAWBRIDGE_HTTP_ROUTES: routes(backend),
  }),
)
const trusting = await startTestGateway(t, broker.port, {
  DRAWBRIDGE_HTTP_ROUTES: routes(backend),
  DRAWBRIDGE_HTTP_TRUSTED_PROXIES: '127.0.0.1',
})
// Each test ends with nothing open on either side: every socket the gateway opened to the
// backend is closed, as seen by the backend and by the gateway, and no tunnel is left.
t.afterEach(async () => {
  await backend.whenIdle()
  await noRoutedSocketsLeft([plain, secure, trusting])
})

t.test('GET and POST bodies pass both ways, on ws and wss', async (t) => {
  for (const gw of [plain, secure]) {
    const scheme = gw.config.tls.enabled ? 'https' : 'http'
    const got = await request(gw, '/app/page?x=1')
    t.equal(got.status, 200, `${scheme}: GET answered by the backend`)
    t.match(echoed(got), { method: 'GET', url: '/app/page?x=1' }, `${scheme}: path kept`)
    const body = 'name=drawbridge&'.repeat(5000)
    const posted = await request(gw, '/app/form', {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body,
    })
    t.equal(echoed(posted).body, body, `${scheme}: an 80 KB POST body arrived whole`)
    t.equal(got.headers['x-backend-end'], 'for the client', `${scheme}: end-to-end header back`)
  }
  const samples = await routeSamples(plain)
  t.ok(
    value(samples, 'drawbridge_route_requests_total', { route: '/app/', status_class: '2xx' }) >= 2,
    'counted per route and status class',
  )
  t.ok(
    value(samples, 'drawbridge_route_request_duration_seconds_count', { route: '/app/' }) >= 2,
    'and timed',
  )
  const line = await plain.waitForLog((l) => l.msg === 'routed request' && l.path === '/app/form')
  t.match(line, { level: 20, route: '/app/', method: 'POST', status: 200 }, 'a debug line each')
})

t.test('the longest prefix wins; stripPrefix removes it; /mqtt stays MQTT', async (t) => {
  const stripped = await request(plain, '/app/strip/x?q=1')
  t.equal(echoed(stripped).url, '/x?q=1', '/app/strip/ (stripPrefix) over /app/')
  t.equal(echoed(await request(plain, '/mqtt/page')).url, '/mqtt/page', '/mqtt/ is routed')
  const mqttPath = await request(plain, '/mqtt')
  t.equal(mqttPath.status, 426, 'a plain GET /mqtt still gets the MQTT endpoint answer')
  const nowhere = await request(plain, '/elsewhere')
  t.equal(nowhere.status, 404, 'no route, not MQTT: the usual 404')
  t.match(nowhere.body, /the WebSocket endpoint is \/mqtt/)
  const client = await mqtt.connectAsync(plain.url, { reconnectPeriod: 0 })
  t.ok(client.connected, 'MQTT over /mqtt next to the routes')
  await client.endAsync()
})

t.test('X-Forwarded-* from what the gateway saw; a client cannot plant its own', async (t) => {
  const spoofed = {
    'X-Forwarded-For': '6.6.6.6',
    'X-Forwarded-Proto': 'https',
    'X-Forwarded-Host': 'evil.example',
    'X-Forwarded-Port': '1',
    Forwarded: 'for=6.6.6.6',
    'X-Real-IP': '6.6.6.6',
  }
  for (const gw of [plain, secure]) {
    const scheme = gw.config.tls.enabled ? 'https' : 'http'
    const { headers } = echoed(await request(gw, '/app/who', { headers: spoofed }))
    t.match(
      headers,
      {
        'x-forwarded-for': '127.0.0.1',
        'x-forwarded-proto': scheme,
        'x-forwarded-host': `127.0.0.1:${gw.port}`,
        'x-forwarded-port': String(gw.port),
        forwarded: `for=127.0.0.1;host="127.0.0.1:${gw.port}";proto=${scheme}`,
        host: `127.0.0.1:${gw.port}`,
      },
      `${scheme}: replaced, not appended to`,
    )
    t.notOk('x-real-ip' in headers, `${scheme}: X-Real-IP removed`)
  }
  // From a trusted proxy, the hops it vouches for are kept, and what it says the client saw.
  const { headers } = echoed(
    await request(trusting, '/app/who', {
      headers: {
        'X-Forwarded-For': '6.6.6.6, 203.0.113.9',
        'X-Forwarded-Proto': 'https',
        'X-Forwarded-Host': 'public.example',
        'X-Forwarded-Port': '443',
      },
    }),
  )
  t.match(
    headers,
    {
      'x-forwarded-for': '203.0.113.9, 127.0.0.1',
      'x-forwarded-proto': 'https',
      'x-forwarded-host': 'public.example',
      'x-forwarded-port': '443',
      forwarded: 'for=203.0.113.9;host="public.example";proto=https',
    },
    'trusted proxy: the client, then the proxy; the entry left of the client is dropped',
  )
})

t.test('hop-by-hop headers go no further, either way (RFC 9110 7.6.1)', async (t) => {
  const got = await request(plain, '/app/hops', {
    headers: {
      Connection: 'keep-alive, X-Client-Hop',
      'X-Client-Hop': 'for the gateway only',
      'Keep-Alive': 'timeout=5',
      TE: 'trailers',
      'Proxy-Connection': 'keep-alive',
      'X-End-To-End': 'for the backend',
    },
  })
  const { headers } = echoed(got)
  for (const name of ['x-client-hop', 'keep-alive', 'te', 'proxy-connection']) {
    t.notOk(name in headers, `${name} did not reach the backend`)
  }
  t.equal(headers['x-end-to-end'], 'for the backend', 'an end-to-end header did')
  t.notOk('x-backend-hop' in got.headers, "the backend's Connection-named header stopped")
  // Node's server adds a Keep-Alive of its own (timeout=5) for the client's connection.
  t.not(got.headers['keep-alive'], 'timeout=99', 'and its Keep-Alive')
  t.equal(got.headers['x-backend-end'], 'for the client')
})

t.test('a refusing backend is 502, a silent one 504, with a short body', async (t) => {
  const before = await routeSamples(plain)
  const refused = await request(plain, '/down/x')
  t.equal(refused.status, 502)
  t.match(refused.body, /^the backend of \/down\/ failed: ECONNREFUSED\n$/)
  const started = Date.now()
  const silent = await request(plain, '/silent/x')
  t.equal(silent.status, 504)
  t.equal(silent.body, 'the backend of /silent/ did not answer within 300 ms\n')
  t.ok(Date.now() - started >= 300, 'after the route timeout')
  const after = await routeSamples(plain)
  for (const route of ['/down/', '/silent/']) {
    const labels = { route, status_class: '5xx' }
    t.equal(
      value(after, 'drawbridge_route_requests_total', labels) -
        value(before, 'drawbridge_route_requests_total', labels),
      1,
      `${route}: one 5xx counted`,
    )
  }
  const warned = await plain.waitForLog((l) => l.status === 504)
  t.match(warned, { level: 40, route: '/silent/', path: '/silent/x' }, 'a warn line names it')
})

t.test('a client that leaves ends its backend request at once, not at the timeout', async (t) => {
  const before = backend.seen.length
  const req = http.request({
    host: '127.0.0.1',
    port: plain.port,
    path: '/hang/silent/x',
    agent: false,
  })
  req.on('error', () => {})
  req.end()
  await eventually(async () => backend.seen.length > before)
  t.equal(backend.openSockets, 1, 'the backend holds the request (its timeout is 1 minute)')
  req.destroy()
  await backend.whenIdle(2_000)
  t.equal(backend.openSockets, 0, 'the gateway closed its backend socket when the client left')
  const line = await plain.waitForLog((l) => l.msg === 'routed request' && l.route === '/hang/')
  t.equal(line.status, 'aborted')
  const samples = await routeSamples(plain)
  t.equal(
    value(samples, 'drawbridge_route_requests_total', { route: '/hang/', status_class: 'aborted' }),
    1,
    'counted as aborted',
  )
})

t.test("the backend's own WebSocket through the route, on ws and wss", async (t) => {
  for (const gw of [plain, secure]) {
    const scheme = gw.config.tls.enabled ? 'wss' : 'ws'
    const before = backend.seen.length
    const opened = await openWs(`${scheme}://127.0.0.1:${gw.port}/app/live`)
    t.ok('ws' in opened, `${scheme}: upgraded through the route`)
    if (!('ws' in opened)) continue
    t.equal(await echoOnce(opened.ws, `hello over ${scheme}`), `hello over ${scheme}`, 'echoed')
    const upgrade = backend.seen.slice(before).find((s) => s.url === '/app/live')
    t.match(upgrade?.headers, {
      upgrade: 'websocket',
      connection: 'Upgrade',
      'x-forwarded-proto': scheme === 'wss' ? 'https' : 'http',
      'x-forwarded-for': '127.0.0.1',
    })
  }
  // ws writes its own Connection header; a raw upgrade names one more hop-by-hop header.
  const raw = await rawUpgrade(plain, '/app/live', {
    Connection: 'Upgrade, X-Client-Hop',
    'X-Client-Hop': 'for the gateway only',
  })
  t.equal(raw, 101, 'a raw upgrade through the route')
  const last = backend.seen.at(-1)
  t.equal(last?.url, '/app/live')
  t.notOk(last !== undefined && 'x-client-hop' in last.headers, 'the header it named stopped')
  const refusedByBackend = await openWs(`ws://127.0.0.1:${plain.port}/app/refuse`)
  t.match(refusedByBackend, { status: 403, body: 'refused\n' }, "the backend's own refusal")
})

t.test(
  'routed upgrades: ws=false, the origin allow-list, 502 and 504 before any 101',
  async (t) => {
    t.match(
      await openWs(`ws://127.0.0.1:${plain.port}/plain/live`),
      { status: 404, body: /does not take WebSocket upgrades/ },
      'ws=false: 404, and the backend is never asked',
    )
    t.notOk(
      backend.seen.some((s) => s.url === '/plain/live'),
      'nothing reached the backend for it',
    )
    t.match(
      await openWs(`ws://127.0.0.1:${plain.port}/app/live`, { origin: 'https://evil.example' }),
      { status: 403, body: /origin https:\/\/evil\.example is not allowed/ },
      'a foreign Origin: 403, as on /mqtt',
    )
    const allowed = await openWs(`ws://127.0.0.1:${plain.port}/app/live`, {
      origin: 'https://app.example',
    })
    t.ok('ws' in allowed, 'an allowed Origin goes through')
    if ('ws' in allowed) await echoOnce(allowed.ws, 'ok')
    t.match(
      await openWs(`ws://127.0.0.1:${plain.port}/down/live`),
      { status: 502, body: /ECONNREFUSED/ },
      'backend refused: 502',
    )
    t.match(
      await openWs(`ws://127.0.0.1:${plain.port}/silent/live`),
      { status: 504, body: /did not answer within 300 ms/ },
      'backend silent: 504',
    )
    const refusals = await plain.waitForLogs(
      (l) => l.msg === 'upgrade refused' && /^\/(plain|app)\//.test(String(l.path)),
      2,
    )
    t.same(
      refusals.map((l) => l.status),
      [404, 403],
      'the step refusals are logged and counted like the MQTT endpoint',
    )
  },
)

t.test('shutdown closes routed WebSockets; nothing is left on either side', async (t) => {
  const web = await startWebBackend(t)
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_HTTP_ROUTES: routes(web) })
  const opened = await openWs(`ws://127.0.0.1:${gw.port}/app/live`)
  t.ok('ws' in opened)
  if (!('ws' in opened)) return
  t.equal(web.openSockets, 1, 'one socket open on the backend')
  const closed = new Promise<number>((resolve) => opened.ws.once('close', resolve))
  await gw.gateway.close()
  t.equal(await closed, 1006, 'the client saw the tunnel end with the gateway')
  await web.whenIdle()
  t.equal(web.openSockets, 0, 'and the backend side is closed too')
})

t.test('http.routes is checked at start, one line naming the key', async (t) => {
  const base = {
    DRAWBRIDGE_UPSTREAM_BROKERS: '127.0.0.1:1883',
    DRAWBRIDGE_UPSTREAM_EMBEDDED: 'false',
    DRAWBRIDGE_TLS_ENABLED: 'false',
    DRAWBRIDGE_TLS_GENERATE_DEV_CERTS: 'false',
  }
  const load = (routesJson: string, extra: Record<string, string> = {}): unknown =>
    loadConfig({
      profile: 'development',
      env: { ...base, DRAWBRIDGE_HTTP_ROUTES: routesJson, ...extra },
    })
  const ok = load('[{"prefix": "/app/", "target": "http://web:8080", "timeout": "5s"}]') as {
    config: { http: { routes: unknown[] } }
  }
  t.same(ok.config.http.routes, [
    { prefix: '/app/', target: 'http://web:8080', ws: false, stripPrefix: false, timeout: 5000 },
  ])
  const bad: [string, string, RegExp, Record<string, string>?][] = [
    ['not JSON', '[{', /must be JSON/],
    ['no leading /', '[{"prefix": "app/", "target": "http://w"}]', /starts and ends with "\/"/],
    ['no trailing /', '[{"prefix": "/app", "target": "http://w"}]', /starts and ends with "\/"/],
    ['ftp target', '[{"prefix": "/a/", "target": "ftp://w"}]', /http:\/\/ or https:\/\//],
    ['bad timeout', '[{"prefix": "/a/", "target": "http://w", "timeout": "soon"}]', /timeout/],
    [
      'unknown field',
      '[{"prefix": "/a/", "target": "http://w", "wss": true}]',
      /unknown field "wss"/,
    ],
    [
      'twice',
      '[{"prefix": "/a/", "target": "http://w"}, {"prefix": "/a/", "target": "http://v"}]',
      /twice/,
    ],
    [
      'covers ws.path',
      '[{"prefix": "/ws/", "target": "http://w"}]',
      /covers the MQTT endpoint ws.path \(\/ws\/mqtt\)/,
      { DRAWBRIDGE_WS_PATH: '/ws/mqtt' },
    ],
    [
      'covers the diagnostics page',
      '[{"prefix": "/", "target": "http://w"}]',
      /covers the diagnostics page/,
      { DRAWBRIDGE_HTTP_DIAGNOSTICS: 'true' },
    ],
  ]
  for (const [name, json, message, extra] of bad) {
    try {
      load(json, extra)
      t.fail(`${name}: accepted`)
    } catch (err) {
      t.ok(err instanceof ConfigError && err.key === 'http.routes', `${name}: names http.routes`)
      t.match((err as Error).message, message, name)
      t.notMatch((err as Error).message, /\n/, `${name}: one line`)
    }
  }
})

// Browser origins and client addresses behind proxies (issue 7), over real sockets: a real
// reverse proxy (http-proxy, the way nginx or a load balancer adds X-Forwarded-For) in front of
// the gateway, clients bound to distinct loopback addresses so the client and the proxy differ.
import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import httpProxy from 'http-proxy'
import t from 'tap'
import { WebSocket } from 'ws'
import { parseCidr } from '../src/config/formats.js'
import { ClientAddressResolver } from '../src/edge/client-address.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway, type TestGateway } from './helpers/gateway.js'
import { rawRequest, upgradeRequest } from './helpers/raw.js'
import { adminGet, scrape, value } from './helpers/scrape.js'

// Linux routes all of 127.0.0.0/8 to lo, so a client can bind 127.0.0.2 and be told apart.
const CLIENT_ADDRESS = '127.0.0.2'

interface OpenedClient {
  ws: WebSocket
  /** The gateway's view of this connection in GET /connections. */
  view: Record<string, unknown>
}

async function openClient(
  gw: TestGateway,
  url: string,
  options: { headers?: Record<string, string>; origin?: string; localAddress?: string } = {},
): Promise<OpenedClient> {
  const ws = new WebSocket(url, 'mqtt', {
    headers: options.headers ?? {},
    ...(options.origin !== undefined && { origin: options.origin }),
    ...(options.localAddress !== undefined && { localAddress: options.localAddress }),
  })
  await once(ws, 'open')
  const list = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as Record<
    string,
    unknown
  >[]
  const view = list.at(-1)
  if (view === undefined) throw new Error('the open connection is not in /connections')
  return { ws, view }
}

function refusalOf(url: string, origin: string | undefined): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, 'mqtt', origin === undefined ? {} : { origin })
    ws.on('unexpected-response', (_req, res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    ws.on('open', () => {
      ws.close()
      reject(new Error(`origin ${origin ?? '(none)'} was let in`))
    })
    ws.on('error', () => undefined)
  })
}

async function closeAll(...clients: OpenedClient[]): Promise<void> {
  await Promise.all(
    clients.map(async ({ ws }) => {
      ws.close()
      await once(ws, 'close')
    }),
  )
}

t.test('ws.allowedOrigins: a listed browser origin gets in, another is refused 403', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_WS_ALLOWED_ORIGINS: 'https://app.example.com,https://*.example.org',
  })

  const listed = await openClient(gw, gw.url, { origin: 'https://app.example.com' })
  t.equal(listed.view.origin, 'https://app.example.com', '/connections shows the origin')
  const sub = await openClient(gw, gw.url, { origin: 'https://a.example.org' })
  const none = await openClient(gw, gw.url)
  t.equal(none.view.origin, null, 'a client without Origin (not a browser) is let in')

  t.equal(await refusalOf(gw.url, 'https://evil.example.net'), 403)
  t.equal(await refusalOf(gw.url, 'https://example.org'), 403, 'the wildcard is subdomains only')
  const raw = await rawRequest(
    gw.port,
    upgradeRequest('/mqtt', { Origin: 'https://app.example.com.evil.net' }),
  )
  t.equal(raw.status, 403)
  t.match(raw.body, /origin https:\/\/app\.example\.com\.evil\.net is not allowed/)
  const line = await gw.waitForLog((l) => l.msg === 'upgrade refused' && l.reason === 'origin')
  t.match(line, { status: 403, detail: /evil\.example\.net is not allowed/ })
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_handshake_rejections_total', { reason: 'origin' }), 3)
  await closeAll(listed, sub, none)
})

t.test('ws.requireOrigin refuses a client that sends no Origin', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_WS_REQUIRE_ORIGIN: 'true' })
  t.equal(await refusalOf(gw.url, undefined), 403)
  const browser = await openClient(gw, gw.url, { origin: 'https://anywhere.example' })
  t.equal(browser.view.origin, 'https://anywhere.example', 'an empty ws.allowedOrigins allows any')
  await closeAll(browser)
})

t.test('behind a trusted reverse proxy the client address is the one it reports', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_HTTP_TRUSTED_PROXIES: '127.0.0.1',
    DRAWBRIDGE_METRICS_PER_CLIENT: 'true',
  })
  // xfwd: the proxy appends the address it saw to X-Forwarded-For, as nginx's
  // $proxy_add_x_forwarded_for does.
  const proxy = httpProxy.createProxyServer({ target: `http://127.0.0.1:${gw.port}`, xfwd: true })
  const front = http.createServer((_req, res) => res.writeHead(404).end())
  front.on('upgrade', (req, socket, head) => proxy.ws(req, socket, head))
  front.listen(0, '127.0.0.1')
  await once(front, 'listening')
  t.teardown(() => {
    front.closeAllConnections()
    front.close()
    proxy.close()
  })
  const frontUrl = `ws://127.0.0.1:${(front.address() as AddressInfo).port}/mqtt`

  const viaProxy = await openClient(gw, frontUrl, { localAddress: CLIENT_ADDRESS })
  t.match(viaProxy.view, {
    remoteAddress: /^127\.0\.0\.1:\d+$/,
    clientAddress: CLIENT_ADDRESS,
    forwardedFor: CLIENT_ADDRESS,
  })
  const opened = await gw.waitForLog((l) => l.msg === 'connection opened' && 'client' in l)
  t.equal(opened.client, CLIENT_ADDRESS, 'the log line names the client, not the proxy')

  // A client that writes its own X-Forwarded-For: the proxy appends the real address, and the
  // rightmost untrusted entry is taken, so the spoofed one is never reached.
  const spoofer = await openClient(gw, frontUrl, {
    localAddress: CLIENT_ADDRESS,
    headers: { 'X-Forwarded-For': '203.0.113.66' },
  })
  t.equal(spoofer.view.clientAddress, CLIENT_ADDRESS)

  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_client_connections_active', { client: CLIENT_ADDRESS }), 2)
  t.equal(value(s, 'drawbridge_client_connections_active', { client: '203.0.113.66' }), 0)
  await closeAll(viaProxy, spoofer)
})

t.test('forwarding headers from a peer that is not trusted are ignored', async (t) => {
  const broker = await startBroker(t, 'aedes')
  for (const trusted of ['', '10.0.0.0/8']) {
    const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_HTTP_TRUSTED_PROXIES: trusted })
    const spoofer = await openClient(gw, gw.url, {
      localAddress: CLIENT_ADDRESS,
      headers: {
        'X-Forwarded-For': '203.0.113.66',
        Forwarded: 'for=203.0.113.67',
        'X-Real-IP': '203.0.113.68',
      },
    })
    t.match(
      spoofer.view,
      { clientAddress: CLIENT_ADDRESS, forwardedFor: null },
      `trustedProxies "${trusted}"`,
    )
    await closeAll(spoofer)
  }
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_WS_ALLOWED_ORIGINS: 'https://a.b',
  })
  await refusalOf(gw.url, 'https://c.d')
  const line = await gw.waitForLog((l) => l.msg === 'upgrade refused')
  t.notOk('client' in line, 'a refusal from an untrusted peer names only the peer')
})

t.test('ClientAddressResolver reads the chain from the nearest hop (pure)', async (t) => {
  const resolver = new ClientAddressResolver(['127.0.0.1', '10.0.0.0/8', 'fd00::/8'].map(parseCidr))
  const cases: [string, string, Record<string, string>, string, string][] = [
    ['untrusted peer', '198.51.100.1', { 'x-forwarded-for': '1.2.3.4' }, '198.51.100.1', 'peer'],
    ['no header', '127.0.0.1', {}, '127.0.0.1', 'peer'],
    [
      'one hop',
      '127.0.0.1',
      { 'x-forwarded-for': '203.0.113.9' },
      '203.0.113.9',
      'x-forwarded-for',
    ],
    [
      'spoofed left entry',
      '127.0.0.1',
      { 'x-forwarded-for': '6.6.6.6, 203.0.113.9' },
      '203.0.113.9',
      'x-forwarded-for',
    ],
    [
      'two trusted hops',
      '127.0.0.1',
      { 'x-forwarded-for': '203.0.113.9, 10.1.2.3' },
      '203.0.113.9',
      'x-forwarded-for',
    ],
    [
      'with ports',
      '127.0.0.1',
      { 'x-forwarded-for': '203.0.113.9:5555' },
      '203.0.113.9',
      'x-forwarded-for',
    ],
    [
      'Forwarded wins, IPv6 quoted with port',
      '127.0.0.1',
      {
        forwarded: 'for=192.0.2.60;proto=https, for="[2001:db8::7]:4711"',
        'x-forwarded-for': '1.1.1.1',
      },
      '2001:db8::7',
      'forwarded',
    ],
    ['X-Real-IP last', '127.0.0.1', { 'x-real-ip': '192.0.2.5' }, '192.0.2.5', 'x-real-ip'],
    [
      'unknown hop stops the walk',
      '127.0.0.1',
      { 'x-forwarded-for': '203.0.113.9, unknown, 10.0.0.5' },
      '10.0.0.5',
      'x-forwarded-for',
    ],
    [
      'IPv4-mapped peer',
      '::ffff:127.0.0.1',
      { 'x-real-ip': '192.0.2.5' },
      '192.0.2.5',
      'x-real-ip',
    ],
    [
      'IPv6 trusted peer',
      'fd00::1',
      { 'x-forwarded-for': '2001:db8::1' },
      '2001:db8::1',
      'x-forwarded-for',
    ],
  ]
  for (const [name, peer, headers, address, source] of cases) {
    t.has(resolver.resolve(peer, headers), { address, source }, name)
  }
  t.same(new ClientAddressResolver([]).resolve('127.0.0.1', { 'x-real-ip': '1.2.3.4' }), {
    chain: ['127.0.0.1'],
    address: '127.0.0.1',
    source: 'peer',
  })
})

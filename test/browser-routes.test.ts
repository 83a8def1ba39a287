// One origin, in a real browser behind a real proxy: Chromium loads a page that the web app
// (a real backend) serves through an http.routes route of the gateway, over squid's CONNECT
// tunnel to the gateway's one port, and that page connects MQTT on its own origin
// (wss://same-host/mqtt) and round-trips a message; the web app's own WebSocket works through
// the route too. ws.requireOrigin is on and ws.allowedOrigins names only some other site, so
// only the same-origin rule lets the page in.
import t from 'tap'
import { MOSQUITTO, freePort, startBroker } from './helpers/broker.js'
import { connectInPage } from './helpers/browser-page.js'
import { CHROMIUM, NO_CHROMIUM, launchChromium } from './helpers/chromium.js'
import { startTestGateway } from './helpers/gateway.js'
import { mosquittoPub, mosquittoSub } from './helpers/mosquitto-clients.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { SQUID, startSquid } from './helpers/squid.js'
import { CLIENT_BUNDLES } from './helpers/static-server.js'
import { startWebBackend } from './helpers/web-backend.js'

// Relative script paths: the page works wherever the route puts it.
const PAGE = `<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <title>A web app behind Drawbridge</title>
    <script src="mqtt.min.js"></script>
    <script src="clients.js"></script>
  </head>
  <body><p id="ready">served through the gateway's route</p></body>
</html>
`

if (CHROMIUM === undefined) {
  t.plan(0, NO_CHROMIUM)
} else if (MOSQUITTO === undefined || SQUID === undefined) {
  t.plan(0, 'mosquitto or squid not installed here; CI installs both (.ci/run)')
} else {
  const pki = testPki()
  const gatewayPort = await freePort()
  const squid = await startSquid(t, { connectPorts: [gatewayPort] })
  const browser = await launchChromium(t, { trust: [pki.ca.cert], proxy: squid.url })
  const broker = await startBroker(t, 'mosquitto')
  const web = await startWebBackend(t, {
    '/': { type: 'text/html; charset=utf-8', body: PAGE },
    '/clients.js': {
      type: 'text/javascript',
      file: new URL('fixtures/browser/clients.js', import.meta.url).pathname,
    },
    '/mqtt.min.js': CLIENT_BUNDLES['/mqtt.min.js'] ?? { type: 'text/plain' },
  })
  const files = writeServerFiles(t, pki)
  const gw = await startTestGateway(
    t,
    broker.port,
    tlsEnv(files, {
      DRAWBRIDGE_TLS_CLIENT_AUTH: 'none',
      DRAWBRIDGE_LISTEN_PORT: String(gatewayPort),
      DRAWBRIDGE_WS_REQUIRE_ORIGIN: 'true',
      DRAWBRIDGE_WS_ALLOWED_ORIGINS: 'https://some-other-site.example',
      DRAWBRIDGE_HTTP_ROUTES: JSON.stringify([
        { prefix: '/app/', target: web.origin, ws: true, stripPrefix: true },
      ]),
    }),
  )
  const origin = `https://127.0.0.1:${gatewayPort}`

  t.test('a page served through the route connects MQTT on its own origin', async (t) => {
    const page = await browser.page(t)
    const loaded = await page.goto(`${origin}/app/`)
    t.equal(loaded?.status(), 200, 'the page came from the web app through the gateway')
    await page.waitForSelector('#ready')
    t.same(
      web.seen.filter((s) => s.method === 'GET').map((s) => s.url),
      ['/', '/mqtt.min.js', '/clients.js'],
      'the web app served the page and its scripts (prefix stripped)',
    )
    t.match(
      web.seen[0]?.headers,
      {
        host: `127.0.0.1:${gatewayPort}`,
        'x-forwarded-proto': 'https',
        'x-forwarded-for': '127.0.0.1',
      },
      'and was told what the gateway saw',
    )

    const topic = `one-origin/${Math.random().toString(16).slice(2, 8)}`
    const tcp = await mosquittoSub(t, broker.port, `${topic}/up`)
    const sameOriginMqtt = `wss://127.0.0.1:${gatewayPort}/mqtt`
    const client = await connectInPage(page, 'mqttjs', sameOriginMqtt, { version: 4 })
    t.same(await client.subscribe(`${topic}/down`, 1), [1])
    await client.publish(`${topic}/up`, 'from the routed page', 1)
    t.same(await tcp.waitFor(1), [`${topic}/up from the routed page`], 'mosquitto_sub got it')
    await mosquittoPub(broker.port, `${topic}/down`, 'back to the routed page', 1)
    t.same(
      (await client.waitForMessages(1)).map((m) => m.payload),
      ['back to the routed page'],
      'the page got it',
    )
    const opened = await gw.waitForLog((l) => l.msg === 'connection opened')
    t.equal(opened.origin, origin, 'the MQTT connection carried the page origin')

    // The web app's own WebSocket, on the same origin, through the route.
    const echoed = await page.evaluate(
      (url) =>
        new Promise<string>((resolve, reject) => {
          const ws = new WebSocket(url)
          ws.onopen = () => ws.send('echo through the route')
          ws.onmessage = (event) => {
            resolve(String(event.data))
            ws.close()
          }
          ws.onerror = () => reject(new Error('the routed WebSocket failed'))
        }),
      `wss://127.0.0.1:${gatewayPort}/app/live`,
    )
    t.equal(echoed, 'echo through the route', "the web app's WebSocket echoed")
    await client.end()

    // HTTPS through squid: squid sees only the CONNECT to the gateway's one port.
    const line = await squid.waitForAccess(
      new RegExp(`TCP_TUNNEL/200 \\d+ CONNECT 127\\.0\\.0\\.1:${gatewayPort} `),
    )
    t.ok(line, `squid tunnelled to the gateway: ${line.trim()}`)
    await page.close()
    await web.whenIdle()
    t.equal(web.openSockets, 0, 'no socket left on the web app')
  })
}

// Chromium behind a real corporate-style proxy: squid, with every request (loopback included)
// sent through it. The round trip works through a CONNECT tunnel; squid's stock rule that only
// tunnels to 443 refuses the gateway on any other port; and a proxy that cuts idle tunnels
// keeps a quiet connection only when the gateway's WebSocket pings give it traffic.
import t from 'tap'
import { MOSQUITTO, freePort, startBroker } from './helpers/broker.js'
import { connectFailsInPage, connectInPage, startTestPageServer } from './helpers/browser-page.js'
import { CHROMIUM, NO_CHROMIUM, launchChromium } from './helpers/chromium.js'
import { startTestGateway } from './helpers/gateway.js'
import { mosquittoPub, mosquittoSub } from './helpers/mosquitto-clients.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { SQUID, startSquid } from './helpers/squid.js'

/** squid closes a tunnel with no traffic either way for this long. */
const PROXY_IDLE_SECONDS = 2
/** By when squid must have cut a tunnel quiet since a moment: its limit plus its tick. */
const IDLE_MS = 4_500

if (CHROMIUM === undefined) {
  t.plan(0, NO_CHROMIUM)
} else if (MOSQUITTO === undefined || SQUID === undefined) {
  t.plan(0, 'mosquitto or squid not installed here; CI installs both (.ci/run)')
} else {
  const pki = testPki()
  // squid's config names the ports it may tunnel to, so the gateways' ports are chosen first:
  // two it allows, one it does not (as if the gateway were not on 443).
  const [pingingPort, silentPort, refusedPort] = [
    await freePort(),
    await freePort(),
    await freePort(),
  ]
  const squid = await startSquid(t, {
    connectPorts: [pingingPort, silentPort],
    idleTimeoutSeconds: PROXY_IDLE_SECONDS,
  })
  const browser = await launchChromium(t, { trust: [pki.ca.cert], proxy: squid.url })
  const site = await startTestPageServer(t)
  const broker = await startBroker(t, 'mosquitto')
  const files = writeServerFiles(t, pki)
  const gatewayEnv = (port: number, pingInterval: string): Record<string, string> =>
    tlsEnv(files, {
      DRAWBRIDGE_TLS_CLIENT_AUTH: 'none',
      DRAWBRIDGE_LISTEN_PORT: String(port),
      DRAWBRIDGE_WS_PING_INTERVAL: pingInterval,
      DRAWBRIDGE_WS_PONG_TIMEOUT: '1s',
    })
  const pinging = await startTestGateway(t, broker.port, gatewayEnv(pingingPort, '500ms'))
  const silent = await startTestGateway(t, broker.port, gatewayEnv(silentPort, '0'))

  t.test('round trip through squid; its access log shows the CONNECT', async (t) => {
    const page = await browser.page(t)
    await page.goto(site.origin)
    const get = await squid.waitForAccess(new RegExp(` GET http://127\\.0\\.0\\.1:${site.port}/ `))
    t.match(
      get,
      /TCP_MISS\/200 .* HIER_DIRECT\/127\.0\.0\.1 /,
      `the page itself came through squid (loopback is not bypassed): ${get.trim()}`,
    )

    const prefix = `proxy/${Math.random().toString(16).slice(2, 8)}`
    const tcp = await mosquittoSub(t, broker.port, `${prefix}/up`)
    const client = await connectInPage(page, 'mqttjs', pinging.url, { version: 4 })
    t.same(await client.subscribe(`${prefix}/down`, 1), [1])
    await client.publish(`${prefix}/up`, 'through the proxy', 1)
    t.same(await tcp.waitFor(1), [`${prefix}/up through the proxy`], 'mosquitto_sub got it')
    await mosquittoPub(broker.port, `${prefix}/down`, 'back through the proxy', 1)
    t.same(
      (await client.waitForMessages(1)).map((m) => m.payload),
      ['back through the proxy'],
      'the browser got it',
    )
    await client.end()
    // squid logs a tunnel when it closes.
    const line = await squid.waitForAccess(
      new RegExp(`TCP_TUNNEL/200 \\d+ CONNECT 127\\.0\\.0\\.1:${pingingPort} `),
    )
    t.match(line, /HIER_DIRECT\/127\.0\.0\.1/, `squid tunnelled to the gateway: ${line.trim()}`)
  })

  t.test(
    'squid tunnels only to 443 and listed ports: the gateway elsewhere is refused',
    async (t) => {
      const refused = await startTestGateway(t, broker.port, gatewayEnv(refusedPort, '25s'))
      const { error, devtools } = await connectFailsInPage(
        t,
        browser,
        site.origin,
        'mqttjs',
        refused.url,
        { version: 4 },
      )
      t.match(error, /closed before CONNACK/, 'the browser cannot connect')
      const line = await squid.waitForAccess(
        new RegExp(`TCP_DENIED/403 \\d+ CONNECT 127\\.0\\.0\\.1:${refusedPort} `),
      )
      t.ok(line, `squid denied the CONNECT: ${line.trim()}`)
      t.match(
        devtools.join('\n'),
        /failed: Establishing a tunnel via proxy server failed/,
        'what DevTools shows the user',
      )
      t.notOk(
        refused.logs.some((l) =>
          ['TLS handshake failed', 'upgrade refused', 'connection opened'].includes(l.msg),
        ),
        'nothing reached the gateway',
      )
    },
  )

  t.test(`idle tunnels: squid cuts after ${PROXY_IDLE_SECONDS} s of silence`, async (t) => {
    const page = await browser.page(t)
    await page.goto(site.origin)
    // MQTT keepalive 0: no PINGREQ, so the only traffic while idle is the gateway's pings.
    const kept = await connectInPage(page, 'mqttjs', pinging.url, { version: 4, keepalive: 0 })
    const cut = await connectInPage(page, 'mqttjs', silent.url, { version: 4, keepalive: 0 })
    const prefix = `idle/${Math.random().toString(16).slice(2, 8)}`
    await kept.subscribe(`${prefix}/kept`, 1)
    await cut.subscribe(`${prefix}/cut`, 1)
    const quietSince = Date.now()
    // Until squid cuts the unpinged connection. The pinged one has been quiet but for the pings
    // since before that (its subscribe came first), so without them squid would have cut it by
    // now too; the round trip below shows that it did not.
    const closed = (await cut.waitForClose(IDLE_MS)).closed

    t.equal((await kept.state()).closed, null, 'with ws.pingInterval=500ms the connection survives')
    await mosquittoPub(broker.port, `${prefix}/kept`, 'after the idle spell', 1)
    t.same(
      (await kept.waitForMessages(1)).map((m) => m.payload),
      ['after the idle spell'],
      'and still carries messages',
    )
    await kept.publish(`${prefix}/kept`, 'and back', 1)

    t.ok(closed, 'with ws.pingInterval=0 the proxy cut it')
    // squid arms the timer from its whole-second clock, so a limit of N s cuts after N-1 to N+1 s.
    const lifetime = (closed?.at ?? 0) - quietSince
    t.ok(
      lifetime >= (PROXY_IDLE_SECONDS - 1) * 1000 && lifetime < IDLE_MS,
      `cut after ${lifetime} ms of silence`,
    )
    const gone = await silent.waitForLog((l) => l.msg === 'connection closed')
    t.equal(gone.code, 1006, 'the gateway saw the TCP connection end without a close frame')
    await kept.end()
  })
}

// Real Chromium, real clients, real broker: a page loads the MQTT.js and Paho browser bundles
// (from node_modules, through a loopback static server) and talks MQTT over wss:// through the
// gateway to Mosquitto, whose TCP side is watched by mosquitto_sub and fed by mosquitto_pub.
// Also the two failures a browser user meets first: a certificate the browser does not trust,
// and a subprotocol the gateway does not accept (Paho's MQTT 3.1 offers only "mqttv3.1").
import t from 'tap'
import { issueServerCert } from '../src/dev/certs.js'
import { MOSQUITTO, startBroker } from './helpers/broker.js'
import {
  connectFailsInPage,
  connectInPage,
  startTestPageServer,
  type Library,
} from './helpers/browser-page.js'
import { CHROMIUM, NO_CHROMIUM, launchChromium } from './helpers/chromium.js'
import { startTestGateway, type TestGateway } from './helpers/gateway.js'
import { mosquittoPub, mosquittoSub } from './helpers/mosquitto-clients.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'

// Chromium cancels a WebSocket handshake that is asked for a client certificate it has not
// chosen for that host (no picker for WebSockets): these pages connect with tls.clientAuth=none
// (the development default), and one test shows what optional does to a browser.
const NO_CLIENT_CERTS = { DRAWBRIDGE_TLS_CLIENT_AUTH: 'none' }

interface AdminConnection {
  id: string
  subprotocol: string | null
}

async function openConnections(gw: TestGateway): Promise<AdminConnection[]> {
  const res = await fetch(`${gw.adminUrl}/connections`)
  return (await res.json()) as AdminConnection[]
}

const CASES: { library: Library; version: 3 | 4 | 5; subprotocol: string }[] = [
  { library: 'mqttjs', version: 4, subprotocol: 'mqtt' },
  { library: 'mqttjs', version: 5, subprotocol: 'mqtt' },
  { library: 'paho', version: 4, subprotocol: 'mqtt' },
  // Paho asks for the pre-standard "mqttv3.1" subprotocol for MQTT 3.1 (FIELD-NOTES 13-17).
  { library: 'paho', version: 3, subprotocol: 'mqttv3.1' },
]

if (CHROMIUM === undefined) {
  t.plan(0, NO_CHROMIUM)
} else if (MOSQUITTO === undefined) {
  t.plan(0, 'mosquitto not installed here; CI installs it (.ci/run)')
} else {
  const pki = testPki()
  const browser = await launchChromium(t, { trust: [pki.ca.cert] })
  const site = await startTestPageServer(t)

  t.test('round trips over wss from Chromium to Mosquitto', async (t) => {
    const broker = await startBroker(t, 'mosquitto')
    const gw = await startTestGateway(
      t,
      broker.port,
      tlsEnv(writeServerFiles(t, pki), NO_CLIENT_CERTS),
    )
    t.match(gw.url, /^wss:\/\/127\.0\.0\.1:/)
    const page = await browser.page(t)
    await page.goto(site.origin)
    t.equal(await page.textContent('#ready'), 'MQTT.js and Paho loaded from this server')

    for (const { library, version, subprotocol } of CASES) {
      await t.test(`${library}, MQTT protocol level ${version}`, async (t) => {
        const prefix = `browser/${library}/${version}/${Math.random().toString(16).slice(2, 8)}`
        const tcp = await mosquittoSub(t, broker.port, `${prefix}/up/#`)
        const client = await connectInPage(page, library, gw.url, { version })
        t.teardown(() => client.end())

        const open = await openConnections(gw)
        t.equal(open.length, 1, 'one connection open at the gateway')
        t.equal(open[0]?.subprotocol, subprotocol, `negotiated subprotocol ${subprotocol}`)

        t.same(await client.subscribe(`${prefix}/down`, 1), [1], 'SUBACK grants QoS 1')
        await client.publish(`${prefix}/up/q0`, `from ${library} qos 0`, 0)
        await client.publish(`${prefix}/up/q1`, `from ${library} qos 1`, 1)
        t.same(
          (await tcp.waitFor(2)).sort(),
          [`${prefix}/up/q0 from ${library} qos 0`, `${prefix}/up/q1 from ${library} qos 1`],
          'mosquitto_sub saw what the browser published',
        )

        await mosquittoPub(broker.port, `${prefix}/down`, 'from mosquitto_pub qos 0', 0)
        await mosquittoPub(broker.port, `${prefix}/down`, 'from mosquitto_pub qos 1', 1)
        const received = await client.waitForMessages(2)
        t.same(
          received.map((m) => `${m.topic} ${m.payload} q${m.qos}`).sort(),
          [
            `${prefix}/down from mosquitto_pub qos 0 q0`,
            `${prefix}/down from mosquitto_pub qos 1 q1`,
          ],
          'the browser received what mosquitto_pub sent, at the QoS it was sent',
        )
        t.equal((await client.state()).closed, null, 'still connected')
        await client.end()
        const closed = await gw.waitForLog(
          (l) => l.msg === 'connection closed' && l.conn === open[0]?.id,
        )
        // MQTT.js closes the WebSocket itself; after Paho's DISCONNECT the broker may be first.
        t.match(closed.initiator, /^(client|broker)$/, 'closed by the client, not cut')
      })
    }
  })

  t.test(
    'ws.allowedOrigins: a listed page connects, a page from another origin gets 403',
    async (t) => {
      const broker = await startBroker(t, 'mosquitto')
      const gw = await startTestGateway(
        t,
        broker.port,
        tlsEnv(writeServerFiles(t, pki), {
          ...NO_CLIENT_CERTS,
          DRAWBRIDGE_WS_ALLOWED_ORIGINS: site.origin,
        }),
      )
      const listed = await browser.page(t)
      await listed.goto(site.origin)
      const client = await connectInPage(listed, 'mqttjs', gw.url, { version: 4 })
      const [open] = await openConnections(gw)
      t.ok(open, `a page from ${site.origin} connects`)
      await client.end()

      // Same files, another port: another origin to the browser.
      const elsewhere = await startTestPageServer(t)
      t.not(elsewhere.origin, site.origin)
      const { error, devtools } = await connectFailsInPage(
        t,
        browser,
        elsewhere.origin,
        'mqttjs',
        gw.url,
        { version: 4 },
      )
      t.match(error, /closed before CONNACK/, 'the page from the other origin never gets a CONNACK')
      t.match(devtools.join('\n'), /Unexpected response code: 403/, 'the browser saw 403')
      const refused = await gw.waitForLog(
        (l) => l.msg === 'upgrade refused' && l.reason === 'origin',
      )
      t.match(refused.detail, `origin ${elsewhere.origin} is not allowed`)
    },
  )

  t.test('a certificate from a CA the browser does not trust is refused', async (t) => {
    const broker = await startBroker(t, 'mosquitto')
    const files = writeServerFiles(t, pki)
    const { writeFileSync } = await import('node:fs')
    // Same names, same key, another issuer: only the trust anchor differs.
    const stranger = issueServerCert(pki.otherCa, {
      commonName: 'localhost',
      altNames: ['localhost', '127.0.0.1'],
      key: pki.servers[0].key,
    })
    writeFileSync(files.cert, stranger.cert)
    const gw = await startTestGateway(t, broker.port, tlsEnv(files, NO_CLIENT_CERTS))
    const { error, devtools } = await connectFailsInPage(
      t,
      browser,
      site.origin,
      'mqttjs',
      gw.url,
      { version: 4 },
    )
    t.match(error, /closed before CONNACK/, 'MQTT.js never gets a CONNACK')
    t.match(
      devtools.join('\n'),
      /WebSocket connection to 'wss:.*' failed: .*ERR_CERT_AUTHORITY_INVALID/,
    )
    const failed = await gw.waitForLog((l) => l.msg === 'TLS handshake failed')
    t.equal(failed.reason, 'client_rejected_server_cert', 'the gateway logs why')
    t.notOk(
      gw.logs.some((l) => l.msg === 'connection opened'),
      'no WebSocket was opened',
    )
  })

  t.test(
    'tls.clientAuth=optional: the WebSocket works once the gateway origin was visited',
    async (t) => {
      const broker = await startBroker(t, 'mosquitto')
      // The server asks every client for a certificate.
      const gw = await startTestGateway(
        t,
        broker.port,
        tlsEnv(writeServerFiles(t, pki), { DRAWBRIDGE_TLS_CLIENT_AUTH: 'optional' }),
      )
      t.equal(gw.config.tls.clientAuth, 'optional')
      const { page, error, devtools } = await connectFailsInPage(
        t,
        browser,
        site.origin,
        'mqttjs',
        gw.url,
        { version: 4 },
      )
      t.match(
        error,
        /closed before CONNACK/,
        'Chromium cancels a WebSocket asked for a client certificate it has not chosen',
      )
      t.match(devtools.join('\n'), /WebSocket opening handshake was canceled/)
      t.notOk(gw.logs.some((l) => l.msg === 'connection opened'))
      // A page load from the gateway's origin settles the choice ("no certificate") for the host.
      const visit = await page.goto(`https://127.0.0.1:${gw.port}/`)
      t.equal(visit?.status(), 200, 'the diagnostics page (on in development; any page would do)')
      await page.goto(site.origin)
      const client = await connectInPage(page, 'mqttjs', gw.url, { version: 4 })
      t.teardown(() => client.end())
      t.equal((await openConnections(gw)).length, 1, 'now the same connect succeeds')
    },
  )

  t.test('MQTT 3.1 from Paho against a gateway that accepts only "mqtt"', async (t) => {
    const broker = await startBroker(t, 'mosquitto')
    const gw = await startTestGateway(t, broker.port, {
      ...tlsEnv(writeServerFiles(t, pki), NO_CLIENT_CERTS),
      DRAWBRIDGE_WS_SUBPROTOCOLS: 'mqtt',
    })
    const { page, error, devtools } = await connectFailsInPage(
      t,
      browser,
      site.origin,
      'paho',
      gw.url,
      { version: 3 },
    )
    t.match(error, /Paho connect failed/, 'Paho reports a failed connect')
    const refused = await gw.waitForLog((l) => l.msg === 'upgrade refused')
    t.equal(refused.reason, 'subprotocol')
    t.equal(refused.status, 400)
    t.match(refused.detail, /mqttv3\.1/, 'the refusal names what was offered')
    t.match(devtools.join('\n'), /Error during WebSocket handshake: Unexpected response code: 400/)
    // Paho 3.1.1 on the same gateway works: the mismatch was the subprotocol alone.
    const client = await connectInPage(page, 'paho', gw.url, { version: 4 })
    t.teardown(() => client.end())
    t.equal((await openConnections(gw))[0]?.subprotocol, 'mqtt')
  })
}

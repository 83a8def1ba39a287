// auth.mode=jwt from real Chromium: a page that gets its token from its own origin (GET /token,
// as a login backend would hand it out) and connects through the gateway over wss with MQTT.js
// (token in the query) and with Paho (token as the CONNECT password); and the diagnostics page
// of a browser whose cookie holds an expired token, which shows why the gateway refused it.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { startBroker } from './helpers/broker.js'
import { CHROMIUM, NO_CHROMIUM, launchChromium } from './helpers/chromium.js'
import { startTestGateway } from './helpers/gateway.js'
import { AUDIENCE, ISSUER, signingKey, signWith } from './helpers/jwt.js'
import { tempDir, testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { CLIENT_BUNDLES, startStaticServer } from './helpers/static-server.js'

// The page's side: fetch a token from its own origin, then connect with either library.
const PAGE_SCRIPT = `
window.connectWithToken = async (library, url) => {
  const { token } = await (await fetch('/token')).json()
  if (library === 'mqttjs') {
    return new Promise((resolve, reject) => {
      const client = mqtt.connect(url + '?access_token=' + token, {
        reconnectPeriod: 0, connectTimeout: 5000, clientId: 'page-mqttjs',
      })
      client.once('connect', () => { resolve('connected'); client.end() })
      client.once('close', () => reject(new Error('closed before CONNACK')))
    })
  }
  return new Promise((resolve, reject) => {
    const client = new Paho.Client(url, 'page-paho')
    client.connect({
      timeout: 5, mqttVersion: 4, mqttVersionExplicit: true,
      userName: 'token', password: token,
      onSuccess: () => { resolve('connected'); client.disconnect() },
      onFailure: (e) => reject(new Error('Paho ' + e.errorCode + ' ' + e.errorMessage)),
    })
  })
}
`

if (CHROMIUM === undefined) {
  t.plan(0, NO_CHROMIUM)
} else {
  const pki = testPki()
  const browser = await launchChromium(t, { trust: [pki.ca.cert] })
  const key = await signingKey('page-key', 'ES256')

  t.test('a page with a token from its own origin connects with MQTT.js and Paho', async (t) => {
    const broker = await startBroker(t, 'aedes')
    const dir = tempDir(t, 'drawbridge-browser-auth-')
    const pem = join(dir, 'page-key.pem')
    writeFileSync(pem, key.spki)
    const gw = await startTestGateway(
      t,
      broker.port,
      tlsEnv(writeServerFiles(t, pki), {
        DRAWBRIDGE_TLS_CLIENT_AUTH: 'none',
        DRAWBRIDGE_AUTH_MODE: 'jwt',
        DRAWBRIDGE_AUTH_KEYS: pem,
        DRAWBRIDGE_AUTH_ALGORITHMS: 'ES256',
        DRAWBRIDGE_AUTH_ISSUER: ISSUER,
        DRAWBRIDGE_AUTH_AUDIENCE: AUDIENCE,
      }),
    )
    const token = await signWith(key, 'page-user')
    const site = await startStaticServer(t, {
      '/': {
        type: 'text/html; charset=utf-8',
        body: '<!doctype html><script src="/mqtt.min.js"></script><script src="/paho-mqtt.js"></script><script src="/page.js"></script>',
      },
      '/page.js': { type: 'text/javascript', body: PAGE_SCRIPT },
      '/token': { type: 'application/json', body: JSON.stringify({ token }) },
      ...CLIENT_BUNDLES,
    })
    const page = await browser.page(t)
    await page.goto(site.origin)
    for (const [library, source] of [
      ['mqttjs', 'query'],
      ['paho', 'password'],
    ] as const) {
      const result = await page.evaluate(
        ([library, url]) =>
          (
            globalThis as unknown as {
              connectWithToken: (library: string, url: string) => Promise<string>
            }
          ).connectWithToken(library, url),
        [library, gw.url] as const,
      )
      t.equal(result, 'connected', `${library}: connected`)
      const line = await gw.waitForLog(
        (l) => l.msg === 'token accepted' && l.source === source && l.sub === 'page-user',
      )
      t.equal(line.kid, 'page-key', `${library}: let in by its ${source} token`)
    }
    t.ok(site.requests.includes('/token'), 'the page fetched its token from its own origin')
    const set = await gw.waitForLog((l) => l.msg === 'username set from the token')
    t.equal(set.username, 'page-user', 'the broker is told the token sub')
    t.notOk(JSON.stringify(gw.logs).includes(token), 'the token is in no log line')
  })

  t.test('the diagnostics page shows why a cookie token was refused', async (t) => {
    const broker = await startBroker(t, 'aedes')
    const pem = join(tempDir(t, 'drawbridge-browser-auth-'), 'page-key.pem')
    writeFileSync(pem, key.spki)
    const gw = await startTestGateway(
      t,
      broker.port,
      tlsEnv(writeServerFiles(t, pki), {
        DRAWBRIDGE_TLS_CLIENT_AUTH: 'none',
        DRAWBRIDGE_HTTP_DIAGNOSTICS: 'true',
        DRAWBRIDGE_AUTH_MODE: 'jwt',
        DRAWBRIDGE_AUTH_KEYS: pem,
        DRAWBRIDGE_AUTH_ALGORITHMS: 'ES256',
        DRAWBRIDGE_AUTH_ISSUER: ISSUER,
        DRAWBRIDGE_AUTH_AUDIENCE: AUDIENCE,
        DRAWBRIDGE_AUTH_CLOCK_TOLERANCE: '0',
      }),
    )
    const origin = `https://127.0.0.1:${gw.port}`
    await browser.context.addCookies([
      {
        name: 'access_token',
        value: await signWith(key, 'stale-user', { expiresIn: -120 }),
        url: origin,
      },
    ])
    t.teardown(() => browser.context.clearCookies())
    const page = await browser.page(t)
    await page.goto(`${origin}/`)
    await page.waitForSelector('#summary[data-state="done"]', { timeout: 30_000 })
    const upgrade = await page.locator('#steps > li[data-step="upgrade"]').innerText()
    t.match(
      upgrade,
      /The gateway answered HTTP 401 \(auth\): token refused: token expired/,
      'the upgrade step names the refusal',
    )
    const line = await gw.waitForLog((l) => l.msg === 'token refused' && l.source === 'cookie')
    t.equal(line.reason, 'expired')
  })
}

// The diagnostics page (http.diagnostics) run by Chromium the way a user behind a corporate
// proxy runs it: through squid, which cuts tunnels idle for 2 s, over wss with the development
// profile. Every step passes against Mosquitto; each failure a
// user can meet shows up in the step it belongs to. Writes docs/diagnostics.png when
// UPDATE_SCREENSHOTS=1 (the README's picture).
import { writeFileSync } from 'node:fs'
import type { Page } from 'playwright-core'
import t from 'tap'
import { MOSQUITTO, freePort, startBroker } from './helpers/broker.js'
import { CHROMIUM, NO_CHROMIUM, launchChromium } from './helpers/chromium.js'
import { startTestGateway } from './helpers/gateway.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { SQUID, startSquid } from './helpers/squid.js'

const STEPS = ['tls', 'upgrade', 'subprotocol', 'connect', 'roundtrip', 'idle'] as const
type Step = (typeof STEPS)[number]

interface Checks {
  statuses: Record<Step, string>
  /** The certificate issuer the browser itself was served, as Chromium reports it. */
  issuer: string | undefined
}

async function runChecks(page: Page, url: string): Promise<Checks> {
  const response = await page.goto(url)
  const issuer = (await response?.securityDetails())?.issuer
  await page.waitForSelector('#summary[data-state="done"]', { timeout: 30_000 })
  const statuses: [string, string][] = []
  for (const item of await page.locator('#steps > li').all()) {
    const step = (await item.getAttribute('data-step')) ?? ''
    statuses.push([step, (await item.getAttribute('data-status')) ?? ''])
  }
  return { statuses: Object.fromEntries(statuses) as Record<Step, string>, issuer }
}

interface Clipboard {
  navigator: { clipboard: { readText: () => Promise<string> } }
}

const stepText = (page: Page, step: Step): Promise<string> =>
  page.locator(`#steps > li[data-step="${step}"]`).innerText()

if (CHROMIUM === undefined) {
  t.plan(0, NO_CHROMIUM)
} else if (MOSQUITTO === undefined || SQUID === undefined) {
  t.plan(0, 'mosquitto or squid not installed here; CI installs both (.ci/run)')
} else {
  const pki = testPki()
  const ports = { ok: await freePort(), noBroker: await freePort(), noPings: await freePort() }
  const squid = await startSquid(t, {
    connectPorts: Object.values(ports),
    idleTimeoutSeconds: 2,
  })
  const browser = await launchChromium(t, { trust: [pki.ca.cert], proxy: squid.url })
  const broker = await startBroker(t, 'mosquitto')
  const files = writeServerFiles(t, pki)
  // The development profile as shipped (diagnostics on), with pings every 500 ms: well below
  // squid's 2 s.
  const env = (port: number, extra: Record<string, string> = {}): Record<string, string> =>
    tlsEnv(files, {
      DRAWBRIDGE_HTTP_DIAGNOSTICS: 'true',
      DRAWBRIDGE_LISTEN_PORT: String(port),
      DRAWBRIDGE_WS_PING_INTERVAL: '500ms',
      DRAWBRIDGE_WS_PONG_TIMEOUT: '1s',
      ...extra,
    })
  // An allow-list without the gateway's own origin: its own page is let in all the same.
  const gw = await startTestGateway(
    t,
    broker.port,
    env(ports.ok, { DRAWBRIDGE_WS_ALLOWED_ORIGINS: 'https://app.example.com' }),
  )
  const pageUrl = (port: number, idle: number): string => `https://127.0.0.1:${port}/?idle=${idle}`

  t.test('every step passes against Mosquitto, through an idle-killing proxy', async (t) => {
    const page = await browser.page(t)
    await browser.context.grantPermissions(['clipboard-read', 'clipboard-write'])
    const { statuses, issuer } = await runChecks(page, pageUrl(ports.ok, 3))
    t.equal(issuer, 'Drawbridge test CA', 'the browser was served the gateway certificate')
    t.same(statuses, Object.fromEntries(STEPS.map((s) => [s, 'pass'])), 'all six steps pass')
    t.equal(await page.getAttribute('#summary', 'data-result'), 'pass')

    const tls = await stepText(page, 'tls')
    t.match(tls, /Issued by: CN=Drawbridge test CA/, 'shows the issuer to compare with')
    t.match(tls, /padlock/, 'and tells the user where to compare')
    t.match(tls, /Gateway TLS: TLSv1\.3/)
    t.match(tls, /Forwarding headers \(Via, X-Forwarded-For, Forwarded\): none/)
    t.match(await stepText(page, 'subprotocol'), /Negotiated: mqtt/)
    t.match(await stepText(page, 'subprotocol'), /"mqttv3\.1" \(MQTT 3\.1 clients\): accepted/)
    t.match(await stepText(page, 'connect'), /CONNACK return code 0: accepted/)
    t.match(await stepText(page, 'roundtrip'), /QoS 1 publish to receive: \d+ ms/)
    t.match(
      await stepText(page, 'idle'),
      /Still open after 3 s without MQTT traffic; the gateway pings every 0\.5 s/,
      'survived an idle spell longer than the proxy allows',
    )
    const tunnel = await squid.waitForAccess(new RegExp(`CONNECT 127\\.0\\.0\\.1:${ports.ok} `))
    t.match(
      tunnel,
      /TCP_TUNNEL\/200 .* HIER_DIRECT\/127\.0\.0\.1 /,
      `the checks went through squid: ${tunnel.trim()}`,
    )

    const report = await page.inputValue('#report')
    t.match(report, /^Drawbridge connection check\n/)
    t.match(report, /User agent: Mozilla\/5\.0 .*Chrome\/\d+/)
    t.match(report, /Gateway certificate: CN=localhost; issuer CN=Drawbridge test CA; SHA-256 /)
    for (const [i, name] of [
      'TLS and page load',
      'WebSocket upgrade',
      'Idle connection',
    ].entries()) {
      t.match(report, new RegExp(`\\[PASS\\] \\d\\. ${name}`), `report line ${i + 1}`)
    }
    await page.click('#copy')
    await page.waitForSelector('#copied:has-text("Report copied.")')
    t.equal(
      await page.evaluate(() =>
        (globalThis as unknown as Clipboard).navigator.clipboard.readText(),
      ),
      report,
      '"Copy report" put the report on the clipboard',
    )

    const png = await page.screenshot({ fullPage: true })
    t.equal(png.subarray(1, 4).toString(), 'PNG', 'a screenshot of the page')
    t.ok(png.length < 400_000, `screenshot is ${png.length} bytes`)
    if (process.env.UPDATE_SCREENSHOTS === '1') {
      writeFileSync(new URL('../docs/diagnostics.png', import.meta.url), png)
    }
    const opened = gw.logs.filter((l) => l.msg === 'connection opened')
    t.same(
      opened.map((l) => l.protocol),
      ['mqtt', 'mqttv3.1'],
      'the gateway saw the check connection and the mqttv3.1 probe',
    )
  })

  t.test('broker down: the upgrade step shows the 502 the gateway answered', async (t) => {
    await startTestGateway(t, await freePort(), env(ports.noBroker))
    const page = await browser.page(t)
    const { statuses } = await runChecks(page, pageUrl(ports.noBroker, 1))
    t.same(statuses, {
      tls: 'pass',
      upgrade: 'fail',
      subprotocol: 'skipped',
      connect: 'skipped',
      roundtrip: 'skipped',
      idle: 'skipped',
    })
    const upgrade = await stepText(page, 'upgrade')
    t.match(upgrade, /close code 1006/, 'what the browser itself knows')
    t.match(upgrade, /The gateway answered HTTP 502 \(upstream_refused\): .*ECONNREFUSED/)
    t.equal(await page.getAttribute('#summary', 'data-result'), 'fail')
    t.match(await page.inputValue('#report'), /\[FAIL\] 2\. WebSocket upgrade/)
  })

  t.test('pings off behind the same proxy: the idle step fails and says why', async (t) => {
    await startTestGateway(t, broker.port, env(ports.noPings, { DRAWBRIDGE_WS_PING_INTERVAL: '0' }))
    const page = await browser.page(t)
    const { statuses } = await runChecks(page, pageUrl(ports.noPings, 4))
    t.equal(statuses.roundtrip, 'pass')
    t.equal(statuses.idle, 'fail')
    const idle = await stepText(page, 'idle')
    t.match(idle, /closed after \d\.\d s without traffic: close code 1006/)
    t.match(idle, /the gateway sends no pings \(ws\.pingInterval=0\)/)
  })

  t.test('forwarding headers inside TLS are reported as a sign of TLS inspection', async (t) => {
    const page = await browser.page(t)
    // What a TLS-inspecting proxy adds once it has decrypted the request (Blue Coat style).
    await page.setExtraHTTPHeaders({
      Via: '1.1 inspector.corp.example',
      'X-Forwarded-For': '10.1.2.3',
    })
    const { statuses } = await runChecks(page, pageUrl(ports.ok, 1))
    t.equal(statuses.tls, 'warn')
    t.equal(statuses.idle, 'pass', 'the other steps still pass')
    const tls = await stepText(page, 'tls')
    t.match(tls, /Received via: 1\.1 inspector\.corp\.example/)
    t.match(tls, /Received x-forwarded-for: 10\.1\.2\.3/)
    t.match(tls, /something decrypted your traffic before the gateway/)
    t.equal(await page.getAttribute('#summary', 'data-result'), 'warn')
  })
}

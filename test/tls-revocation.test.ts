// tls.closeRevoked: sessions opened before their client certificate stopped being good are
// closed, on wss (close 1008 with the reason) and on mqtts (TLS close): after a reload whose CRL
// revokes the certificate, and once the certificate expires. Off, they stay.
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import t from 'tap'
import { WebSocket } from 'ws'
import { createCrl, issueClientCert, type IssuedCert } from '../src/dev/certs.js'
import { isRevoked, parseRevocations } from '../src/edge/crl.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway, type TestGateway } from './helpers/gateway.js'
import { testPki, tlsEnv, writeServerFiles, type PkiFiles } from './helpers/pki.js'
import { scrape, value } from './helpers/scrape.js'
import { connectMqtt, roundTrip, tryMqtt } from './helpers/tls-clients.js'

const pki = testPki()

interface Session {
  ws: WebSocket
  closed: Promise<{ code: number; reason: string }>
}

async function openWss(
  t: { teardown: (fn: () => unknown) => void },
  gw: TestGateway,
  client: IssuedCert,
): Promise<Session> {
  const ws = new WebSocket(gw.url, 'mqtt', { ca: pki.ca.cert, cert: client.cert, key: client.key })
  t.teardown(() => ws.terminate())
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  )
  await once(ws, 'open')
  return { ws, closed }
}

async function startTlsGateway(
  t: Parameters<typeof startTestGateway>[0],
  files: PkiFiles,
  env: Record<string, string> = {},
  expiryCheckInterval?: number,
): Promise<TestGateway> {
  const broker = await startBroker(t, 'aedes')
  return startTestGateway(
    t,
    broker.port,
    tlsEnv(files, {
      DRAWBRIDGE_TLS_CLIENT_AUTH: 'required',
      DRAWBRIDGE_TCP_ENABLED: 'true',
      DRAWBRIDGE_TLS_WATCH: 'false',
      ...env,
    }),
    expiryCheckInterval === undefined ? {} : { expiryCheckInterval },
  )
}

t.test('a reload whose CRL revokes an open session closes it, on wss and mqtts', async (t) => {
  const files = writeServerFiles(t, pki)
  const gw = await startTlsGateway(t, files)
  const browser = await openWss(t, gw, pki.clients.good)
  const device = await connectMqtt(`mqtts://127.0.0.1:${gw.mqttsPort ?? 0}`, {
    ca: pki.ca.cert,
    client: pki.clients.good,
  })
  t.teardown(() => device.end(true))
  t.equal(await roundTrip(device, 'revoke/before', 'still good'), 'still good')
  const deviceClosed = new Promise<void>((resolve) => device.once('close', () => resolve()))

  writeFileSync(
    files.crl,
    createCrl(pki.ca, [
      { serial: pki.clients.revoked.serial },
      { serial: pki.clients.good.serial },
    ]),
  )
  t.match(gw.gateway.reload(), { ok: true, changed: true })

  t.same(await browser.closed, { code: 1008, reason: 'client certificate revoked' })
  await deviceClosed
  t.pass('the mqtts session was closed')
  const lines = await gw.waitForLogs(
    (l) => l.msg === 'client certificate revoked; closing its session',
    2,
  )
  t.same(lines.map((l) => l.listener).sort(), ['mqtts', 'wss'])
  t.match(lines[0], { subject: 'good-device', reason: 'revoked' })
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_tls_sessions_closed_total', { reason: 'revoked' }), 2)
  t.not(
    await tryMqtt(gw.url, pki.ca.cert, pki.clients.good),
    'ok',
    'a new handshake is refused too',
  )
})

t.test('tls.closeRevoked=false leaves open sessions alone', async (t) => {
  const files = writeServerFiles(t, pki)
  const gw = await startTlsGateway(t, files, { DRAWBRIDGE_TLS_CLOSE_REVOKED: 'false' })
  const device = await connectMqtt(gw.url, { ca: pki.ca.cert, client: pki.clients.good })
  t.teardown(() => device.end(true))
  writeFileSync(files.crl, createCrl(pki.ca, [{ serial: pki.clients.good.serial }]))
  t.match(gw.gateway.reload(), { ok: true, changed: true })
  // The reload's effects are done when it returns; the session still carries messages.
  t.equal(await roundTrip(device, 'revoke/kept', 'kept'), 'kept')
  t.equal(gw.gateway.connections.size, 1)
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_tls_sessions_closed_total', { reason: 'revoked' }), 0)
})

t.test('a session whose certificate expires is closed with 1008', async (t) => {
  const files = writeServerFiles(t, pki)
  const gw = await startTlsGateway(t, files, {}, 200)
  // Valid for the handshake, expired three seconds later (X.509 times have whole seconds).
  const shortLived = issueClientCert(pki.ca, {
    commonName: 'short-lived-device',
    key: pki.clients.good.key,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3_000),
  })
  const session = await openWss(t, gw, shortLived)
  const lasting = await openWss(t, gw, pki.clients.good)
  t.same(await session.closed, { code: 1008, reason: 'client certificate expired' })
  const line = await gw.waitForLog(
    (l) => l.msg === 'client certificate expired; closing its session',
  )
  t.match(line, { subject: 'short-lived-device', reason: 'expired', listener: 'wss' })
  t.equal(lasting.ws.readyState, WebSocket.OPEN, 'a session with a valid certificate stays')
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_tls_sessions_closed_total', { reason: 'expired' }), 1)
  lasting.ws.close()
  await lasting.closed
})

t.test(
  'parseRevocations reads each CRL of a bundle: issuer CN and serials as Node prints them',
  async (t) => {
    const bundle = [
      createCrl(pki.ca, [{ serial: '00abcd' }, { serial: pki.clients.revoked.serial }]),
      createCrl(pki.otherCa, [{ serial: '7f01' }]),
    ].join('\n')
    const crls = parseRevocations(bundle)
    t.equal(crls.length, 2)
    t.equal(crls[0]?.issuer, 'Drawbridge test CA')
    t.ok(crls[0]?.serials.has('ABCD'), 'leading zeros dropped, upper case')
    t.ok(isRevoked(crls, 'Drawbridge test CA', pki.clients.revoked.serial))
    t.notOk(isRevoked(crls, 'Some other CA', pki.clients.revoked.serial), 'the issuer must match')
    t.ok(isRevoked(crls, 'Some other CA', '7F01'))
    t.throws(() => parseRevocations('-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----'))
  },
)

// tls.closeRevoked: sessions opened before their client certificate stopped being good are
// closed, on wss (close 1008 with the reason) and on mqtts (TLS close): after a reload whose CRL
// revokes the certificate, and once the certificate expires. MQTT 5 clients are first sent
// DISCONNECT 0x87 Not authorized with a Reason String; earlier levels no DISCONNECT. Off, they
// stay.
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import mqtt, { type IDisconnectPacket } from 'mqtt'
import t from 'tap'
import { WebSocket } from 'ws'
import { createCrl, issueClientCert, type IssuedCert } from '../src/dev/certs.js'
import { isRevoked, parseRevocations } from '../src/edge/crl.js'
import { MOSQUITTO, startBroker, type TestBroker } from './helpers/broker.js'
import { startTestGateway, type TestGateway } from './helpers/gateway.js'
import { testPki, tlsEnv, writeServerFiles, type PkiFiles } from './helpers/pki.js'
import { scrape, value } from './helpers/scrape.js'
import { connectMqtt, roundTrip, tryMqtt } from './helpers/tls-clients.js'
import { connectPacket, openRawClient } from './helpers/wsmqtt.js'

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
  kind: TestBroker['kind'] = 'aedes',
): Promise<TestGateway> {
  const broker = await startBroker(t, kind)
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
  let disconnects = 0
  device.on('disconnect', () => disconnects++)

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
  t.equal(disconnects, 0, 'an MQTT 3.1.1 client is sent no DISCONNECT')
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

/** MQTT.js at level 5 with `client`'s certificate, on wss:// or mqtts://. */
async function connectMqtt5(url: string, client: IssuedCert): Promise<mqtt.MqttClient> {
  return mqtt.connectAsync(url, {
    protocolVersion: 5,
    ca: pki.ca.cert,
    cert: client.cert,
    key: client.key,
    rejectUnauthorized: true,
    reconnectPeriod: 0,
    connectTimeout: 5_000,
  })
}

/**
 * Resolves once MQTT.js's connection has closed: with the DISCONNECT it was sent before, or
 * undefined when it closed without one.
 */
function disconnectThenClose(client: mqtt.MqttClient): Promise<IDisconnectPacket | undefined> {
  let told: IDisconnectPacket | undefined
  client.once('disconnect', (packet) => (told = packet))
  return new Promise((resolve) => client.once('close', () => resolve(told)))
}

t.test(
  'MQTT 5: DISCONNECT 0x87 certificate revoked, then the close, on wss and mqtts',
  { skip: !MOSQUITTO },
  async (t) => {
    const files = writeServerFiles(t, pki)
    const gw = await startTlsGateway(t, files, {}, undefined, 'mosquitto')
    const browser = await connectMqtt5(gw.url, pki.clients.good)
    t.teardown(() => browser.end(true))
    const device = await connectMqtt5(`mqtts://127.0.0.1:${gw.mqttsPort ?? 0}`, pki.clients.good)
    t.teardown(() => device.end(true))
    // A raw one reads the bytes and the close code.
    const raw = await openRawClient(t, gw.url, 'mqtt', {
      protocolVersion: 5,
      ca: pki.ca.cert,
      cert: pki.clients.good.cert,
      key: pki.clients.good.key,
    })
    raw.ws.send(connectPacket('revoked-raw', { protocolVersion: 5 }))
    await raw.next('connack')
    const browserTold = disconnectThenClose(browser)
    const deviceTold = disconnectThenClose(device)

    writeFileSync(files.crl, createCrl(pki.ca, [{ serial: pki.clients.good.serial }]))
    t.match(gw.gateway.reload(), { ok: true, changed: true })

    for (const [name, told] of [
      ['wss', browserTold],
      ['mqtts', deviceTold],
    ] as const) {
      const packet = await told
      t.equal(packet?.reasonCode, 0x87, `${name}: Not authorized, then the close`)
      t.equal(packet?.properties?.reasonString, 'certificate revoked', `${name}: reason string`)
    }
    t.same(await raw.closed, { code: 1008, reason: 'client certificate revoked' })
    t.same(
      raw.packets.map((p) => p.cmd),
      ['connack', 'disconnect'],
      'the DISCONNECT is a whole packet after the CONNACK, and the last thing sent',
    )
    t.match(raw.packets[1], {
      reasonCode: 0x87,
      properties: { reasonString: 'certificate revoked' },
    })
    const lines = await gw.waitForLogs(
      (l) => l.msg === 'connection closed' && l.reason === 'client certificate revoked',
      3,
    )
    t.same(lines.map((l) => l.listener).sort(), ['mqtts', 'wss', 'wss'])
    t.ok(
      lines.every((l) => l.protocolLevel === 5 && l.initiator === 'gateway'),
      'each an MQTT 5 session the gateway closed',
    )
  },
)

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
  // Aedes speaks no MQTT 5: the MQTT 5 session below needs Mosquitto.
  const v5 = MOSQUITTO !== undefined
  const gw = await startTlsGateway(t, files, {}, 200, v5 ? 'mosquitto' : 'aedes')
  // Valid for the handshake, expired three seconds later (X.509 times have whole seconds).
  const shortLived = issueClientCert(pki.ca, {
    commonName: 'short-lived-device',
    key: pki.clients.good.key,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3_000),
  })
  const session = await openWss(t, gw, shortLived)
  const lasting = await openWss(t, gw, pki.clients.good)
  // An MQTT 5 session on the same certificate is told why first.
  const mqtt5 = v5
    ? await openRawClient(t, gw.url, 'mqtt', {
        protocolVersion: 5,
        ca: pki.ca.cert,
        cert: shortLived.cert,
        key: shortLived.key,
      })
    : undefined
  mqtt5?.ws.send(connectPacket('expiring', { protocolVersion: 5 }))
  await mqtt5?.next('connack')
  t.same(await session.closed, { code: 1008, reason: 'client certificate expired' })
  if (mqtt5) {
    t.same(await mqtt5.closed, { code: 1008, reason: 'client certificate expired' })
    t.same(
      mqtt5.packets.map((p) => p.cmd),
      ['connack', 'disconnect'],
    )
    t.match(mqtt5.packets[1], {
      reasonCode: 0x87,
      properties: { reasonString: 'certificate expired' },
    })
  }
  const line = await gw.waitForLog(
    (l) => l.msg === 'client certificate expired; closing its session',
  )
  t.match(line, { subject: 'short-lived-device', reason: 'expired', listener: 'wss' })
  t.equal(lasting.ws.readyState, WebSocket.OPEN, 'a session with a valid certificate stays')
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_tls_sessions_closed_total', { reason: 'expired' }), v5 ? 2 : 1)
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

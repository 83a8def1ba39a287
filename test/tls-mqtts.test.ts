// The mqtts listener (tcp.enabled): MQTT over TLS on TCP, same certificates and client rules
// as wss, piped to the same upstream. MQTT.js and paho with a client certificate; a client
// without one is refused with the reason logged; wss and mqtts clients reach each other.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { startBroker, type Teardown } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { eventually, scrape, value } from './helpers/scrape.js'
import { connectMqtt, roundTrip, runPaho, tryMqtt } from './helpers/tls-clients.js'

const pki = testPki()

/** A gateway with the mqtts listener on, client certificates required, in front of Aedes. */
async function startMqttsGateway(t: Teardown) {
  const broker = await startBroker(t, 'aedes')
  const files = writeServerFiles(t, pki)
  const gw = await startTestGateway(
    t,
    broker.port,
    tlsEnv(files, { DRAWBRIDGE_TLS_CLIENT_AUTH: 'required', DRAWBRIDGE_TCP_ENABLED: 'true' }),
  )
  const port = gw.mqttsPort
  if (port === undefined) throw new Error('no mqtts listener')
  return { gw, files, port }
}

t.test('mqtts round trip with a client certificate, refusal without one', async (t) => {
  const { gw, files, port } = await startMqttsGateway(t)
  const url = `mqtts://127.0.0.1:${port}`

  const device = await connectMqtt(url, { ca: pki.ca.cert, client: pki.clients.good })
  t.teardown(() => device.end(true))
  t.equal(await roundTrip(device, 'mqtts/echo', 'over tcp'), 'over tcp', 'MQTT.js over mqtts')
  const opened = await gw.waitForLog(
    (line) => line.msg === 'connection opened' && line.listener === 'mqtts',
  )
  t.match(opened.tls, { clientCert: { subject: 'good-device', sans: ['DNS:good-device.test'] } })
  const live = await scrape(gw.adminUrl)
  t.equal(value(live, 'drawbridge_connections_active', { listener: 'mqtts' }), 1)
  t.equal(value(live, 'drawbridge_connections_total', { listener: 'mqtts' }), 1)
  t.ok(
    value(live, 'drawbridge_bytes_total', { direction: 'client_to_broker' }) > 0,
    'the mqtts bytes are counted while the connection is open',
  )

  // A browser on wss and a device on mqtts meet at the same broker.
  const browser = await connectMqtt(gw.url, { ca: pki.ca.cert, client: pki.clients.good })
  t.teardown(() => browser.end(true))
  await browser.subscribeAsync('mqtts/to-browser', { qos: 1 })
  const got = new Promise<string>((resolve) =>
    browser.once('message', (_topic, payload: Buffer) => resolve(payload.toString())),
  )
  await device.publishAsync('mqtts/to-browser', 'hello browser', { qos: 1 })
  t.equal(await got, 'hello browser', 'mqtts -> broker -> wss')

  t.not(await tryMqtt(url, pki.ca.cert, undefined), 'ok', 'no certificate: refused')
  const refused = await gw.waitForLog(
    (line) => line.msg === 'client certificate refused' && line.listener === 'mqtts',
  )
  t.equal(refused.reason, 'no_cert')
  t.not(await tryMqtt(url, pki.ca.cert, pki.clients.revoked), 'ok', 'revoked: refused')
  await gw.waitForLog(
    (line) =>
      line.msg === 'client certificate refused' &&
      line.listener === 'mqtts' &&
      line.reason === 'revoked',
  )

  const cert = join(files.dir, 'good.crt')
  const key = join(files.dir, 'good.key')
  writeFileSync(cert, pki.clients.good.cert)
  writeFileSync(key, pki.clients.good.key, { mode: 0o600 })
  const paho = await runPaho('tcp', port, [
    { name: 'good', ca: files.ca, cert, key },
    { name: 'none', ca: files.ca },
  ])
  t.equal(paho.good, 'ok', 'paho over mqtts with a client certificate')
  t.not(paho.none, 'ok', 'paho without a certificate refused')

  device.end(true)
  await gw.waitForLog((line) => line.msg === 'connection closed' && line.listener === 'mqtts')
  // The device and paho's "good" client were bridged; the refused ones never were.
  const counted = await eventually(async () => {
    const s = await scrape(gw.adminUrl)
    return (
      value(s, 'drawbridge_connections_active', { listener: 'mqtts' }) === 0 &&
      value(s, 'drawbridge_connections_total', { listener: 'mqtts' }) === 2
    )
  })
  t.ok(counted, 'mqtts connections counted: 2 opened, none left open after they closed')
})

t.test('mqtts clients are in /connections and can be closed from the admin API', async (t) => {
  const { gw, port } = await startMqttsGateway(t)
  const device = await connectMqtt(`mqtts://127.0.0.1:${port}`, {
    ca: pki.ca.cert,
    client: pki.clients.good,
  })
  t.teardown(() => device.end(true))
  t.equal(await roundTrip(device, 'mqtts/listed', 'seen'), 'seen')

  const list = (await (await fetch(`${gw.adminUrl}/connections`)).json()) as Record<
    string,
    unknown
  >[]
  t.equal(list.length, 1)
  const [view] = list
  t.match(view, {
    listener: 'mqtts',
    subprotocol: null,
    origin: null,
    tls: { clientCert: { subject: 'good-device' } },
    frames: { clientToBroker: 0, brokerToClient: 0 },
  })
  t.ok((view?.bytes as { clientToBroker: number }).clientToBroker > 0, 'bytes are counted')

  const closed = new Promise<void>((resolve) => device.once('close', () => resolve()))
  const res = await fetch(`${gw.adminUrl}/connections/${String(view?.id)}`, { method: 'DELETE' })
  t.equal(res.status, 202)
  await closed
  t.pass('the operator closed the mqtts client')
  const line = await gw.waitForLog(
    (l) => l.msg === 'connection closed' && l.listener === 'mqtts' && l.conn === view?.id,
  )
  t.match(line, { initiator: 'gateway', reason: 'closed by an operator' })
  t.equal(line.code, undefined, 'mqtts has no close code')
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_closes_total', { code: 'none', initiator: 'gateway' }), 1)
})

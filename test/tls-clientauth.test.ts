// Each tls.clientAuth mode against each kind of client certificate, with two independent
// clients over wss:// (MQTT.js and python paho-mqtt): the outcome, the reason in the log line,
// the event given to the metrics hook, and the client identity on accepted connections.
import { writeFileSync } from 'node:fs'
import https from 'node:https'
import { join } from 'node:path'
import t from 'tap'
import type { ClientAuth } from '../src/config/schema.js'
import type { IssuedCert } from '../src/dev/certs.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway, type LogLine } from './helpers/gateway.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { rawRequest, upgradeRequest } from './helpers/raw.js'
import { runPaho, tryMqtt, wsUpgrade, type PahoCase } from './helpers/tls-clients.js'

type ClientName = 'none' | 'good' | 'stranger' | 'expired' | 'revoked'
/** 'ok', or the refusal reason expected in the log. */
type Outcome = 'ok' | 'no_cert' | 'unknown_ca' | 'expired' | 'revoked'

const EXPECTED: Record<ClientAuth, Record<ClientName, Outcome>> = {
  // Not requested: clients send no certificate, whatever they hold.
  none: { none: 'ok', good: 'ok', stranger: 'ok', expired: 'ok', revoked: 'ok' },
  // An untrusted certificate is refused, never treated as "no certificate".
  optional: {
    none: 'ok',
    good: 'ok',
    stranger: 'unknown_ca',
    expired: 'expired',
    revoked: 'revoked',
  },
  required: {
    none: 'no_cert',
    good: 'ok',
    stranger: 'unknown_ca',
    expired: 'expired',
    revoked: 'revoked',
  },
}

const pki = testPki()
const CLIENTS: Record<ClientName, IssuedCert | undefined> = {
  none: undefined,
  ...pki.clients,
}

function refusalLines(logs: LogLine[], reason: Outcome, cn: string | undefined): LogLine[] {
  return logs.filter(
    (line) =>
      line.msg === 'client certificate refused' &&
      line.reason === reason &&
      (line.clientCert as { subject?: string } | undefined)?.subject === cn,
  )
}

t.test('clientAuth modes x client certificates, MQTT.js and paho over wss', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const files = writeServerFiles(t, pki)
  const pahoCases: PahoCase[] = []
  for (const [name, cert] of Object.entries(CLIENTS)) {
    const pahoCase: PahoCase = { name, ca: files.ca }
    if (cert) {
      pahoCase.cert = join(files.dir, `${name}.crt`)
      pahoCase.key = join(files.dir, `${name}.key`)
      writeFileSync(pahoCase.cert, cert.cert)
      writeFileSync(pahoCase.key, cert.key, { mode: 0o600 })
    }
    pahoCases.push(pahoCase)
  }

  for (const mode of ['none', 'optional', 'required'] as const) {
    t.test(`tls.clientAuth=${mode}`, async (t) => {
      const gw = await startTestGateway(
        t,
        broker.port,
        tlsEnv(files, { DRAWBRIDGE_TLS_CLIENT_AUTH: mode }),
      )
      t.match(gw.url, /^wss:\/\//)
      const paho = await runPaho('websockets', gw.port, pahoCases)

      for (const [name, cert] of Object.entries(CLIENTS) as [
        ClientName,
        IssuedCert | undefined,
      ][]) {
        const expected = EXPECTED[mode][name]
        const subject = cert === undefined ? undefined : subjectOf(name)
        const mqttResult = await tryMqtt(gw.url, pki.ca.cert, cert)
        if (expected === 'ok') {
          t.equal(mqttResult, 'ok', `MQTT.js ${name}: round trip`)
          t.equal(paho[name], 'ok', `paho ${name}: round trip`)
        } else {
          // MQTT.js reports only a close; a raw ws client shows the 403 and the reason.
          t.match(mqttResult, /closed before CONNACK|403/, `MQTT.js ${name}: refused`)
          const raw = await wsUpgrade(gw.url, { ca: pki.ca.cert, client: cert })
          t.equal(raw.status, 403, `ws ${name}: 403`)
          t.match(raw.body, `client certificate refused: ${expected}`)
          t.match(paho[name], /WebsocketConnectionError|403|not upgraded/i, `paho ${name}: refused`)
          // One refusal line per client (MQTT.js and paho), each naming the reason.
          const lines = refusalLines(gw.logs, expected, subject)
          t.equal(lines.length, 3, `${name}: one "${expected}" refusal line per client`)
          t.equal(lines[0]?.listener, 'wss')
        }
      }

      const refused = Object.values(EXPECTED[mode]).filter((o) => o !== 'ok')
      t.same(
        gw.tlsEvents
          .filter((e) => e.type === 'client_refused')
          .map((e) => e.reason)
          .sort(),
        [...refused, ...refused, ...refused].sort(),
        'each refusal counted once per client through onTlsEvent',
      )

      // The verified identity travels with the connection (its "connection opened" line).
      const opened = gw.logs.filter((line) => line.msg === 'connection opened')
      const identities = opened
        .map(
          (line) => (line.tls as { clientCert?: { subject: string; sans: string[] } }).clientCert,
        )
        .filter((cert) => cert !== undefined)
      if (mode === 'none') {
        t.equal(identities.length, 0, 'no client certificate asked for, none recorded')
      } else {
        t.equal(identities.length, 2, 'good-device identified on both clients')
        t.match(identities[0], {
          subject: 'good-device',
          sans: ['DNS:good-device.test'],
          serial: pki.clients.good.serial.toUpperCase(),
          fingerprint256: /^[0-9A-F:]{95}$/,
        })
      }
      t.ok(opened.every((line) => (line.tls as { protocol: string }).protocol.startsWith('TLSv1.')))
    })
  }
})

function subjectOf(name: ClientName): string | undefined {
  return {
    none: undefined,
    good: 'good-device',
    stranger: 'stranger-device',
    expired: 'expired-device',
    revoked: 'revoked-device',
  }[name]
}

t.test(
  'a refused client gets 403 on plain requests too, and handshake failures are counted',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const files = writeServerFiles(t, pki)
    const gw = await startTestGateway(
      t,
      broker.port,
      tlsEnv(files, { DRAWBRIDGE_TLS_CLIENT_AUTH: 'required' }),
    )

    // A plain HTTPS GET without a certificate: 403 naming the reason, not the usual 426.
    const status = await new Promise<{ code: number; body: string }>((resolve, reject) => {
      const req = https.get(
        {
          host: '127.0.0.1',
          port: gw.port,
          path: '/mqtt',
          ca: pki.ca.cert,
          servername: 'localhost',
        },
        (res) => {
          let body = ''
          res.on('data', (chunk: Buffer) => (body += chunk.toString()))
          res.on('end', () => resolve({ code: res.statusCode ?? 0, body }))
        },
      )
      req.on('error', reject)
    })
    t.equal(status.code, 403)
    t.match(status.body, /client certificate refused: no_cert/)

    // Plain HTTP (no TLS) sent to the TLS port: a handshake failure with a reason.
    const plain = await rawRequest(gw.port, upgradeRequest('/mqtt'), { timeoutMs: 5_000 })
    t.equal(plain.status, 0, 'no HTTP answer to plain text on a TLS port')
    const failed = await gw.waitForLog((line) => line.msg === 'TLS handshake failed')
    t.equal(failed.reason, 'not_tls')
    t.same(
      gw.tlsEvents.filter((event) => event.type === 'handshake_failed'),
      [{ type: 'handshake_failed', listener: 'wss', reason: 'not_tls' }],
    )
  },
)

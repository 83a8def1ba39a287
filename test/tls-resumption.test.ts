// TLS session resumption, the cheaper handshake a reconnecting client gets: it must survive a
// certificate reload (a new SecureContext would otherwise bring new ticket keys, and every
// client would pay a full handshake after each rotation), and replicas given the same
// tls.ticketKeys file resume each other's sessions (a client reconnecting after a rolling update
// reaches another replica).
import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import tls from 'node:tls'
import t from 'tap'
import { loadTlsMaterial } from '../src/edge/tls.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway, type LogLine } from './helpers/gateway.js'
import { serialOf, tempDir, testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'

const pki = testPki()
const [A, B] = pki.servers

interface Handshake {
  reused: boolean
  /** The last session ticket the server sent (TLS 1.3 sends them after the handshake). */
  session: Buffer | undefined
}

/**
 * One TLS connection to the wss listener, offering `session`: a plain request (refused, which
 * is fine: it makes the server write, and TLS 1.3 tickets come with its first write), read to
 * the end of the connection.
 */
function handshake(port: number, session?: Buffer): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ca: pki.ca.cert,
      servername: 'localhost',
      ...(session && { session }),
    })
    let reused = false
    let ticket: Buffer | undefined
    socket.once('secureConnect', () => {
      reused = socket.isSessionReused()
      socket.write('GET /mqtt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
    })
    socket.on('session', (s: Buffer) => (ticket = s))
    socket.on('data', () => undefined)
    socket.setTimeout(5_000, () => socket.destroy(new Error('no answer within 5 s')))
    socket.once('error', reject)
    socket.once('close', () => resolve({ reused, session: ticket }))
  })
}

function reloadedTo(serial: string) {
  return (line: LogLine): boolean =>
    line.msg === 'TLS material reloaded' && (line.cert as { serial: string }).serial === serial
}

t.test('a session from before a certificate reload resumes after it', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const files = writeServerFiles(t, pki, 0)
  const gw = await startTestGateway(t, broker.port, tlsEnv(files))
  const first = await handshake(gw.port)
  t.notOk(first.reused, 'the first handshake is a full one')
  t.ok(first.session, 'the server sent a session ticket')
  const second = await handshake(gw.port, first.session)
  t.ok(second.reused, 'resumed before any reload')

  writeFileSync(files.key, B.key)
  writeFileSync(files.cert, B.cert)
  await gw.waitForLog(reloadedTo(serialOf(B)))
  const after = await handshake(gw.port, second.session ?? first.session)
  t.ok(after.reused, 'the ticket issued before the reload is still accepted')
  t.not(serialOf(A), serialOf(B))
})

t.test('replicas sharing tls.ticketKeys resume each other’s sessions', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const files = writeServerFiles(t, pki, 0)
  const dir = tempDir(t)
  const keys = randomBytes(48)
  const raw = join(dir, 'tickets.key')
  const base64 = join(dir, 'tickets.b64')
  writeFileSync(raw, keys)
  writeFileSync(base64, `${keys.toString('base64')}\n`)
  // One replica reads the raw file, the other its base64 form: both must be the same keys.
  const one = await startTestGateway(
    t,
    broker.port,
    tlsEnv(files, { DRAWBRIDGE_TLS_TICKET_KEYS: raw }),
  )
  const two = await startTestGateway(
    t,
    broker.port,
    tlsEnv(files, { DRAWBRIDGE_TLS_TICKET_KEYS: base64 }),
  )
  const own = await startTestGateway(t, broker.port, tlsEnv(files))

  const first = await handshake(one.port)
  t.notOk(first.reused)
  const elsewhere = await handshake(two.port, first.session)
  t.ok(elsewhere.reused, 'the other replica resumed the session')
  const unshared = await handshake(own.port, first.session)
  t.notOk(unshared.reused, 'a gateway with keys of its own does a full handshake')

  // A new key file is read like a new certificate: older tickets stop resuming, new ones do.
  writeFileSync(raw, randomBytes(48))
  await one.waitForLog((line) => line.msg === 'TLS material reloaded')
  const rotated = await handshake(one.port, first.session)
  t.notOk(rotated.reused, 'a ticket made with the old keys is refused after the rotation')
  const again = await handshake(one.port, rotated.session)
  t.ok(again.reused, 'tickets made with the new keys resume')
})

t.test('tls.ticketKeys must hold 48 bytes', async (t) => {
  const files = writeServerFiles(t, pki, 0)
  const dir = tempDir(t)
  const base = { ...files, passphrase: '', minVersion: 'TLSv1.2' as const, ciphers: '' }
  const short = join(dir, 'short.key')
  writeFileSync(short, randomBytes(32))
  t.throws(() => loadTlsMaterial({ ...base, ticketKeys: short }), {
    reason: 'parse',
    message:
      /^tls\.ticketKeys \(.*short\.key\) must hold 48 bytes, raw or in base64.*it holds 32 bytes$/,
  })
  t.throws(() => loadTlsMaterial({ ...base, ticketKeys: join(dir, 'missing.key') }), {
    reason: 'unreadable',
    message: /^tls\.ticketKeys \(.*missing\.key\) cannot be read: ENOENT$/,
  })
  const good = join(dir, 'good.key')
  writeFileSync(good, randomBytes(48))
  t.equal(loadTlsMaterial({ ...base, ticketKeys: good }).ticketKeys?.length, 48)
  t.equal(loadTlsMaterial(base).ticketKeys, undefined, 'none configured: the manager makes them')
})

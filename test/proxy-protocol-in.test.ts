// listen.proxyProtocol behind a real load balancer: HAProxy (send-proxy, send-proxy-v2) in front
// of the WebSocket listener, over ws and over wss (TLS passed through, the gateway terminates).
// A client bound to 127.0.0.9 connects through HAProxy (whose TCP peer is 127.0.0.1) and the
// gateway names 127.0.0.9 as the client. Then what a balancer's peer must not get away with.
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import mqtt, { type MqttClient } from 'mqtt'
import t from 'tap'
import type { ConnectionView } from '../src/admin/connections.js'
import { loadConfig } from '../src/config/load.js'
import { ConfigError } from '../src/errors.js'
import { parseProxyHeader } from '../src/edge/proxy-protocol-in.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway, type LogLine, type TestGateway } from './helpers/gateway.js'
import { HAPROXY, startHaproxy } from './helpers/haproxy.js'
import { tlsEnv, testPki, writeServerFiles } from './helpers/pki.js'
import { upgradeRequest } from './helpers/raw.js'
import { adminGet, scrape, value } from './helpers/scrape.js'
import { skipWithout } from './helpers/tools.js'

const NO_HAPROXY = skipWithout('haproxy', HAPROXY !== undefined, 'Debian package haproxy, .ci/run')
const CLIENT = '127.0.0.9'

const V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex')

function proxyEnv(mode: string, from = '127.0.0.1/32'): Record<string, string> {
  return {
    DRAWBRIDGE_LISTEN_PROXY_PROTOCOL: mode,
    DRAWBRIDGE_LISTEN_PROXY_PROTOCOL_FROM: from,
  }
}

/** MQTT.js from `localAddress` to `url`; resolves on CONNACK. */
function connectFrom(url: string, localAddress: string, ca?: string): Promise<MqttClient> {
  const client = mqtt.connect(url, {
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: 5_000,
    clientId: `pp-${Math.random().toString(16).slice(2, 10)}`,
    ...(ca !== undefined && { ca, rejectUnauthorized: true }),
    wsOptions: { localAddress, ...(ca !== undefined && { ca, rejectUnauthorized: true }) },
  })
  return new Promise((resolve, reject) => {
    client.once('connect', () => resolve(client))
    client.once('error', reject)
    client.once('close', () => reject(new Error('closed before CONNACK')))
  })
}

function opened(line: LogLine): boolean {
  return line.msg === 'connection opened'
}

function dropped(reason: string) {
  return (line: LogLine): boolean =>
    line.msg === 'connection dropped: PROXY protocol' && line.reason === reason
}

async function refusals(gw: TestGateway, listener: string, reason: string): Promise<number> {
  const { samples } = await scrape(gw.adminUrl)
  return (
    samples.get(
      `drawbridge_proxy_protocol_refusals_total{listener="${listener}",reason="${reason}"}`,
    ) ?? 0
  )
}

/** A raw socket from `localAddress` to the gateway; resolves once connected. */
function rawSocket(port: number, localAddress = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', localAddress }, () => resolve(socket))
    socket.once('error', reject)
  })
}

/** Resolves when the gateway ends the socket (destroyed without an answer: no data). */
function closedBy(socket: Socket): Promise<string> {
  return new Promise((resolve) => {
    let data = ''
    socket.on('data', (chunk: Buffer) => (data += chunk.toString('latin1')))
    socket.on('error', () => undefined)
    socket.once('close', () => resolve(data))
  })
}

const pki = testPki()

for (const [scheme, send] of [
  ['ws', 'send-proxy'],
  ['ws', 'send-proxy-v2'],
  ['wss', 'send-proxy'],
  ['wss', 'send-proxy-v2'],
] as const) {
  t.test(
    `${scheme} through HAProxy ${send}: the client is ${CLIENT}`,
    { skip: NO_HAPROXY },
    async (t) => {
      const broker = await startBroker(t, 'aedes')
      const tls = scheme === 'wss' ? tlsEnv(writeServerFiles(t, pki, 0)) : {}
      const mode = send === 'send-proxy' ? 'v1' : 'v2'
      const gw = await startTestGateway(t, broker.port, {
        ...tls,
        ...proxyEnv(mode),
        DRAWBRIDGE_METRICS_PER_CLIENT: 'true',
      })
      const haproxy = await startHaproxy(t, gw.port, send)
      const client = await connectFrom(
        `${scheme}://127.0.0.1:${haproxy.port}/mqtt`,
        CLIENT,
        scheme === 'wss' ? pki.ca.cert : undefined,
      )
      t.teardown(() => client.end(true))
      const line = await gw.waitForLog(opened)
      t.equal(line.client, CLIENT, 'the log line names the client the header carried')
      t.match(line.remote, /^127\.0\.0\.1:\d+$/, 'and the TCP peer, HAProxy')
      if (scheme === 'wss') t.ok(line.tls, 'TLS was terminated by the gateway')
      const list = JSON.parse(
        (await adminGet(gw.adminUrl, '/connections')).body,
      ) as ConnectionView[]
      t.equal(list.length, 1)
      t.equal(list[0]?.clientAddress, CLIENT, '/connections shows the client')
      t.equal(list[0]?.forwardedFor, CLIENT)
      const s = await scrape(gw.adminUrl)
      t.equal(
        value(s, 'drawbridge_client_connections_active', { client: CLIENT }),
        1,
        'per-client metrics count it under the client, not HAProxy',
      )
      t.notOk(
        s.text.includes('drawbridge_client_connections_active{client="127.0.0.1"} 1'),
        'and nothing under the balancer',
      )
    },
  )
}

for (const send of ['send-proxy', 'send-proxy-v2'] as const) {
  t.test(
    `mqtts through HAProxy ${send}: the client is ${CLIENT}`,
    { skip: NO_HAPROXY },
    async (t) => {
      const broker = await startBroker(t, 'aedes')
      const gw = await startTestGateway(t, broker.port, {
        ...tlsEnv(writeServerFiles(t, pki, 0)),
        DRAWBRIDGE_TCP_ENABLED: 'true',
        ...proxyEnv(send === 'send-proxy' ? 'v1' : 'v2'),
      })
      const haproxy = await startHaproxy(t, gw.mqttsPort ?? 0, send)
      const client = mqtt.connect(`mqtts://127.0.0.1:${haproxy.port}`, {
        protocolVersion: 4,
        reconnectPeriod: 0,
        connectTimeout: 5_000,
        ca: pki.ca.cert,
        rejectUnauthorized: true,
        localAddress: CLIENT,
      } as mqtt.IClientOptions)
      t.teardown(() => client.end(true))
      await new Promise((resolve, reject) => {
        client.once('connect', resolve)
        client.once('error', reject)
      })
      const line = await gw.waitForLog(opened)
      t.equal(line.client, CLIENT, 'the log line names the client the header carried')
      t.match(line.remote, /^127\.0\.0\.1:\d+$/, 'and the TCP peer, HAProxy')
      const list = JSON.parse(
        (await adminGet(gw.adminUrl, '/connections')).body,
      ) as ConnectionView[]
      t.equal(list[0]?.clientAddress, CLIENT, '/connections shows the client')
    },
  )
}

t.test(
  'the PROXY header to the broker names the client the balancer named',
  { skip: NO_HAPROXY },
  async (t) => {
    // A broker stand-in that records the first line of each connection: the readiness probe's
    // LOCAL header, and the client's.
    const lines: string[] = []
    const sockets = new Set<Socket>()
    let onLine = (): void => undefined
    const broker = createServer((socket) => {
      sockets.add(socket)
      socket.on('error', () => undefined)
      socket.once('data', (chunk: Buffer) => {
        lines.push(chunk.toString('latin1').split('\r\n')[0] ?? '')
        onLine()
      })
    })
    await new Promise<void>((resolve) => broker.listen(0, '127.0.0.1', resolve))
    t.teardown(() => {
      for (const socket of sockets) socket.destroy()
      broker.close()
    })
    const gw = await startTestGateway(t, (broker.address() as AddressInfo).port, {
      ...proxyEnv('v2'),
      DRAWBRIDGE_UPSTREAM_PROXY_PROTOCOL: 'v1',
    })
    const haproxy = await startHaproxy(t, gw.port, 'send-proxy-v2')
    const client = await rawSocket(haproxy.port, CLIENT)
    const header = `PROXY TCP4 ${CLIENT} 127.0.0.1 ${client.localPort} ${gw.port}`
    const found = new Promise<void>((resolve) => {
      onLine = () => {
        if (lines.includes(header)) resolve()
      }
      onLine()
    })
    client.write(upgradeRequest('/mqtt').join('\r\n') + '\r\n\r\n')
    await found
    t.ok(lines.includes(header), `the broker read ${header}`)
    const closed = closedBy(client)
    client.destroy()
    await closed
    await gw.waitForLog((line) => line.msg === 'connection closed')
  },
)

t.test('a listed peer without a header is dropped and counted', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, proxyEnv('any'))
  const socket = await rawSocket(gw.port)
  const closed = closedBy(socket)
  socket.write(upgradeRequest('/mqtt').join('\r\n') + '\r\n\r\n')
  t.equal(await closed, '', 'no answer: the socket is closed')
  const line = await gw.waitForLog(dropped('missing'))
  t.match(line.remote, /^127\.0\.0\.1:\d+$/, 'logged with the peer')
  t.equal(await refusals(gw, 'ws', 'missing'), 1, 'counted')
})

t.test('a peer not in listen.proxyProtocolFrom is dropped', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, proxyEnv('any', '127.0.0.1/32'))
  const socket = await rawSocket(gw.port, '127.0.0.5')
  const closed = closedBy(socket)
  // A header naming anyone it likes: never read.
  socket.write('PROXY TCP4 203.0.113.7 127.0.0.1 4000 80\r\n')
  await closed
  const line = await gw.waitForLog(dropped('unlisted_peer'))
  t.match(line.remote, /^127\.0\.0\.5:\d+$/)
  t.equal(await refusals(gw, 'ws', 'unlisted_peer'), 1)
})

t.test('a LOCAL header (health check) is served as the peer itself', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, proxyEnv('v2'))
  const socket = await rawSocket(gw.port)
  const local = Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])])
  const answered = new Promise<string>((resolve) => {
    let data = ''
    socket.on('data', (chunk: Buffer) => {
      data += chunk.toString('latin1')
      if (data.includes('\r\n\r\n')) resolve(data)
    })
  })
  socket.on('error', () => undefined)
  // In one write with the request, as a balancer would send them.
  socket.write(
    Buffer.concat([local, Buffer.from(upgradeRequest('/mqtt').join('\r\n') + '\r\n\r\n')]),
  )
  t.match(await answered, /^HTTP\/1\.1 101 /, 'upgraded')
  const line = await gw.waitForLog(opened)
  t.equal(line.client, undefined, 'no client other than the peer')
  t.match(line.remote, /^127\.0\.0\.1:\d+$/)
  const list = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as ConnectionView[]
  t.equal(list[0]?.clientAddress, '127.0.0.1')
  const closed = closedBy(socket)
  socket.end()
  await closed
})

t.test('a header that never completes is dropped at ws.handshakeTimeout', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    ...proxyEnv('v1'),
    DRAWBRIDGE_WS_HANDSHAKE_TIMEOUT: '300ms',
  })
  const socket = await rawSocket(gw.port)
  const closed = closedBy(socket)
  const started = Date.now()
  socket.write('PROXY TCP4 203.0.113.7 ')
  await closed
  t.ok(Date.now() - started >= 250, 'not before the timeout')
  await gw.waitForLog(dropped('timeout'))
  t.equal(await refusals(gw, 'ws', 'timeout'), 1)
})

t.test('malformed and wrong-version headers are refused by the parser', async (t) => {
  t.match(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'), 'v1'), {
    state: 'done',
    header: { command: 'proxy', address: '1.2.3.4', port: 1 },
  })
  t.match(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4'), 'any'), { state: 'incomplete' })
  t.match(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n'), 'v1'), {
    reason: 'malformed',
  })
  t.match(parseProxyHeader(Buffer.from('PROXY ' + 'x'.repeat(120)), 'v1'), { reason: 'malformed' })
  t.match(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'), 'v2'), {
    reason: 'wrong_version',
  })
  t.match(parseProxyHeader(Buffer.from('GET / HTTP/1.1\r\n'), 'any'), { reason: 'missing' })
  const v6 = Buffer.alloc(16 + 36)
  V2_SIGNATURE.copy(v6)
  v6[12] = 0x21
  v6[13] = 0x21
  v6.writeUInt16BE(36, 14)
  Buffer.from('20010db8000000000000000000000007', 'hex').copy(v6, 16)
  v6.writeUInt16BE(4711, 48)
  t.match(parseProxyHeader(v6, 'v2'), {
    state: 'done',
    header: { address: '2001:db8::7', port: 4711 },
    length: 52,
  })
  t.match(parseProxyHeader(v6.subarray(0, 30), 'v2'), { state: 'incomplete' })
  t.match(parseProxyHeader(v6, 'v1'), { reason: 'wrong_version' })
})

t.test('start-up fails naming listen.proxyProtocolFrom when it is empty', async (t) => {
  let error: unknown
  try {
    loadConfig({ profile: 'development', env: { DRAWBRIDGE_LISTEN_PROXY_PROTOCOL: 'any' } })
  } catch (err) {
    error = err
  }
  t.ok(error instanceof ConfigError, 'a ConfigError')
  t.equal((error as ConfigError).key, 'listen.proxyProtocolFrom')
  t.notMatch((error as ConfigError).message, /\n/, 'one line')
})

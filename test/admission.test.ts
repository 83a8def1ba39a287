// The upgrade as a list of steps (src/edge/admission.ts): each step on its own, the runner's
// promise to give back what a refused admission took, and the two defects the old one-method
// upgrade had: an orphaned broker socket when the client half-closed during the broker connect,
// and an exception inside the upgrade becoming an unhandled rejection.
import { once } from 'node:events'
import type { IncomingMessage } from 'node:http'
import net from 'node:net'
import t from 'tap'
import {
  admit,
  brokerConnected,
  Capacity,
  CLIENT_LEFT,
  clientStillThere,
  notShuttingDown,
  routedUpgradeSteps,
  trustedClientCertificate,
  underCapacity,
  validRequest,
  type Admission,
  type RoutedUpgrade,
  type Step,
  type Upgrade,
} from '../src/edge/admission.js'
import { EdgeAuth } from '../src/auth/gate.js'
import { compileOrigins } from '../src/config/origin.js'
import { ClientTable } from '../src/edge/client-limits.js'
import type { RefusalReason } from '../src/edge/refusals.js'
import type { TlsManager } from '../src/edge/tls.js'
import { createMetrics, Metrics } from '../src/metrics.js'
import { BrokerConnector } from '../src/upstream/connector.js'
import { freePort, startSilentBroker } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { rawRequest, upgradeRequest } from './helpers/raw.js'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

/** A loopback TCP server standing in for a broker: it records every socket it accepts. */
async function startRawBroker(t: Teardown): Promise<{ port: number; sockets: net.Socket[] }> {
  const sockets: net.Socket[] = []
  const server = net.createServer((socket) => {
    sockets.push(socket)
    socket.on('error', () => undefined)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    return new Promise((resolve) => server.close(resolve))
  })
  return { port: (server.address() as net.AddressInfo).port, sockets }
}

/** Both ends of a real loopback TCP connection. */
async function socketPair(t: Teardown): Promise<{ near: net.Socket; far: net.Socket }> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const accepted = once(server, 'connection') as Promise<[net.Socket]>
  const near = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
  const [far] = await accepted
  await once(near, 'connect').catch(() => undefined)
  t.teardown(() => {
    near.destroy()
    far.destroy()
    return new Promise((resolve) => server.close(resolve))
  })
  return { near, far }
}

function admission(socket: net.Socket): Admission {
  return { socket, clientAddress: '127.0.0.1', upstream: undefined, onEnd: [], onClose: [] }
}

// validateUpgrade reads only these fields of a request.
function upgradeOf(
  socket: net.Socket,
  req: Pick<IncomingMessage, 'method' | 'url' | 'headers'>,
): Upgrade {
  const http11 = { httpVersion: '1.1', httpVersionMajor: 1, httpVersionMinor: 1, rawHeaders: [] }
  const full = { ...http11, ...req } as unknown as IncomingMessage
  return { ...admission(socket), req: full, protocol: false }
}

t.test(
  'client certificate: a refused verdict is 403, an accepted one or none goes on',
  async (t) => {
    const { far } = await socketPair(t)
    const tlsDetails = { protocol: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256' }
    // The verdict is looked up by socket; this manager answers for one socket only.
    const refusing = {
      verdict: (socket: object) =>
        socket === far
          ? { ok: false, reason: 'expired', detail: 'CERT_HAS_EXPIRED', tls: tlsDetails }
          : undefined,
    } as unknown as TlsManager
    t.equal(trustedClientCertificate(undefined).run(admission(far)), undefined, 'plain ws: no TLS')
    t.match(trustedClientCertificate(refusing).run(admission(far)), {
      status: 403,
      reason: 'client_cert',
      message: 'client certificate refused: expired (CERT_HAS_EXPIRED)',
    })
    const accepting = { verdict: () => ({ ok: true, tls: tlsDetails }) } as unknown as TlsManager
    t.equal(trustedClientCertificate(accepting).run(admission(far)), undefined)
  },
)

t.test('shutting down: 503 once closing', async (t) => {
  const { far } = await socketPair(t)
  let closing = false
  const step = notShuttingDown(() => closing)
  t.equal(step.run(admission(far)), undefined)
  closing = true
  t.match(step.run(admission(far)), { status: 503, reason: 'shutting_down' })
})

t.test('request checks: refuse a wrong path, remember the chosen subprotocol', async (t) => {
  const { far } = await socketPair(t)
  const step = validRequest({
    path: '/mqtt',
    subprotocols: new Set(['mqtt']),
    requireSubprotocol: true,
    allowedOrigins: [],
    requireOrigin: false,
  })
  const headers = {
    host: 'localhost',
    upgrade: 'websocket',
    'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
    'sec-websocket-version': '13',
    'sec-websocket-protocol': 'foo, mqtt',
  }
  t.match(step.run(upgradeOf(far, { method: 'GET', url: '/other', headers })), {
    status: 404,
    reason: 'path',
  })
  const good = upgradeOf(far, { method: 'GET', url: '/mqtt', headers })
  t.equal(step.run(good), undefined)
  t.equal(good.protocol, 'mqtt')
})

t.test('routed upgrades (http.routes): their own list, in order', async (t) => {
  const { far } = await socketPair(t)
  let closing = false
  const steps = routedUpgradeSteps({
    tls: undefined,
    closing: () => closing,
    policy: { allowedOrigins: compileOrigins(['https://app.example']), requireOrigin: false },
  })
  t.same(
    steps.map((step) => step.name),
    [
      'client certificate',
      'shutting down',
      'route takes WebSockets',
      'WebSocket request',
      'origin',
    ],
  )
  // With limits and auth.mode=jwt on, the same two checks as the MQTT endpoint's, in its order.
  const clients = new ClientTable(
    {
      perClientConnections: 1,
      perClientRate: 0,
      perClientBurst: 0,
      ipv6Prefix: 64,
      trackedClients: 10,
    },
    createMetrics({ version: 'test', perClient: false, maxClientSeries: 1, processMetrics: false }),
  )
  t.same(
    routedUpgradeSteps({
      tls: undefined,
      closing: () => false,
      policy: { allowedOrigins: compileOrigins([]), requireOrigin: false },
      clients,
      // Only the list's shape is read here (no keys loaded); routes-limits-auth runs the step.
      auth: Object.create(EdgeAuth.prototype) as EdgeAuth,
    }).map((step) => step.name),
    [
      'client certificate',
      'shutting down',
      'route takes WebSockets',
      'WebSocket request',
      'origin',
      'client limits',
      'token',
    ],
  )
  const route = { prefix: '/app/', target: 'http://web', ws: true, stripPrefix: false, timeout: 1 }
  const routed = (
    headers: Record<string, string>,
    options: { method?: string; ws?: boolean } = {},
  ): RoutedUpgrade => ({
    ...upgradeOf(far, { method: options.method ?? 'GET', url: '/app/live', headers }),
    route: { ...route, ws: options.ws ?? true },
  })
  const verdicts = async (upgrade: RoutedUpgrade): Promise<unknown[]> => {
    const out: unknown[] = []
    for (const step of steps) out.push(await step.run(upgrade))
    return out
  }
  const ok = { host: 'gw.example', upgrade: 'websocket', origin: 'https://app.example' }
  t.same(await verdicts(routed(ok)), [undefined, undefined, undefined, undefined, undefined])
  const [, , noWs] = await verdicts(routed(ok, { ws: false }))
  t.match(noWs, { status: 404, reason: 'path' }, 'ws=false')
  const [, , , post] = await verdicts(routed(ok, { method: 'POST' }))
  t.match(post, { status: 405, reason: 'method' })
  const [, , , h2c] = await verdicts(routed({ ...ok, upgrade: 'h2c' }))
  t.match(h2c, { status: 400, reason: 'malformed' }, 'not a WebSocket upgrade')
  const [, , , , foreign] = await verdicts(routed({ ...ok, origin: 'https://evil.example' }))
  t.match(foreign, { status: 403, reason: 'origin' })
  const same = await verdicts(routed({ ...ok, origin: 'https://gw.example' }))
  t.equal(same[4], undefined, 'a page the gateway served (same origin) is let in')
  closing = true
  t.match((await verdicts(routed(ok)))[1], { status: 503, reason: 'shutting_down' })
})

t.test('capacity: a slot per admission, given back when it ends', async (t) => {
  const { far } = await socketPair(t)
  let open = 1
  const capacity = new Capacity(2, () => open)
  const step = underCapacity(capacity)
  const first = admission(far)
  t.equal(step.run(first), undefined, 'one open + one admitting = 2')
  t.equal(first.onEnd.length, 1, 'the slot is released when the admission ends')
  t.match(step.run(admission(far)), {
    status: 503,
    reason: 'capacity',
    headers: { 'Retry-After': '5' },
  })
  first.onEnd.forEach((release) => release())
  t.equal(step.run(admission(far)), undefined, 'the released slot is usable again')
  open = 2
  t.equal(capacity.reserve(), false, 'open connections count too')
})

t.test(
  'broker connect: an open broker, a refusal (502), a silence (504), a client gone',
  async (t) => {
    const broker = await startRawBroker(t)
    const { far, near } = await socketPair(t)
    const connector = (port: number, connectTimeout = 2_000): BrokerConnector =>
      new BrokerConnector({ brokers: [{ host: '127.0.0.1', port }], connectTimeout })

    const ok = admission(far)
    t.equal(await brokerConnected(connector(broker.port)).run(ok), undefined)
    t.ok(ok.upstream, 'the broker socket is handed on')
    ok.upstream?.socket.destroy()

    t.match(await brokerConnected(connector(await freePort())).run(admission(far)), {
      status: 502,
      reason: 'upstream_refused',
    })
    const silent = await startSilentBroker(t)
    t.match(await brokerConnected(connector(silent, 200)).run(admission(far)), {
      status: 504,
      reason: 'upstream_timeout',
    })

    const leaving = brokerConnected(connector(silent, 5_000)).run(admission(far))
    near.destroy()
    t.equal(await leaving, CLIENT_LEFT, 'a client that closes stops the attempt')
  },
)

t.test('client still there: a half-closed or destroyed client is gone', async (t) => {
  const { far, near } = await socketPair(t)
  const step = clientStillThere()
  t.equal(step.run(admission(far)), undefined)
  near.end()
  await once(far, 'end')
  t.equal(step.run(admission(far)), CLIENT_LEFT, 'half-closed: no longer readable')
  const other = await socketPair(t)
  other.far.destroy()
  t.equal(step.run(admission(other.far)), CLIENT_LEFT, 'destroyed')
})

t.test('admit: runs the steps in order, gives back what a refused admission took', async (t) => {
  const broker = await startRawBroker(t)
  const { far } = await socketPair(t)
  const connector = new BrokerConnector({
    brokers: [{ host: '127.0.0.1', port: broker.port }],
    connectTimeout: 2_000,
  })
  const capacity = new Capacity(1, () => 0)
  const order: string[] = []
  const seen = (name: string): Step<Admission> => ({
    name,
    run: () => void order.push(name),
  })
  const refuseLast: Step<Admission> = {
    name: 'refuse',
    run: () => ({ status: 403, reason: 'origin', message: 'no' }),
  }
  const refused = admission(far)
  let accepted = 0
  const outcome = await admit(
    [seen('a'), underCapacity(capacity), brokerConnected(connector), seen('b'), refuseLast],
    refused,
    () => accepted++,
  )
  t.same(order, ['a', 'b'])
  t.match(outcome, { ok: false, refusal: { status: 403 } })
  t.equal(accepted, 0)
  t.equal(refused.upstream?.socket.destroyed, true, 'the broker socket is destroyed')
  t.equal(capacity.reserve(), true, 'the capacity slot is back')
  capacity.release()
  await once(broker.sockets[0] as net.Socket, 'close')
  t.equal(connector.openSockets, 0, 'no broker socket left open')

  const throwing: Step<Admission> = {
    name: 'throws',
    run: () => {
      throw new Error('boom')
    },
  }
  const thrown = admission(far)
  await t.rejects(
    admit([brokerConnected(connector), throwing], thrown, () => accepted++),
    {
      message: 'boom',
    },
  )
  t.equal(thrown.upstream?.socket.destroyed, true, 'a step that throws leaks no broker socket')

  const ok = await admit([seen('c')], admission(far), () => accepted++)
  t.same(ok, { ok: true })
  t.equal(accepted, 1, 'accept runs once, after the last step')
})

t.test('a client that half-closes during its broker connect is let go at once', async (t) => {
  // The broker never answers, and the gateway would wait 10 s for it: the client's FIN must end
  // the attempt at once (the public listener's sockets allow half-open connections, so nothing
  // else would), and leave no broker socket. Should a connect complete just as the FIN arrives,
  // the clientStillThere step (tested above) lets go of the broker socket instead of ws
  // orphaning it.
  const silent = await startSilentBroker(t)
  const gw = await startTestGateway(t, silent, { DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT: '10s' })
  const client = net.connect(gw.port, '127.0.0.1')
  client.on('error', () => undefined)
  t.teardown(() => client.destroy())
  await once(client, 'connect')
  client.write(`${upgradeRequest('/mqtt').join('\r\n')}\r\n\r\n`)
  client.end()
  const started = Date.now()
  await gw.waitForLog((line) => line.msg === 'client left before its upgrade completed', 5_000)
  t.ok(Date.now() - started < 5_000, 'well before the 10 s connect timeout')
  await gw.gateway.whenBrokerSocketsClosed()
  t.equal(gw.gateway.brokerSocketsOpen, 0, 'no broker socket left open')
  t.equal(gw.gateway.connections.size, 0, 'no connection was made for it')
})

t.test('an exception inside the upgrade is logged, counted and answered 500', async (t) => {
  const broker = await startRawBroker(t)
  // A metrics object that fails to count one refusal: a fault of the gateway's own, in the
  // middle of an upgrade (before the fix, an unhandled rejection and a client left hanging).
  class FaultyMetrics extends Metrics {
    override handshakeRejected(reason: RefusalReason): void {
      if (reason === 'path') throw new Error('counter broke')
      super.handshakeRejected(reason)
    }
  }
  const faulty = new FaultyMetrics({ version: 'test', perClient: false, maxClientSeries: 10 })
  const gw = await startTestGateway(t, broker.port, {}, { metrics: faulty })
  const res = await rawRequest(gw.port, upgradeRequest('/elsewhere'))
  t.equal(res.status, 500)
  t.match(res.body, /internal error/)
  const line = await gw.waitForLog((l) => l.msg === 'upgrade failed')
  t.match(line, { err: { message: 'counter broke' }, path: '/elsewhere' })
  t.match(await faulty.render(), /drawbridge_handshake_rejections_total\{reason="internal"\} 1/)
})

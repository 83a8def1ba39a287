// http.routes with auth.mode=jwt and limits.perClientConnections, real sockets: a real backend
// (node HTTP + a ws WebSocketServer on loopback) behind the gateway. A routed WebSocket upgrade
// needs a token read before the 101 (there is no CONNECT on it), its bearer.<token> subprotocol
// entry never reaches the backend, and it holds one of its client's slots until its tunnel (or
// its failed dial) closes. Plain routed requests need neither. No socket left on either side.
import http from 'node:http'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import WebSocket from 'ws'
import { freePort, startBroker } from './helpers/broker.js'
import { startTestGateway, type TestGateway } from './helpers/gateway.js'
import { AUDIENCE, ISSUER, SECRET, signHs256 } from './helpers/jwt.js'
import { eventually } from './helpers/scrape.js'
import { noRoutedSocketsLeft, startWebBackend } from './helpers/web-backend.js'

type Opened =
  { ws: WebSocket } | { status: number; headers: http.IncomingHttpHeaders; body: string }

/** Opens a WebSocket; resolves with it open, or with the answer it was refused with. */
function openWs(url: string, protocols: string[] = []): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols)
    ws.once('open', () => resolve({ ws }))
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => {
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString(),
        })
        ws.terminate()
      })
    })
    ws.once('error', reject)
  })
}

function opened(answer: Opened): WebSocket {
  if ('ws' in answer) return answer.ws
  throw new Error(`refused ${answer.status}: ${answer.body}`)
}

async function echoOnce(ws: WebSocket, text: string): Promise<string> {
  const reply = new Promise<string>((resolve) =>
    ws.once('message', (data: Buffer) => resolve(data.toString())),
  )
  ws.send(text)
  return reply
}

async function closeWs(ws: WebSocket): Promise<void> {
  const closed = new Promise((resolve) => ws.once('close', resolve))
  ws.close()
  await closed
}

function get(gw: TestGateway, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: gw.port, path, agent: false }, (res) => {
      res.resume()
      res.once('end', () => resolve(res.statusCode ?? 0))
    })
    req.once('error', reject)
  })
}

const secretDir = mkdtempSync(join(tmpdir(), 'drawbridge-routed-'))
t.teardown(() => rmSync(secretDir, { recursive: true, force: true }))
const secretFile = join(secretDir, 'jwt.secret')
writeFileSync(secretFile, `${SECRET}\n`)
const jwt = (extra: Record<string, string> = {}): Record<string, string> => ({
  DRAWBRIDGE_AUTH_MODE: 'jwt',
  DRAWBRIDGE_AUTH_SECRET_FILE: secretFile,
  DRAWBRIDGE_AUTH_ALGORITHMS: 'HS256',
  DRAWBRIDGE_AUTH_ISSUER: ISSUER,
  DRAWBRIDGE_AUTH_AUDIENCE: AUDIENCE,
  ...extra,
})

const broker = await startBroker(t, 'aedes')
const backend = await startWebBackend(t)
const closedPort = await freePort()
const routes = JSON.stringify([
  { prefix: '/app/', target: backend.origin, ws: true },
  { prefix: '/down/', target: `http://127.0.0.1:${closedPort}`, ws: true },
])
// auth.tokenFrom at its default: header, subprotocol, query, cookie and password.
const authed = await startTestGateway(t, broker.port, jwt({ DRAWBRIDGE_HTTP_ROUTES: routes }))
const passwordOnly = await startTestGateway(
  t,
  broker.port,
  jwt({ DRAWBRIDGE_HTTP_ROUTES: routes, DRAWBRIDGE_AUTH_TOKEN_FROM: 'password' }),
)
const limited = await startTestGateway(t, broker.port, {
  DRAWBRIDGE_HTTP_ROUTES: routes,
  DRAWBRIDGE_LIMITS_PER_CLIENT_CONNECTIONS: '1',
})
const url = (gw: TestGateway, path: string): string => `ws://127.0.0.1:${gw.port}${path}`

t.afterEach(async () => {
  await backend.whenIdle()
  await noRoutedSocketsLeft([authed, passwordOnly, limited])
})

t.test(
  'auth.mode=jwt: a routed upgrade without a token is 401, the backend never dialled',
  async (t) => {
    const seenBefore = backend.seen.length
    const answer = await openWs(url(authed, '/app/live'))
    t.match(answer, { status: 401 }, 'refused')
    t.equal(
      'headers' in answer ? answer.headers['www-authenticate'] : undefined,
      'Bearer realm="drawbridge"',
      'the Bearer challenge, as on the MQTT endpoint',
    )
    t.equal(backend.seen.length, seenBefore, 'the backend saw no request')
    t.ok(
      authed.logs.some((l) => l.msg === 'token refused' && String(l.detail).includes('routed')),
      'logged as a routed upgrade without a token',
    )
  },
)

t.test('a good token in the query reaches the backend, the parameter left for it', async (t) => {
  const token = await signHs256('alice')
  const ws = opened(await openWs(url(authed, `/app/live?access_token=${token}`)))
  t.equal(await echoOnce(ws, 'hello'), 'hello', 'the backend echo answered')
  await closeWs(ws)
  const seen = backend.seen.at(-1)
  t.equal(seen?.url, `/app/live?access_token=${token}`, 'the query reached the backend unchanged')
})

t.test('a bad token is 401 invalid_token', async (t) => {
  const seenBefore = backend.seen.length
  const token = await signHs256('mallory', { issuer: 'https://elsewhere.test' })
  const answer = await openWs(url(authed, `/app/live?access_token=${token}`))
  t.match(answer, { status: 401 })
  t.match(
    'headers' in answer ? answer.headers['www-authenticate'] : undefined,
    /^Bearer error="invalid_token"/,
  )
  t.equal(backend.seen.length, seenBefore, 'the backend saw no request')
})

t.test('a bearer.<token> subprotocol lets in, and is not passed on to the backend', async (t) => {
  const token = await signHs256('alice')
  const ws = opened(await openWs(url(authed, '/app/live'), ['app', `bearer.${token}`]))
  t.equal(ws.protocol, 'app', "the backend chose the app's own subprotocol")
  t.equal(await echoOnce(ws, 'sub'), 'sub')
  await closeWs(ws)
  t.equal(backend.seen.at(-1)?.headers['sec-websocket-protocol'], 'app', 'token entry taken out')
})

t.test('auth.tokenFrom=password only: a routed upgrade has no token to show, 401', async (t) => {
  const token = await signHs256('alice')
  const seenBefore = backend.seen.length
  const answer = await openWs(url(passwordOnly, `/app/live?access_token=${token}`))
  t.match(answer, { status: 401 }, 'the query is not a source here, and there is no CONNECT')
  t.equal(
    'headers' in answer ? answer.headers['www-authenticate'] : undefined,
    'Bearer realm="drawbridge"',
  )
  t.equal(backend.seen.length, seenBefore, 'the backend saw no request')
})

t.test('plain routed requests need no token: they are the web app pages', async (t) => {
  t.equal(await get(authed, '/app/index.html'), 200, 'no token, answered by the backend')
  t.equal(await get(passwordOnly, '/app/index.html'), 200)
})

t.test(
  'limits.perClientConnections=1: a routed tunnel holds the slot until it closes',
  async (t) => {
    const first = opened(await openWs(url(limited, '/app/one')))
    t.equal(await echoOnce(first, 'one'), 'one')
    const second = await openWs(url(limited, '/app/two'))
    t.match(second, { status: 429 }, 'a second tunnel from the same address')
    await closeWs(first)
    t.ok(
      await eventually(async () => limited.gateway.routedSocketsOpen.tunnels === 0, 3_000),
      'the tunnel is gone on the gateway side',
    )
    const third = opened(await openWs(url(limited, '/app/three')))
    t.equal(await echoOnce(third, 'three'), 'three', 'let in once the first closed')
    // Given back once only: with the third open, the client is at its limit again.
    t.match(await openWs(url(limited, '/app/four')), { status: 429 }, 'still one slot, not two')
    await closeWs(third)
  },
)

t.test('a failed routed upgrade gives its slot back', async (t) => {
  t.match(await openWs(url(limited, '/down/x')), { status: 502 }, 'the backend is down')
  t.match(await openWs(url(limited, '/app/refuse')), { status: 403 }, 'the backend refused it')
  // The slots come back when the client sockets close, which follows the answers.
  let ws: WebSocket | undefined
  t.ok(
    await eventually(async () => {
      const answer = await openWs(url(limited, '/app/after'))
      if ('ws' in answer) ws = answer.ws
      return ws !== undefined
    }, 3_000),
    'a new tunnel is let in',
  )
  if (ws !== undefined) {
    t.equal(await echoOnce(ws, 'after'), 'after')
    await closeWs(ws)
  }
})

t.test('a routed upgrade counts against the same client as its MQTT connections', async (t) => {
  const tunnel = opened(await openWs(url(limited, '/app/mqtt-too')))
  t.match(await openWs(url(limited, '/mqtt'), ['mqtt']), { status: 429 }, 'the MQTT endpoint too')
  await closeWs(tunnel)
})

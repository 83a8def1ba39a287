// auth.mode=jwt end to end, over real sockets: a JWK Set served over HTTPS on loopback (the
// test CA), tokens signed by jose with ES256, RS256 and HS256. Every bad token is answered as
// the README's table says (status and WWW-Authenticate before the 101, or a refusing CONNACK
// then 1008 for a password), counted by reason; good tokens by each route reach the broker
// with the claimed username; a session ends at its token's exp; the JWK Set is refetched for an
// unknown kid (at most every auth.jwksRefetchInterval) and its cache outlives the endpoint.
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import net from 'node:net'
import { join } from 'node:path'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import mqttPacket, { type Packet } from 'mqtt-packet'
import t from 'tap'
import { WebSocket } from 'ws'
import { loadConfig } from '../src/config/load.js'
import { ConfigError } from '../src/errors.js'
import { startAclMosquitto } from './helpers/acl-mosquitto.js'
import { MOSQUITTO, startBroker } from './helpers/broker.js'
import { startTestGateway, type TestGateway } from './helpers/gateway.js'
import {
  AUDIENCE,
  ISSUER,
  signHs256,
  signingKey,
  signWith,
  startJwksServer,
  unsignedToken,
  writeAuthFiles,
  type JwksServer,
} from './helpers/jwt.js'
import { tempDir, testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { rawRequest, upgradeRequest } from './helpers/raw.js'
import { adminGet, scrape, value } from './helpers/scrape.js'
import { scriptedBroker } from './helpers/scripted-broker.js'
import { skipWithout } from './helpers/tools.js'
import { connectPacket, encode, openRawClient } from './helpers/wsmqtt.js'

const pki = testPki()
const es = await signingKey('es-1', 'ES256')
const rs = await signingKey('rs-1', 'RS256')
const rotated = await signingKey('es-2', 'ES256')
const stranger = await signingKey('es-1', 'ES256') // same kid, another key: a forged signature

interface Teardown {
  teardown: (fn: () => unknown) => void
}

async function authGateway(
  t: Teardown,
  brokerPort: number,
  jwks: JwksServer | string,
  env: Record<string, string> = {},
): Promise<TestGateway> {
  const files = writeAuthFiles(tempDir(t, 'drawbridge-auth-'), pki)
  return startTestGateway(t, brokerPort, {
    DRAWBRIDGE_AUTH_MODE: 'jwt',
    DRAWBRIDGE_AUTH_JWKS_URL: typeof jwks === 'string' ? jwks : jwks.url,
    DRAWBRIDGE_AUTH_JWKS_CA: files.ca,
    DRAWBRIDGE_AUTH_SECRET_FILE: files.secret,
    DRAWBRIDGE_AUTH_ALGORITHMS: 'ES256,RS256,HS256',
    DRAWBRIDGE_AUTH_ISSUER: ISSUER,
    DRAWBRIDGE_AUTH_AUDIENCE: AUDIENCE,
    DRAWBRIDGE_AUTH_CLOCK_TOLERANCE: '0',
    ...env,
  })
}

function connect(url: string, options: IClientOptions): Promise<MqttClient> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5_000, ...options })
  return new Promise((resolve, reject) => {
    client.once('connect', () => resolve(client))
    client.once('error', (err) => {
      client.end(true)
      reject(err)
    })
    client.once('close', () => reject(new Error('closed before CONNACK')))
  })
}

/** A TCP server that counts the connections and bytes it gets, and answers nothing. */
async function recordingBroker(
  t: Teardown,
): Promise<{ port: number; readonly connections: number; readonly bytes: number }> {
  let connections = 0
  let bytes = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    connections++
    sockets.add(socket)
    socket.on('data', (chunk: Buffer) => (bytes += chunk.length))
    socket.on('error', () => undefined)
    socket.on('end', () => socket.end())
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  return {
    port: (server.address() as net.AddressInfo).port,
    get connections() {
      return connections
    },
    get bytes() {
      return bytes
    },
  }
}

// ---- start-up --------------------------------------------------------------------------------

t.test('start-up refuses auth settings that cannot work, naming the key', (t) => {
  const base = {
    DRAWBRIDGE_UPSTREAM_BROKERS: '127.0.0.1:1883',
    DRAWBRIDGE_AUTH_MODE: 'jwt',
    DRAWBRIDGE_AUTH_KEYS: '/nonexistent/key.pem',
    DRAWBRIDGE_TLS_ENABLED: 'false',
  }
  const cases: [string, Record<string, string>, string, RegExp][] = [
    ['alg none', { DRAWBRIDGE_AUTH_ALGORITHMS: 'ES256,none' }, 'auth.algorithms', /none/],
    ['unknown alg', { DRAWBRIDGE_AUTH_ALGORITHMS: 'XS256' }, 'auth.algorithms', /XS256/],
    [
      'password without mqtt.inspect',
      { DRAWBRIDGE_MQTT_INSPECT: 'false', DRAWBRIDGE_AUTH_USERNAME_CLAIM: '' },
      'auth.tokenFrom',
      /mqtt\.inspect/,
    ],
    [
      'username claim without mqtt.inspect',
      { DRAWBRIDGE_MQTT_INSPECT: 'false', DRAWBRIDGE_AUTH_TOKEN_FROM: 'header' },
      'auth.usernameClaim',
      /mqtt\.inspect/,
    ],
    ['no key', { DRAWBRIDGE_AUTH_KEYS: '' }, 'auth.jwksUrl', /needs a key/],
    ['http JWKS', { DRAWBRIDGE_AUTH_JWKS_URL: 'http://keys.test/jwks' }, 'auth.jwksUrl', /https/],
    ['bad source', { DRAWBRIDGE_AUTH_TOKEN_FROM: 'header,body' }, 'auth.tokenFrom', /body/],
    [
      'secret without HS',
      { DRAWBRIDGE_AUTH_SECRET_FILE: '/s', DRAWBRIDGE_AUTH_ALGORITHMS: 'ES256' },
      'auth.algorithms',
      /HS256/,
    ],
  ]
  for (const [name, env, key, reason] of cases) {
    let thrown: unknown
    try {
      loadConfig({ profile: 'production', env: { ...base, ...env } })
    } catch (err) {
      thrown = err
    }
    t.ok(
      thrown instanceof ConfigError && thrown.key === key && reason.test(thrown.message),
      `${name}: ${String(thrown)}`,
    )
  }
  const { config } = loadConfig({ profile: 'production', env: base })
  t.same(config.auth.tokenFrom, ['header', 'subprotocol', 'query', 'cookie', 'password'])
  t.equal(config.auth.clockTolerance, 30_000, 'clockTolerance defaults to 30 s')
  t.equal(config.auth.maxTokenSize, 8192, 'maxTokenSize defaults to 8 KiB')
  t.end()
})

// ---- refused before the 101 ------------------------------------------------------------------

t.test('every bad token in the request is refused before the 101, counted by reason', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const jwks = await startJwksServer(t, pki, [es.publicJwk, rs.publicJwk])
  const gw = await authGateway(t, broker.port, jwks, {
    DRAWBRIDGE_AUTH_TOKEN_FROM: 'header,query,cookie,subprotocol',
  })
  const ps = await signingKey('rs-1', 'PS256')
  const huge = await signWith(es, 'alice', { claims: { pad: 'x'.repeat(16 * 1024) } })
  const cases: {
    name: string
    token: string
    where?: 'header' | 'query' | 'cookie' | 'subprotocol'
    status: number
    reason: string
    description?: RegExp
  }[] = [
    {
      name: 'expired',
      token: await signWith(es, 'a', { expiresIn: -60 }),
      status: 401,
      reason: 'expired',
      description: /token expired/,
    },
    {
      name: 'not yet valid',
      token: await signWith(es, 'a', { notBefore: 600 }),
      status: 401,
      reason: 'not_yet_valid',
      description: /not yet valid/,
    },
    {
      name: 'wrong issuer',
      token: await signWith(rs, 'a', { issuer: 'https://evil.test' }),
      status: 401,
      reason: 'issuer',
      description: /issuer/,
    },
    {
      name: 'wrong audience',
      token: await signWith(es, 'a', { audience: 'other' }),
      status: 401,
      reason: 'audience',
      description: /audience/,
    },
    {
      name: 'bad signature',
      token: await signWith(stranger, 'a'),
      status: 401,
      reason: 'signature',
      description: /signature invalid/,
    },
    {
      name: 'alg none',
      token: unsignedToken('a'),
      status: 401,
      reason: 'algorithm',
      description: /algorithm not allowed/,
    },
    {
      name: 'alg not allowed (PS256)',
      token: await signWith(ps, 'a'),
      status: 401,
      reason: 'algorithm',
      description: /algorithm not allowed/,
    },
    {
      name: 'malformed',
      token: 'not-a.jwt',
      status: 401,
      reason: 'malformed',
      description: /not a JWT/,
    },
    {
      name: 'no exp',
      token: await signWith(es, 'a', { noExp: true }),
      status: 401,
      reason: 'claim',
      description: /exp/,
    },
    {
      name: 'unknown kid',
      token: await signWith(rotated, 'a'),
      status: 401,
      reason: 'unknown_key',
      description: /no key with kid es-2/,
    },
    { name: '16 KiB in the header', token: huge, status: 431, reason: 'too_large' },
    { name: '16 KiB in the query', token: huge, where: 'query', status: 414, reason: 'too_large' },
    {
      name: '16 KiB in the cookie',
      token: huge,
      where: 'cookie',
      status: 431,
      reason: 'too_large',
    },
    {
      name: 'expired, in the query',
      token: await signWith(es, 'a', { expiresIn: -60 }),
      where: 'query',
      status: 401,
      reason: 'expired',
      description: /token expired/,
    },
    {
      name: 'expired, in the cookie',
      token: await signWith(es, 'a', { expiresIn: -60 }),
      where: 'cookie',
      status: 401,
      reason: 'expired',
      description: /token expired/,
    },
    {
      name: 'bad signature, as subprotocol',
      token: await signWith(stranger, 'a'),
      where: 'subprotocol',
      status: 401,
      reason: 'signature',
      description: /signature invalid/,
    },
  ]
  for (const c of cases) {
    const where = c.where ?? 'header'
    const path = where === 'query' ? `/mqtt?access_token=${c.token}` : '/mqtt'
    const res = await rawRequest(
      gw.port,
      upgradeRequest(path, {
        ...(where === 'header' && { Authorization: `Bearer ${c.token}` }),
        ...(where === 'cookie' && { Cookie: `theme=dark; access_token=${c.token}` }),
        ...(where === 'subprotocol' && { 'Sec-WebSocket-Protocol': `mqtt, bearer.${c.token}` }),
      }),
    )
    t.equal(res.status, c.status, `${c.name}: ${res.status} ${res.body.trim()}`)
    const challenge = res.headers['www-authenticate'] ?? ''
    if (c.description) {
      t.match(
        challenge,
        /^Bearer error="invalid_token", error_description="/,
        `${c.name}: challenge`,
      )
      t.match(challenge, c.description, `${c.name}: error_description says why`)
    }
  }
  const none = await rawRequest(gw.port, upgradeRequest('/mqtt'))
  t.equal(none.status, 401, 'no token at all (password not among the sources): 401')
  t.equal(none.headers['www-authenticate'], 'Bearer realm="drawbridge"')

  const metrics = await scrape(gw.adminUrl)
  const count = (reason: string): number | undefined =>
    value(metrics, 'drawbridge_auth_refusals_total', { reason })
  const expected = new Map<string, number>()
  for (const c of cases) expected.set(c.reason, (expected.get(c.reason) ?? 0) + 1)
  expected.set('missing', 1)
  for (const [reason, n] of expected)
    t.equal(count(reason), n, `${n} refusals counted as ${reason}`)
  t.equal(count('client_id'), 0, 'reasons that did not happen are 0')
  t.equal(
    value(metrics, 'drawbridge_handshake_rejections_total', { reason: 'auth' }),
    cases.length + 1,
    'each is a handshake rejection with reason auth too',
  )
  const logs = JSON.stringify(gw.logs)
  for (const c of cases) {
    if (c.token.length > 20) t.notOk(logs.includes(c.token), `${c.name}: the token is never logged`)
  }
  const refusal = gw.logs.find(
    (line) => line.msg === 'token refused' && line.reason === 'unknown_key',
  )
  t.equal(refusal?.kid, 'es-2', 'the refusal log line names the kid')
})

// ---- good tokens by each route ---------------------------------------------------------------

t.test(
  'a good token by each route connects; Mosquitto sees the claimed username',
  { skip: skipWithout('mosquitto', MOSQUITTO !== undefined, '.ci/run installs mosquitto') },
  async (t) => {
    const broker = await startAclMosquitto(t)
    const jwks = await startJwksServer(t, pki, [es.publicJwk, rs.publicJwk])
    const gw = await authGateway(t, broker.port, jwks)
    const routes: {
      name: string
      sign: (sub: string) => Promise<string>
      options: (token: string) => IClientOptions & { url?: string }
      protocolVersion?: 4 | 5
    }[] = [
      {
        name: 'header-es256',
        sign: (sub) => signWith(es, sub),
        options: (token) => ({ wsOptions: { headers: { Authorization: `Bearer ${token}` } } }),
      },
      {
        name: 'subprotocol-rs256',
        sign: (sub) => signWith(rs, sub),
        options: (token) => ({
          createWebsocket: (url: string, protocols: string[]) =>
            new WebSocket(url, [...protocols, `bearer.${token}`]),
        }),
      },
      {
        name: 'query-hs256',
        sign: (sub) => signHs256(sub),
        options: (token) => ({ url: `${gw.url}?access_token=${token}` }),
      },
      {
        name: 'cookie-es256',
        sign: (sub) => signWith(es, sub),
        options: (token) => ({ wsOptions: { headers: { Cookie: `a=b; access_token=${token}` } } }),
      },
      {
        name: 'password-rs256',
        sign: (sub) => signWith(rs, sub),
        options: (token) => ({ password: token }),
      },
      {
        name: 'password-es256-v5',
        sign: (sub) => signWith(es, sub),
        options: (token) => ({ password: token }),
        protocolVersion: 5,
      },
    ]
    const tokens: string[] = []
    for (const route of routes) {
      const sub = `user-${route.name}`
      const token = await route.sign(sub)
      tokens.push(token)
      const { url, ...options } = route.options(token)
      const client = await connect(url ?? gw.url, {
        clientId: route.name,
        username: 'mallory', // what the client says; the token decides
        protocolVersion: route.protocolVersion ?? 4,
        ...options,
      })
      t.equal(await broker.usernameOf(route.name), sub, `${route.name}: Mosquitto sees ${sub}`)
      const connections = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as {
        token: { source: string; sub: string } | null
        mqtt: { clientId: string; username: string } | null
      }[]
      const listed = connections.find((c) => c.mqtt?.clientId === route.name)
      t.equal(listed?.token?.sub, sub, `${route.name}: /connections names the sub`)
      t.equal(listed?.mqtt?.username, sub, `${route.name}: /connections shows the username used`)
      await client.endAsync()
    }
    const everything = JSON.stringify(gw.logs) + (await adminGet(gw.adminUrl, '/connections')).body
    t.notOk(
      tokens.some((token) => everything.includes(token)),
      'no token in any log line or /connections',
    )
  },
)

// ---- the CONNECT password ----------------------------------------------------------------------

t.test(
  'a failed CONNECT password: CONNACK 5 / 0x86 / 0x87, then 1008; never forwarded',
  async (t) => {
    const broker = await recordingBroker(t)
    const jwks = await startJwksServer(t, pki, [es.publicJwk])
    const gw = await authGateway(t, broker.port, jwks)
    const cases: {
      name: string
      password: string | undefined
      level: 4 | 5
      code: number
      reason: string
    }[] = [
      {
        name: 'bad signature, 3.1.1',
        password: await signWith(stranger, 'a'),
        level: 4,
        code: 5,
        reason: 'signature',
      },
      {
        name: 'expired, 3.1.1',
        password: await signWith(es, 'a', { expiresIn: -60 }),
        level: 4,
        code: 5,
        reason: 'expired',
      },
      {
        name: 'bad signature, 5',
        password: await signWith(stranger, 'a'),
        level: 5,
        code: 0x86,
        reason: 'signature',
      },
      { name: 'malformed, 5', password: 'hunter2', level: 5, code: 0x86, reason: 'malformed' },
      { name: 'no password, 5', password: undefined, level: 5, code: 0x86, reason: 'missing' },
      {
        name: 'expired, 5',
        password: await signWith(es, 'a', { expiresIn: -60 }),
        level: 5,
        code: 0x87,
        reason: 'expired',
      },
      {
        name: 'wrong audience, 5',
        password: await signWith(es, 'a', { audience: 'x' }),
        level: 5,
        code: 0x87,
        reason: 'audience',
      },
    ]
    for (const c of cases) {
      const client = await openRawClient(t, gw.url, 'mqtt', { protocolVersion: c.level })
      client.ws.send(
        connectPacket(`pw-${c.name}`, {
          protocolVersion: c.level,
          username: 'someone',
          ...(c.password !== undefined && { password: Buffer.from(c.password) }),
        }),
      )
      // Sent while the password is checked: held, and dropped with the CONNECT.
      const publish = { cmd: 'publish', topic: 't', payload: Buffer.from('x') } as const
      client.ws.send(encode({ ...publish, qos: 0, retain: false, dup: false }))
      const connack = (await client.next('connack')) as { returnCode?: number; reasonCode?: number }
      t.equal(
        c.level === 5 ? connack.reasonCode : connack.returnCode,
        c.code,
        `${c.name}: CONNACK ${c.code}`,
      )
      const closed = await client.closed
      t.equal(closed.code, 1008, `${c.name}: then 1008 (${closed.reason})`)
    }
    // Readiness probes connect too: at least one per client.
    t.ok(broker.connections >= cases.length, 'the broker was dialled for each (upgrade mode)')
    t.equal(broker.bytes, 0, 'not one byte of a refused CONNECT reached the broker')
    const metrics = await scrape(gw.adminUrl)
    t.equal(value(metrics, 'drawbridge_auth_refusals_total', { reason: 'signature' }), 2)
    t.equal(value(metrics, 'drawbridge_auth_refusals_total', { reason: 'missing' }), 1)
  },
)

t.test('MQTT.js v5 sees reason codes 0x86 and 0x87 for a refused password', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const jwks = await startJwksServer(t, pki, [es.publicJwk])
  const gw = await authGateway(t, broker.port, jwks)
  for (const [password, code] of [
    [await signWith(stranger, 'a'), 0x86],
    [await signWith(es, 'a', { expiresIn: -60 }), 0x87],
  ] as const) {
    const err = await connect(gw.url, { protocolVersion: 5, username: 'u', password }).then(
      (client) => {
        client.end(true)
        return undefined
      },
      (e: unknown) => e as { code?: number },
    )
    t.equal(err?.code, code, `MQTT.js error code ${code.toString(16)}`)
  }
  const err = await connect(gw.url, { username: 'u', password: 'nope' }).then(
    (client) => {
      client.end(true)
      return undefined
    },
    (e: unknown) => e as { code?: number },
  )
  t.equal(err?.code, 5, 'MQTT.js 3.1.1: return code 5 (not authorized)')
})

t.test(
  'auth.clientIdPrefixClaim: another client id gets CONNACK 0x02 / 0x85, then 1008',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const jwks = await startJwksServer(t, pki, [es.publicJwk])
    const gw = await authGateway(t, broker.port, jwks, {
      DRAWBRIDGE_AUTH_CLIENT_ID_PREFIX_CLAIM: 'cid',
    })
    const token = await signWith(es, 'alice', { claims: { cid: 'alice-' } })
    const headers = { Authorization: `Bearer ${token}` }
    for (const level of [4, 5] as const) {
      const ws = new WebSocket(gw.url, ['mqtt'], { headers })
      t.teardown(() => ws.terminate())
      const closed = once(ws, 'close')
      await once(ws, 'open')
      const answer = once(ws, 'message')
      ws.send(connectPacket('bob-1', { protocolVersion: level }))
      const [connack] = (await answer) as [Buffer]
      t.equal(connack[3], level === 5 ? 0x85 : 0x02, `level ${level}: CONNACK ${connack[3]}`)
      const [code] = (await closed) as [number]
      t.equal(code, 1008, `level ${level}: then 1008`)
    }
    const good = await connect(gw.url, { clientId: 'alice-phone', wsOptions: { headers } })
    t.ok(good.connected, 'a client id with the prefix connects')
    await good.endAsync()
    const metrics = await scrape(gw.adminUrl)
    t.equal(value(metrics, 'drawbridge_auth_refusals_total', { reason: 'client_id' }), 2)
  },
)

// ---- during the session ------------------------------------------------------------------------

t.test(
  'a session ends at its token exp: MQTT 5 DISCONNECT 0x87 "token expired", then 1008',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const jwks = await startJwksServer(t, pki, [es.publicJwk])
    const gw = await authGateway(t, broker.port, jwks)
    const mosquittoLess = await connect(gw.url, {
      clientId: 'short-lived-311',
      wsOptions: {
        headers: { Authorization: `Bearer ${await signWith(es, 'a', { expiresIn: 2 })}` },
      },
    })
    const closed311 = new Promise<void>((resolve) => mosquittoLess.once('close', () => resolve()))
    // Aedes speaks 3.1.1: for MQTT 5 a raw client, answered by a scripted broker.
    const scripted = await scriptedBroker(t)
    const gw5 = await authGateway(t, scripted.port, jwks)
    const token = await signWith(es, 'b', { expiresIn: 2 })
    const started = Date.now()
    const ws = new WebSocket(gw5.url, ['mqtt'], { headers: { Authorization: `Bearer ${token}` } })
    t.teardown(() => ws.terminate())
    const messages: Buffer[] = []
    ws.on('message', (data: Buffer) => messages.push(data))
    const closed = once(ws, 'close')
    await once(ws, 'open')
    ws.send(connectPacket('short-lived-5', { protocolVersion: 5 }))
    const [code, reason] = (await closed) as [number, Buffer]
    const disconnect = messages.find((m) => m[0] === 0xe0)
    t.ok(disconnect, 'a DISCONNECT came before the close')
    t.equal(disconnect?.[2], 0x87, 'reason code 0x87 Not authorized')
    t.ok(disconnect?.includes(Buffer.from('token expired')), 'Reason String "token expired"')
    t.equal(code, 1008)
    t.equal(reason.toString(), 'token expired')
    t.ok(Date.now() - started < 5_000, `closed ${Date.now() - started} ms after connecting`)
    await closed311
    t.pass('the 3.1.1 session (no DISCONNECT at that level) is closed too')
    const line = await gw5.waitForLog((l) => l.msg === 'token expired; closing its session')
    t.equal(line.sub, 'b', 'the log line names the sub')
  },
)

// ---- the keys ----------------------------------------------------------------------------------

/** The status an upgrade with `token` in its Authorization header is answered with. */
function upgradeStatus(port: number, token: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let data = ''
    socket.on('data', (chunk: Buffer) => {
      data += chunk.toString('latin1')
      if (!data.includes('\r\n\r\n')) return
      socket.destroy()
      resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0))
    })
    socket.on('error', reject)
    socket.on('close', () => reject(new Error(`closed without a status: ${JSON.stringify(data)}`)))
    const lines = upgradeRequest('/mqtt', { Authorization: `Bearer ${token}` })
    socket.write(`${lines.join('\r\n')}\r\n\r\n`)
  })
}

t.test('an unknown kid fetches the JWK Set again: a rotated-in key works at once', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const jwks = await startJwksServer(t, pki, [es.publicJwk])
  const gw = await authGateway(t, broker.port, jwks, {
    DRAWBRIDGE_AUTH_JWKS_REFETCH_INTERVAL: '0',
  })
  const token = await signWith(rotated, 'rotating')
  t.equal(await upgradeStatus(gw.port, token), 401, 'kid es-2 not published yet: 401')
  const fetchesBefore = jwks.fetches
  jwks.keys = [es.publicJwk, rotated.publicJwk]
  t.equal(await upgradeStatus(gw.port, token), 101, 'published: the next upgrade refetches, 101')
  t.equal(jwks.fetches, fetchesBefore + 1, 'one fetch for it')
  t.equal(await upgradeStatus(gw.port, token), 101, 'then served from the cache')
  t.equal(jwks.fetches, fetchesBefore + 1, 'no fetch for a known kid')
})

t.test('unknown kids refetch at most every auth.jwksRefetchInterval', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const jwks = await startJwksServer(t, pki, [es.publicJwk])
  const gw = await authGateway(t, broker.port, jwks) // the default 30 s
  t.equal(jwks.fetches, 1, 'fetched once at start')
  for (let i = 0; i < 5; i++) {
    t.equal(
      await upgradeStatus(gw.port, await signWith(rotated, `u${i}`, { kid: `made-up-${i}` })),
      401,
    )
  }
  t.equal(jwks.fetches, 1, 'five made-up kids within 30 s of the last fetch: no fetch')
  t.equal(await upgradeStatus(gw.port, await signWith(es, 'known')), 101, 'known keys still work')
})

t.test(
  'JWK Set endpoint down: cached keys go on working; with none ever fetched, 503',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const jwks = await startJwksServer(t, pki, [es.publicJwk])
    const gw = await authGateway(t, broker.port, jwks, {
      DRAWBRIDGE_AUTH_JWKS_REFETCH_INTERVAL: '0',
    })
    await jwks.stop()
    t.equal(await upgradeStatus(gw.port, await signWith(es, 'cached')), 101, 'cached key: 101')
    t.equal(
      await upgradeStatus(gw.port, await signWith(rotated, 'new')),
      401,
      'an unknown kid while it is down: 401 (the fetch failed, the cache has no such key)',
    )
    await gw.waitForLog((l) => l.msg === 'token key set fetch failed; using the cached keys')

    const cold = await authGateway(t, broker.port, jwks.url, {
      DRAWBRIDGE_AUTH_JWKS_REFETCH_INTERVAL: '0',
    })
    const res = await rawRequest(
      cold.port,
      upgradeRequest('/mqtt', { Authorization: `Bearer ${await signWith(es, 'cold')}` }),
    )
    t.equal(res.status, 503, 'no key at all: 503 before the 101')
    t.equal(res.headers['retry-after'], '5')
    t.match(res.body, /could not be fetched/)
    // The same through the password: CONNACK Server unavailable, then 1013.
    const client = await openRawClient(t, cold.url)
    client.ws.send(
      connectPacket('cold-pw', { username: 'u', password: Buffer.from(await signWith(es, 'x')) }),
    )
    const connack = (await client.next('connack')) as { returnCode?: number }
    t.equal(connack.returnCode, 3, 'a password token with no keys: CONNACK 3 Server unavailable')
    t.equal((await client.closed).code, 1013, 'then 1013 try again later')
    const metrics = await scrape(cold.adminUrl)
    t.equal(value(metrics, 'drawbridge_auth_refusals_total', { reason: 'keys_unavailable' }), 2)
  },
)

t.test('auth.keys files: PEM and JWK Set, reloaded on SIGHUP and on file change', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const dir = tempDir(t, 'drawbridge-keys-')
  const pem = join(dir, 'es.pem')
  const set = join(dir, 'keys.json')
  writeFileSync(pem, es.spki)
  writeFileSync(set, JSON.stringify({ keys: [] }))
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_AUTH_MODE: 'jwt',
    DRAWBRIDGE_AUTH_KEYS: `${pem},${set}`,
    DRAWBRIDGE_AUTH_ALGORITHMS: 'ES256,RS256',
    DRAWBRIDGE_AUTH_ISSUER: ISSUER,
    DRAWBRIDGE_AUTH_AUDIENCE: AUDIENCE,
  })
  t.equal(await upgradeStatus(gw.port, await signWith(es, 'pem')), 101, 'PEM key: 101')
  const rsToken = await signWith(rs, 'jwk')
  t.equal(await upgradeStatus(gw.port, rsToken), 401, 'RS256 key not there yet: 401')
  writeFileSync(set, JSON.stringify({ keys: [rs.publicJwk] }))
  await gw.waitForLog((l) => l.msg === 'token keys loaded' && l.cause === 'file change')
  t.equal(await upgradeStatus(gw.port, rsToken), 101, 'after the file changed: 101')
  writeFileSync(set, 'not json')
  gw.gateway.reload()
  await gw.waitForLog((l) => l.msg === 'token keys not reloaded; keeping the keys loaded before')
  t.equal(await upgradeStatus(gw.port, rsToken), 101, 'a broken file keeps the keys before')
  writeFileSync(set, JSON.stringify({ keys: [] }))
  gw.gateway.reload()
  t.equal(await upgradeStatus(gw.port, rsToken), 401, 'SIGHUP reload: the key removed, 401')
})

t.test('mqtts: the CONNECT password carries the token; a forged one gets CONNACK 5', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const jwks = await startJwksServer(t, pki, [es.publicJwk])
  const files = writeServerFiles(t, pki)
  const gw = await authGateway(
    t,
    broker.port,
    jwks,
    tlsEnv(files, { DRAWBRIDGE_TCP_ENABLED: 'true' }),
  )
  const url = `mqtts://127.0.0.1:${gw.mqttsPort ?? 0}`
  const good = await connect(url, {
    ca: pki.ca.cert,
    servername: 'localhost',
    clientId: 'tcp-1',
    username: 'x',
    password: await signWith(es, 'tcp-user'),
  })
  const line = await gw.waitForLog((l) => l.msg === 'username set from the token')
  t.equal(line.username, 'tcp-user', 'username set from the token on mqtts')
  t.equal(line.listener, 'mqtts')
  await good.endAsync()
  const err = await connect(url, {
    ca: pki.ca.cert,
    servername: 'localhost',
    clientId: 'tcp-2',
    username: 'x',
    password: await signWith(stranger, 'forged'),
  }).then(
    (client) => {
      client.end(true)
      return undefined
    },
    (e: unknown) => e as { code?: number },
  )
  t.equal(err?.code, 5, 'a forged password token on mqtts: CONNACK 5')
})

t.test(
  'a CONNECT let in by its password reaches the broker without it, as the claimed user',
  async (t) => {
    const broker = await scriptedBroker(t, Buffer.from([0x20, 0x02, 0x00, 0x00]))
    const jwks = await startJwksServer(t, pki, [es.publicJwk])
    const gw = await authGateway(t, broker.port, jwks)
    const token = await signWith(es, 'carol')
    const client = await openRawClient(t, gw.url)
    // The PINGREQ in a frame of its own, sent while the password is being checked.
    client.ws.send(
      connectPacket('pw-forward', { username: 'mallory', password: Buffer.from(token) }),
    )
    client.ws.send(encode({ cmd: 'pingreq' }))
    const session = await broker.nextSession()
    await client.next('connack')
    const parser = mqttPacket.parser({ protocolVersion: 4 })
    const packets: Packet[] = []
    parser.on('packet', (packet: Packet) => packets.push(packet))
    const connectSeen = new Promise<void>((resolve) => {
      const check = (): void => {
        parser.parse(Buffer.concat(session.received.splice(0)))
        if (packets.some((p) => p.cmd === 'pingreq')) resolve()
        else session.socket.once('data', () => setImmediate(check))
      }
      check()
    })
    await connectSeen
    const connect = packets[0] as mqttPacket.IConnectPacket
    t.equal(connect.cmd, 'connect')
    t.equal(connect.username, 'carol', 'the username is the token sub')
    t.equal(connect.password, undefined, 'the password (the token) is not forwarded')
    t.equal(packets[1]?.cmd, 'pingreq', 'what followed the CONNECT was held and forwarded after it')
  },
)

t.test(
  'upstream.connectOn=connect: the broker is dialled only once the token let the CONNECT in',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const jwks = await startJwksServer(t, pki, [es.publicJwk])
    const gw = await authGateway(t, broker.port, jwks, {
      DRAWBRIDGE_UPSTREAM_CONNECT_ON: 'connect',
    })
    const good = await connect(gw.url, { username: 'u', password: await signWith(es, 'dave') })
    t.ok(good.connected, 'a password token in connect mode: connected')
    const header = await connect(gw.url, {
      wsOptions: { headers: { Authorization: `Bearer ${await signWith(es, 'erin')}` } },
    })
    t.ok(header.connected, 'a header token in connect mode: connected')
    await good.endAsync()
    await header.endAsync()
    const dialsBefore = gw.logs.filter((l) => l.msg === 'broker connected').length
    t.equal(dialsBefore, 2, 'one dial for each client let in')
    const client = await openRawClient(t, gw.url)
    client.ws.send(connectPacket('no-dial', { username: 'u', password: Buffer.from('forged') }))
    t.equal(((await client.next('connack')) as { returnCode?: number }).returnCode, 5)
    await client.closed
    t.equal(
      gw.logs.filter((l) => l.msg === 'broker connected').length,
      dialsBefore,
      'a refused CONNECT dials no broker',
    )
  },
)

t.test('auth.allowClientCert: a verified client certificate stands in for a token', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const files = writeServerFiles(t, pki)
  const gw = await authGateway(
    t,
    broker.port,
    await startJwksServer(t, pki, [es.publicJwk]),
    tlsEnv(files, {
      DRAWBRIDGE_TLS_CLIENT_AUTH: 'optional',
      DRAWBRIDGE_AUTH_ALLOW_CLIENT_CERT: 'true',
      DRAWBRIDGE_AUTH_TOKEN_FROM: 'header',
    }),
  )
  const device = await connect(gw.url, {
    ca: pki.ca.cert,
    cert: pki.clients.good.cert,
    key: pki.clients.good.key,
  })
  t.ok(device.connected, 'a device with a certificate and no token: connected')
  const line = await gw.waitForLog((l) => l.msg === 'token accepted' && l.source === 'certificate')
  t.equal(line.sub, 'good-device', 'named by its certificate CN')
  await device.endAsync()
  const err = await connect(gw.url, { ca: pki.ca.cert }).then(
    (client) => {
      client.end(true)
      return undefined
    },
    (e: unknown) => e as Error,
  )
  t.ok(err, 'no certificate and no token: refused')
  const metrics = await scrape(gw.adminUrl)
  t.equal(value(metrics, 'drawbridge_auth_refusals_total', { reason: 'missing' }), 1, '401 missing')
})

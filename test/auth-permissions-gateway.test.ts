// auth.permissionsClaim end to end, through a real in-process gateway, real brokers (Aedes;
// Mosquitto 2.0 for MQTT 5) and real clients (MQTT.js at 3.1.1 and 5, raw WebSockets): a
// permitted PUBLISH and SUBSCRIBE go through; a forbidden one never reaches the broker, and
// the client is told (MQTT 5: DISCONNECT 0x87 naming the topic) and closed with 1008.
//
// The tokens are real: HS256 JWTs signed with jose, checked by the gateway (auth.mode=jwt) and
// carried in the access_token query parameter, or as the CONNECT password.
import { connectAsync, type IDisconnectPacket, type MqttClient } from 'mqtt'
import type mqttPacket from 'mqtt-packet'
import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TopicGuard } from '../src/bridge/topic-guard.js'
import { loadConfig } from '../src/config/load.js'
import { BROKER_KINDS, MOSQUITTO, startBroker, type Teardown } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { AUDIENCE, ISSUER, SECRET, signHs256 } from './helpers/jwt.js'
import { nextMessage } from './helpers/mqtt.js'
import { scrape, value } from './helpers/scrape.js'
import { scriptedBroker } from './helpers/scripted-broker.js'
import { skipWithout } from './helpers/tools.js'
import { connectPacket, encode, openRawClient } from './helpers/wsmqtt.js'

const REFUSALS = 'drawbridge_mqtt_refusals_total'
const CLAIM = { DRAWBRIDGE_AUTH_PERMISSIONS_CLAIM: 'mqtt' }

const GRANTS = {
  publish: ['users/{sub}/out', 'chat/+'],
  subscribe: ['users/{sub}/#', 'chat/+'],
}

const secretDir = mkdtempSync(join(tmpdir(), 'drawbridge-perms-'))
t.teardown(() => rmSync(secretDir, { recursive: true, force: true }))
const secretFile = join(secretDir, 'jwt.secret')
writeFileSync(secretFile, `${SECRET}\n`)

/** auth.mode=jwt with an HS256 secret, and the permissions claim `mqtt`. */
function authEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    ...CLAIM,
    DRAWBRIDGE_AUTH_MODE: 'jwt',
    DRAWBRIDGE_AUTH_SECRET_FILE: secretFile,
    DRAWBRIDGE_AUTH_ALGORITHMS: 'HS256',
    DRAWBRIDGE_AUTH_ISSUER: ISSUER,
    DRAWBRIDGE_AUTH_AUDIENCE: AUDIENCE,
    ...extra,
  }
}

/** `url` with a token for alice carrying `claims`, in the access_token query parameter. */
async function withToken(url: string, claims: Record<string, unknown>): Promise<string> {
  return `${url}?access_token=${await signHs256('alice', { claims })}`
}

/** A client straight on the broker, subscribed to everything: what reached the broker. */
async function watcher(
  t: Teardown,
  port: number,
): Promise<{ topics: string[]; client: MqttClient }> {
  const client = await connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0 })
  t.teardown(() => client.end(true))
  const topics: string[] = []
  client.on('message', (topic) => topics.push(topic))
  await client.subscribeAsync('#')
  return { topics, client }
}

const cases = BROKER_KINDS.flatMap((kind) =>
  (kind === 'mosquitto' ? [4, 5] : [4]).map((level) => ({ kind, level: level as 4 | 5 })),
)

for (const { kind, level } of cases) {
  t.test(`MQTT.js ${level === 5 ? '5' : '3.1.1'} on ${kind}: granted topics only`, async (t) => {
    const broker = await startBroker(t, kind)
    const gw = await startTestGateway(t, broker.port, authEnv())
    const watch = await watcher(t, broker.port)
    // The WebSocket is open (and the connection exists) before MQTT.js sends its CONNECT.
    const client = await connectAsync(await withToken(gw.url, { mqtt: GRANTS }), {
      protocolVersion: level,
      reconnectPeriod: 0,
      clientId: `perm-${level}`,
    })
    t.teardown(() => client.end(true))

    const granted = await client.subscribeAsync('users/alice/#')
    t.equal(granted[0]?.qos, 0, 'a filter inside the grant is subscribed')
    const own = nextMessage(client, 'users/alice/out')
    const seen = nextMessage(watch.client, 'chat/room')
    await client.publishAsync('users/alice/out', 'hello', { qos: 1 })
    t.equal((await own).payload.toString(), 'hello', 'published and delivered back')
    await client.publishAsync('chat/room', 'marker')
    await seen
    const before = watch.topics.length

    const disconnected = new Promise<IDisconnectPacket | undefined>((resolve) => {
      client.once('disconnect', resolve)
      client.once('close', () => resolve(undefined))
    })
    client.publish('users/bob/out', 'secret')
    const packet = await disconnected
    if (level === 5) {
      t.equal(packet?.reasonCode, 0x87, 'DISCONNECT Not authorized')
      t.equal(packet?.properties?.reasonString, 'publish to "users/bob/out" not permitted')
    } else {
      t.equal(packet, undefined, 'no DISCONNECT below MQTT 5: the close alone')
    }
    const closed = await gw.waitForLog((l) => l.msg === 'connection closed')
    t.equal(closed.code, 1008)
    t.equal(closed.reason, 'publish to "users/bob/out" not permitted')
    const warned = await gw.waitForLog((l) => l.msg.startsWith('PUBLISH not permitted'))
    t.match(warned, { topic: 'users/bob/out', subject: 'alice', clientId: `perm-${level}` })

    // A marker after the refusal: once the watcher has it, the forbidden PUBLISH would have
    // arrived before it (had it been forwarded).
    const end = nextMessage(watch.client, 'chat/end')
    await watch.client.publishAsync('chat/end', 'end')
    await end
    t.same(watch.topics.slice(before), ['chat/end'], 'nothing forbidden reached the broker')
    t.notOk(watch.topics.includes('users/bob/out'))
    const s = await scrape(gw.adminUrl)
    t.equal(value(s, REFUSALS, { reason: 'publish_denied' }), 1)
  })

  t.test(
    `MQTT.js ${level === 5 ? '5' : '3.1.1'} on ${kind}: a wider filter is refused`,
    async (t) => {
      const broker = await startBroker(t, kind)
      const gw = await startTestGateway(t, broker.port, authEnv())
      const client = await connectAsync(await withToken(gw.url, { mqtt: GRANTS }), {
        protocolVersion: level,
        reconnectPeriod: 0,
      })
      t.teardown(() => client.end(true))
      await client.subscribeAsync('chat/+')
      const disconnected = new Promise<IDisconnectPacket | undefined>((resolve) => {
        client.once('disconnect', resolve)
        client.once('close', () => resolve(undefined))
      })
      // `users/+/#` matches other users' topics: refused, though it overlaps the grant.
      client.subscribe(['users/alice/x', 'users/+/#'])
      const packet = await disconnected
      if (level === 5) {
        t.equal(packet?.reasonCode, 0x87)
        t.equal(packet?.properties?.reasonString, 'subscribe to "users/+/#" not permitted')
      } else t.equal(packet, undefined)
      const closed = await gw.waitForLog((l) => l.msg === 'connection closed')
      t.equal(closed.code, 1008)
      t.equal(closed.reason, 'subscribe to "users/+/#" not permitted')
      const s = await scrape(gw.adminUrl)
      t.equal(value(s, REFUSALS, { reason: 'subscribe_denied' }), 1)
    },
  )
}

for (const connectOn of ['upgrade', 'connect'] as const) {
  t.test(
    `byte for byte (upstream.connectOn=${connectOn}): the broker gets everything before the refused packet`,
    async (t) => {
      const broker = await scriptedBroker(t, Buffer.from([0x20, 0x02, 0x00, 0x00]))
      const gw = await startTestGateway(
        t,
        broker.port,
        // The CONNECT goes on as sent (no username from the token), to compare bytes.
        authEnv({ DRAWBRIDGE_UPSTREAM_CONNECT_ON: connectOn, DRAWBRIDGE_AUTH_USERNAME_CLAIM: '' }),
      )
      const client = await openRawClient(t, await withToken(gw.url, { mqtt: GRANTS }))
      const connect = connectPacket('raw')
      const ok = encode({
        cmd: 'subscribe',
        messageId: 1,
        subscriptions: [{ topic: 'users/alice/+', qos: 1 }],
      })
      const refused = encode({
        cmd: 'subscribe',
        messageId: 2,
        subscriptions: [{ topic: '#', qos: 0 }],
      })
      const after = encode({ cmd: 'pingreq' })
      const session = broker.nextSession()
      if (connectOn === 'upgrade') {
        // All in one frame: the refusal falls inside it.
        client.ws.send(Buffer.concat([connect, ok, refused, after]))
      } else {
        // Connect mode dials once the CONNECT is read; a refusal before the broker is there
        // would close with nothing sent at all. Once it answered, the rest in one frame.
        client.ws.send(Buffer.concat([connect, ok]))
        await client.next('connack')
        client.ws.send(Buffer.concat([refused, after]))
      }
      const closed = await client.closed
      t.same(closed, { code: 1008, reason: 'subscribe to "#" not permitted' })
      await gw.waitForLog((l) => l.msg === 'connection closed')
      const { received } = await session
      t.equal(
        Buffer.concat(received).toString('hex'),
        Buffer.concat([connect, ok]).toString('hex'),
        'the CONNECT and the permitted SUBSCRIBE; nothing from the refused one on',
      )
    },
  )
}

t.test('a token without the claim is granted nothing; a certificate is not limited', async (t) => {
  const broker = await scriptedBroker(t, Buffer.from([0x20, 0x02, 0x00, 0x00]))
  const gw = await startTestGateway(t, broker.port, authEnv())
  const publish = encode({
    cmd: 'publish',
    topic: 'any/topic',
    payload: Buffer.from('x'),
    qos: 0,
    dup: false,
    retain: false,
  })

  const bare = await openRawClient(t, await withToken(gw.url, {}))
  bare.ws.send(Buffer.concat([connectPacket('bare'), publish]))
  t.same(await bare.closed, { code: 1008, reason: 'publish to "any/topic" not permitted' })
  await gw.waitForLog((l) => l.msg === 'connection closed')

  // A PUBLISH sent right behind a CONNECT whose password is the token, before the CONNACK: the
  // framer judges it while the token is still being checked, when nothing is granted yet.
  // MQTT.js, Paho and Mosquitto's clients wait for the CONNACK (README: Topic permissions).
  const early = await openRawClient(t, gw.url)
  const token = await signHs256('alice', { claims: { mqtt: { publish: ['any/#'] } } })
  early.ws.send(
    Buffer.concat([
      connectPacket('early', { username: 't', password: Buffer.from(token) }),
      publish,
    ]),
  )
  t.same(await early.closed, { code: 1008, reason: 'publish to "any/topic" not permitted' })

  // A verified client certificate standing in for a token (auth.allowClientCert) is not limited
  // by topic grants: the broker's own ACLs apply to devices.
  const guard = new TopicGuard({ claim: 'mqtt' })
  t.equal(
    guard.setToken({
      source: 'certificate',
      claims: { sub: 'device-7' },
      subject: 'device-7',
      id: undefined,
      keyId: undefined,
      expiresAt: undefined,
    }),
    undefined,
  )
  t.equal(guard.publish('any/topic', 4), undefined, 'a certificate client may publish anywhere')
  t.equal(guard.subscribe(['#']), undefined, 'and subscribe to anything')
})

t.test('a malformed claim closes the connection (bad_permissions)', async (t) => {
  const broker = await scriptedBroker(t)
  const gw = await startTestGateway(t, broker.port, authEnv())
  const client = await openRawClient(
    t,
    await withToken(gw.url, { mqtt: { publish: 'not-a-list' } }),
  )
  t.same(await client.closed, { code: 1008, reason: 'token permissions claim is malformed' })
  const warned = await gw.waitForLog((l) => l.msg.startsWith('token permissions claim'))
  t.match(warned, { subject: 'alice', tokenId: /^jti-alice-/, err: /"publish" is not an array/ })
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, REFUSALS, { reason: 'bad_permissions' }), 1)
})

t.test('auth.permissionsClaim needs mqtt.inspect and auth.mode=jwt', async (t) => {
  t.throws(
    () =>
      loadConfig({
        profile: 'development',
        env: {
          ...authEnv({ DRAWBRIDGE_AUTH_TOKEN_FROM: 'query', DRAWBRIDGE_AUTH_USERNAME_CLAIM: '' }),
          DRAWBRIDGE_MQTT_INSPECT: 'false',
        },
      }),
    /auth\.permissionsClaim.*mqtt\.inspect/,
  )
  t.throws(
    () => loadConfig({ profile: 'development', env: CLAIM }),
    /auth\.permissionsClaim.*auth\.mode=jwt/,
    'grants come from tokens: without auth.mode=jwt the key is refused',
  )
})

t.test(
  'MQTT 5 topic aliases: set by a permitted PUBLISH, then used',
  { skip: skipWithout('mosquitto', MOSQUITTO !== undefined, '.ci/run installs mosquitto') },
  async (t) => {
    const broker = await startBroker(t, 'mosquitto')
    const gw = await startTestGateway(t, broker.port, authEnv())
    const watch = await watcher(t, broker.port)
    const client = await connectAsync(await withToken(gw.url, { mqtt: GRANTS }), {
      protocolVersion: 5,
      reconnectPeriod: 0,
    })
    t.teardown(() => client.end(true))
    const first = nextMessage(watch.client, 'chat/alias')
    await client.publishAsync('chat/alias', 'one', { qos: 1, properties: { topicAlias: 1 } })
    await first
    // An empty topic: the broker delivers it on the topic alias 1 was set to.
    const second = new Promise<string>((resolve) => {
      watch.client.on('message', (topic, payload) => {
        if (payload.toString() === 'two') resolve(topic)
      })
    })
    await client.publishAsync('', 'two', { qos: 1, properties: { topicAlias: 1 } })
    t.equal(await second, 'chat/alias', 'went through, to the permitted topic')
    t.equal(gw.gateway.connections.size, 1, 'still open')
  },
)

for (const level of [4, 5] as const) {
  t.test(`MQTT ${level}: a will the grants do not allow refuses the CONNECT`, async (t) => {
    const broker = await scriptedBroker(t)
    const gw = await startTestGateway(t, broker.port, authEnv())
    const client = await openRawClient(t, await withToken(gw.url, { mqtt: GRANTS }), 'mqtt', {
      protocolVersion: level,
    })
    client.ws.send(
      connectPacket('willing', {
        protocolVersion: level,
        will: { topic: 'users/bob/out', payload: Buffer.from('bye'), qos: 0, retain: false },
      }),
    )
    const connack = (await client.next('connack')) as mqttPacket.IConnackPacket
    if (level === 5) {
      t.equal(connack.reasonCode, 0x87, 'CONNACK Not authorized')
      t.equal(connack.properties?.reasonString, 'will on "users/bob/out" not permitted')
    } else t.equal(connack.returnCode, 5, 'CONNACK 5 Not authorized')
    t.same(await client.closed, { code: 1008, reason: 'will on "users/bob/out" not permitted' })
    const closed = await gw.waitForLog((l) => l.msg === 'connection closed')
    t.equal(closed.bytesToBroker, 0, 'the CONNECT never reached the broker')
    const s = await scrape(gw.adminUrl)
    t.equal(value(s, REFUSALS, { reason: 'publish_denied' }), 1)
  })
}

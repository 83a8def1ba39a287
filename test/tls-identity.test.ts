// tls.identityAs=username end to end: the CONNECT a broker receives carries the verified client
// certificate's identity as its username, or none, whatever the client sent, and every other
// byte of the stream is the client's. Against a scripted broker that records the bytes (both
// upstream.connectOn modes, MQTT 3.1, 3.1.1 and 5, a CONNECT cut over random frames and followed
// by other packets in the same frames), then against Debian's Mosquitto 2.0 with a per-username
// ACL, with MQTT.js at 3.1.1 and 5: the certificate, not the username sent, decides what a
// client may write. Start-up refuses the settings that could not work.
//
//   IDENTITY_SEED=1234  replays the random cuts (the seed is printed)
import { once } from 'node:events'
import tls from 'node:tls'
import mqtt, { type MqttClient } from 'mqtt'
import mqttPacket, { type IConnectPacket, type Packet } from 'mqtt-packet'
import t from 'tap'
import { loadConfig } from '../src/config/load.js'
import { issueClientCert, type IssuedCert } from '../src/dev/certs.js'
import { ConfigError } from '../src/errors.js'
import { rewriteConnectUsername } from '../src/mqtt/identity.js'
import type { ProtocolLevel } from '../src/mqtt/packet.js'
import { startAclMosquitto } from './helpers/acl-mosquitto.js'
import { MOSQUITTO } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { testPki, tlsEnv, writeServerFiles } from './helpers/pki.js'
import { scrape, value } from './helpers/scrape.js'
import { scriptedBroker } from './helpers/scripted-broker.js'
import { skipWithout } from './helpers/tools.js'
import { prng, seedFrom } from './helpers/prng.js'
import { openRawClient } from './helpers/wsmqtt.js'

const SEED = seedFrom(t, 'IDENTITY_SEED', 20_261_203)

const pki = testPki()
const key = pki.clients.good.key // RSA keys are the slow part: the test certificates share one
const alice = issueClientCert(pki.ca, { commonName: 'alice', key })
const bob = issueClientCert(pki.ca, {
  commonName: 'bob-cn',
  altNames: ['bob'], // node-forge: a DNS name
  key,
})

// ---- start-up ------------------------------------------------------------------------------

t.test('start-up refuses tls.identityAs=username where it cannot work, naming the key', (t) => {
  const files = writeServerFiles(t, pki)
  const base = {
    DRAWBRIDGE_UPSTREAM_BROKERS: '127.0.0.1:1883',
    DRAWBRIDGE_TLS_IDENTITY_AS: 'username',
    ...tlsEnv(files, { DRAWBRIDGE_TLS_CLIENT_AUTH: 'optional' }),
  }
  const cases: [string, Record<string, string>, RegExp][] = [
    ['mqtt.inspect off', { DRAWBRIDGE_MQTT_INSPECT: 'false' }, /needs mqtt\.inspect=true/],
    ['plain ws', { DRAWBRIDGE_TLS_ENABLED: 'false' }, /needs tls\.enabled=true/],
    ['no client certificates', { DRAWBRIDGE_TLS_CLIENT_AUTH: 'none' }, /needs tls\.clientAuth/],
  ]
  for (const [name, env, reason] of cases) {
    let thrown: unknown
    try {
      loadConfig({ profile: 'production', env: { ...base, ...env } })
    } catch (err) {
      thrown = err
    }
    t.ok(
      thrown instanceof ConfigError &&
        thrown.key === 'tls.identityAs' &&
        reason.test(thrown.message),
      `${name}: ${String(thrown)}`,
    )
  }
  const { config } = loadConfig({ profile: 'production', env: base })
  t.equal(config.tls.identityAs, 'username')
  t.equal(config.tls.identityFrom, 'cn', 'identityFrom defaults to the CN')
  t.throws(
    () =>
      loadConfig({
        profile: 'production',
        env: { ...base, DRAWBRIDGE_TLS_IDENTITY_FROM: 'san-ip' },
      }),
    /identityFrom/,
  )
  t.end()
})

// ---- the bytes the broker receives --------------------------------------------------------

/** A client's stream: a CONNECT that says `username`, then a PUBLISH and a PINGREQ. */
function clientStream(level: ProtocolLevel, username: string | undefined, n: number): Buffer[] {
  const connect: IConnectPacket = {
    cmd: 'connect',
    protocolId: level === 3 ? 'MQIsdp' : 'MQTT',
    protocolVersion: level,
    clientId: `id-${level}-${n}`,
    clean: true,
    keepalive: 0,
    ...(username !== undefined && { username, password: Buffer.from('s3cret') }),
    will: { topic: 'w/t', payload: Buffer.from('bye'), qos: 1, retain: false },
    ...(level === 5 && { properties: { sessionExpiryInterval: 60, userProperties: { k: 'v' } } }),
  }
  const rest: Packet[] = [
    {
      cmd: 'publish',
      topic: 'a/b',
      payload: Buffer.from(`payload ${n}`),
      qos: 0,
      retain: false,
      dup: false,
    },
    { cmd: 'pingreq' },
  ]
  return [connect, ...rest].map((p) => mqttPacket.generate(p, { protocolVersion: level }))
}

/** The stream cut into 1-5 frames at random points. */
function frames(rand: (n: number) => number, stream: Buffer): Buffer[] {
  const cuts = new Set<number>()
  for (let k = rand(5); k > 0; k--) cuts.add(1 + rand(stream.length - 1))
  const sorted = [...cuts].sort((a, b) => a - b)
  const out: Buffer[] = []
  let at = 0
  for (const cut of [...sorted, stream.length]) {
    out.push(stream.subarray(at, cut))
    at = cut
  }
  return out
}

const CONNACK = {
  3: Buffer.from([0x20, 0x02, 0x00, 0x00]),
  4: Buffer.from([0x20, 0x02, 0x00, 0x00]),
  5: Buffer.from([0x20, 0x03, 0x00, 0x00, 0x00]),
}

const STREAMS = 6 // per mode, level and certificate

for (const connectOn of ['upgrade', 'connect'] as const) {
  t.test(
    `connectOn=${connectOn}: the broker gets the rewritten CONNECT, then the rest as sent`,
    async (t) => {
      const rand = prng(SEED + (connectOn === 'connect' ? 1 : 0)).int
      const files = writeServerFiles(t, pki)
      let streams = 0
      for (const level of [3, 4, 5] as const) {
        const broker = await scriptedBroker(t, CONNACK[level])
        const gw = await startTestGateway(
          t,
          broker.port,
          tlsEnv(files, {
            DRAWBRIDGE_TLS_CLIENT_AUTH: 'optional',
            DRAWBRIDGE_TLS_IDENTITY_AS: 'username',
            DRAWBRIDGE_UPSTREAM_CONNECT_ON: connectOn,
          }),
        )
        for (const cert of [alice, undefined] as const) {
          for (let n = 0; n < STREAMS; n++) {
            const sent = n % 3 === 2 ? undefined : n % 3 === 0 ? 'bob' : 'alice'
            const packets = clientStream(level, sent, n)
            const [connect, ...rest] = packets as [Buffer, ...Buffer[]]
            const expected = Buffer.concat([
              rewriteConnectUsername(connect, cert === undefined ? undefined : 'alice', level),
              ...rest,
            ])
            const client = await openRawClient(t, gw.url, level === 3 ? 'mqttv3.1' : 'mqtt', {
              protocolVersion: level,
              ca: pki.ca.cert,
              ...(cert && { cert: cert.cert, key: cert.key }),
            })
            const session = connectOn === 'connect' ? broker.nextSession() : undefined
            for (const frame of frames(rand, Buffer.concat(packets))) client.ws.send(frame)
            const got = await (session ?? broker.nextSession())
            const deadline = Date.now() + 5_000
            while (Buffer.concat(got.received).length < expected.length && Date.now() < deadline) {
              await new Promise((resolve) => setTimeout(resolve, 10))
            }
            const received = Buffer.concat(got.received)
            if (!received.equals(expected)) {
              t.fail(
                `level ${level} ${cert ? 'alice' : 'no certificate'} sent ${sent}: bytes differ`,
                {
                  received: received.toString('hex'),
                  expected: expected.toString('hex'),
                },
              )
            }
            // What the broker parses: the identity, or none (and at 3.x no password without it).
            const parser = mqttPacket.parser({ protocolVersion: level })
            const parsed: Packet[] = []
            parser.on('packet', (p: Packet) => parsed.push(p))
            parser.parse(received)
            const c = parsed[0] as IConnectPacket
            t.equal(c.username, cert ? 'alice' : undefined)
            if (cert === undefined && level !== 5) t.equal(c.password, undefined)
            else if (sent !== undefined) t.same(c.password, Buffer.from('s3cret'))
            t.same(
              parsed.slice(1).map((p) => p.cmd),
              ['publish', 'pingreq'],
            )
            client.ws.close()
            await client.closed
            streams++
          }
        }
        const metrics = await scrape(gw.adminUrl)
        t.equal(value(metrics, 'drawbridge_identity_rewrites_total', { action: 'set' }), STREAMS)
        // Without a certificate, only the streams that sent a username had one removed.
        t.equal(
          value(metrics, 'drawbridge_identity_rewrites_total', { action: 'removed' }),
          (STREAMS * 2) / 3,
        )
        const lines = gw.logs.filter((l) => l.msg.startsWith('username '))
        t.ok(
          lines.every((l) => !JSON.stringify(l).includes('s3cret')),
          'no password in the log',
        )
        t.ok(
          lines.some(
            (l) =>
              l.msg === 'username set from the client certificate' &&
              l.username === 'alice' &&
              l.sentUsername === 'bob',
          ),
          'logged: set from the certificate, with what was sent',
        )
      }
      t.pass(`${streams} streams, cut into random frames, arrived as expected`)
    },
  )
}

t.test(
  'identityFrom=san-dns takes the first DNS SAN; a certificate without one loses its username',
  async (t) => {
    const files = writeServerFiles(t, pki)
    const broker = await scriptedBroker(t, CONNACK[4])
    const gw = await startTestGateway(
      t,
      broker.port,
      tlsEnv(files, {
        DRAWBRIDGE_TLS_CLIENT_AUTH: 'required',
        DRAWBRIDGE_TLS_IDENTITY_AS: 'username',
        DRAWBRIDGE_TLS_IDENTITY_FROM: 'san-dns',
      }),
    )
    for (const [cert, want] of [
      [bob, 'bob'],
      [alice, undefined],
    ] as [IssuedCert, string | undefined][]) {
      const client = await openRawClient(t, gw.url, 'mqtt', {
        ca: pki.ca.cert,
        cert: cert.cert,
        key: cert.key,
      })
      const [connect] = clientStream(4, 'mallory', 0) as [Buffer]
      client.ws.send(connect)
      const got = await broker.nextSession()
      const c = mqttPacket.parser({ protocolVersion: 4 })
      const parsed: Packet[] = []
      c.on('packet', (p: Packet) => parsed.push(p))
      c.parse(Buffer.concat(got.received))
      t.equal((parsed[0] as IConnectPacket).username, want)
      client.ws.close()
      await client.closed
    }
    t.ok(
      gw.logs.some(
        (l) =>
          l.msg === 'username removed (tls.identityAs=username)' &&
          l.why === 'certificate has no usable san-dns',
      ),
    )
  },
)

// Mosquitto 2.0 with a per-username ACL: test/helpers/acl-mosquitto.ts.

function connect(url: string, options: mqtt.IClientOptions): Promise<MqttClient> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5_000, ...options })
  return new Promise((resolve, reject) => {
    client.once('connect', () => resolve(client))
    client.once('error', reject)
    client.once('close', () => reject(new Error('closed before CONNACK')))
  })
}

t.test(
  'Mosquitto 2.0 ACL per username: the certificate decides what a client may write',
  { skip: skipWithout('mosquitto', MOSQUITTO !== undefined, '.ci/run installs mosquitto') },
  async (t) => {
    const broker = await startAclMosquitto(t)
    const files = writeServerFiles(t, pki)
    const gw = await startTestGateway(
      t,
      broker.port,
      tlsEnv(files, {
        DRAWBRIDGE_TLS_CLIENT_AUTH: 'optional',
        DRAWBRIDGE_TLS_IDENTITY_AS: 'username',
      }),
    )
    // The observer reads everything, straight from the broker (anonymous: `topic read #`).
    const observer = await connect(`mqtt://127.0.0.1:${broker.port}`, { clientId: 'observer' })
    t.teardown(() => observer.end(true))
    const seen: string[] = []
    observer.on('message', (topic, payload) => seen.push(`${topic} ${payload.toString()}`))
    await observer.subscribeAsync('#', { qos: 1 })
    const waitFor = async (entry: string): Promise<void> => {
      const deadline = Date.now() + 5_000
      while (!seen.includes(entry)) {
        if (Date.now() > deadline)
          throw new Error(`observer never saw "${entry}"; saw ${JSON.stringify(seen)}`)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
    for (const protocolVersion of [4, 5] as const) {
      const tag = `v${protocolVersion}`
      // CN alice, claiming to be bob.
      const asAlice = await connect(gw.url, {
        protocolVersion,
        clientId: `alice-${tag}`,
        username: 'bob',
        password: 'pw',
        ca: pki.ca.cert,
        cert: alice.cert,
        key: alice.key,
      })
      await asAlice
        .publishAsync('devices/bob/x', `bob-by-alice-${tag}`, { qos: 1 })
        .catch(() => undefined)
      await asAlice.publishAsync('devices/alice/x', `alice-${tag}`, { qos: 1 })
      await waitFor(`devices/alice/x alice-${tag}`)
      t.equal(
        broker.usernames.get(`alice-${tag}`),
        'alice',
        `${tag}: Mosquitto sees username alice`,
      )
      // No certificate, claiming to be alice: stripped, anonymous.
      const stranger = await connect(gw.url, {
        protocolVersion,
        clientId: `nocert-${tag}`,
        username: 'alice',
        password: 'pw',
        ca: pki.ca.cert,
      })
      await stranger
        .publishAsync('devices/alice/x', `alice-by-nocert-${tag}`, { qos: 1 })
        .catch(() => undefined)
      await stranger.publishAsync('public/end', `nocert-${tag}`, { qos: 1 })
      await waitFor(`public/end nocert-${tag}`)
      t.equal(broker.usernames.get(`nocert-${tag}`), '', `${tag}: Mosquitto sees no username`)
      // Publishes from one client reach the observer in order: the refused ones were dropped.
      t.notOk(
        seen.includes(`devices/bob/x bob-by-alice-${tag}`),
        `${tag}: CN alice cannot write bob's topic`,
      )
      t.notOk(
        seen.includes(`devices/alice/x alice-by-nocert-${tag}`),
        `${tag}: no certificate cannot write alice's topic`,
      )
      await asAlice.endAsync()
      await stranger.endAsync()
    }
    t.comment(
      `mosquitto saw: ${JSON.stringify([...broker.usernames])}; observer: ${JSON.stringify(seen)}`,
    )
  },
)

t.test('mqtts: the same rewrite on the MQTT-over-TLS listener', async (t) => {
  const files = writeServerFiles(t, pki)
  const broker = await scriptedBroker(t, CONNACK[4])
  const gw = await startTestGateway(
    t,
    broker.port,
    tlsEnv(files, {
      DRAWBRIDGE_TLS_CLIENT_AUTH: 'optional',
      DRAWBRIDGE_TLS_IDENTITY_AS: 'username',
      DRAWBRIDGE_TCP_ENABLED: 'true',
    }),
  )
  const socket = tls.connect({
    host: '127.0.0.1',
    port: gw.mqttsPort,
    ca: pki.ca.cert,
    servername: 'localhost',
    cert: alice.cert,
    key: alice.key,
  })
  t.teardown(() => socket.destroy())
  await once(socket, 'secureConnect')
  const packets = clientStream(4, 'bob', 0)
  socket.write(Buffer.concat(packets))
  const [connect, ...rest] = packets as [Buffer, ...Buffer[]]
  const expected = Buffer.concat([rewriteConnectUsername(connect, 'alice', 4), ...rest])
  const got = await broker.nextSession()
  const deadline = Date.now() + 5_000
  while (Buffer.concat(got.received).length < expected.length && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  t.ok(Buffer.concat(got.received).equals(expected), 'CONNECT as alice, then the rest as sent')
  socket.destroy()
  await gw.waitForLog((l) => l.msg === 'connection closed' && l.listener === 'mqtts')
})

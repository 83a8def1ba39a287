// MQTT.js over the gateway against real brokers: every protocol version, QoS level and payload
// size, in both directions across transports (WebSocket client <-> TCP client).
import { connectAsync, type IClientOptions, type MqttClient } from 'mqtt'
import t from 'tap'
import { BROKER_KINDS, startBroker, type Teardown } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { nextMessage, pattern, sha256 } from './helpers/mqtt.js'

const VERSIONS: { name: string; options: IClientOptions; subprotocol: string }[] = [
  {
    name: 'MQTT 3.1',
    options: { protocolId: 'MQIsdp', protocolVersion: 3 },
    subprotocol: 'mqttv3.1',
  },
  { name: 'MQTT 3.1.1', options: { protocolVersion: 4 }, subprotocol: 'mqtt' },
  { name: 'MQTT 5', options: { protocolVersion: 5 }, subprotocol: 'mqtt' },
]

async function connect(t: Teardown, url: string, options: IClientOptions): Promise<MqttClient> {
  const client = await connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5_000, ...options })
  t.teardown(() => client.endAsync(true))
  return client
}

for (const kind of BROKER_KINDS) {
  t.test(`${kind}: round trips through the gateway`, async (t) => {
    const broker = await startBroker(t, kind)
    const gw = await startTestGateway(t, broker.port)
    const tcpUrl = `mqtt://127.0.0.1:${broker.port}`

    for (const version of VERSIONS) {
      if (version.options.protocolVersion === 5 && !broker.mqtt5) continue
      await t.test(version.name, async (t) => {
        const ws = await connect(t, gw.url, version.options)
        const tcp = await connect(t, tcpUrl, version.options)
        const opened = await gw.waitForLog(
          (l) => l.msg === 'connection opened' && l.protocol === version.subprotocol,
        )
        t.equal(opened.protocol, version.subprotocol, 'subprotocol negotiated for this version')

        const topic = `rt/${kind}/${version.options.protocolVersion ?? 4}`
        await tcp.subscribeAsync(`${topic}/up`, { qos: 2 })
        await ws.subscribeAsync(`${topic}/down`, { qos: 2 })

        for (const qos of [0, 1, 2] as const) {
          const payload = pattern(1024, qos + 1)
          const up = nextMessage(tcp, `${topic}/up`)
          await ws.publishAsync(`${topic}/up`, payload, { qos })
          const got = await up
          t.equal(sha256(got.payload), sha256(payload), `ws -> tcp QoS ${qos} byte-exact`)
          t.equal(got.qos, qos, `ws -> tcp delivered at QoS ${qos}`)

          const down = nextMessage(ws, `${topic}/down`)
          await tcp.publishAsync(`${topic}/down`, payload, { qos })
          t.equal(sha256((await down).payload), sha256(payload), `tcp -> ws QoS ${qos} byte-exact`)
        }

        for (const size of [0, 1024, 256 * 1024, 4 * 1024 * 1024]) {
          const payload = pattern(size, size + 7)
          const up = nextMessage(tcp, `${topic}/up`, 20_000)
          await ws.publishAsync(`${topic}/up`, payload, { qos: 1 })
          const got = await up
          t.equal(got.payload.length, size, `ws -> tcp ${size} B length`)
          t.equal(sha256(got.payload), sha256(payload), `ws -> tcp ${size} B hash`)

          const down = nextMessage(ws, `${topic}/down`, 20_000)
          await tcp.publishAsync(`${topic}/down`, payload, { qos: 1 })
          t.equal(sha256((await down).payload), sha256(payload), `tcp -> ws ${size} B hash`)
        }

        // Retained: published over WebSocket, seen by a later WebSocket subscriber.
        const retained = Buffer.from(`retained ${version.name}`)
        await ws.publishAsync(`${topic}/retained`, retained, { qos: 1, retain: true })
        const later = await connect(t, gw.url, version.options)
        const got = nextMessage(later, `${topic}/retained`)
        await later.subscribeAsync(`${topic}/retained`, { qos: 1 })
        const message = await got
        t.equal(message.payload.toString(), retained.toString(), 'retained payload')
        t.equal(message.retain, true, 'retain flag set on delivery to a new subscriber')
        await ws.publishAsync(`${topic}/retained`, Buffer.alloc(0), { qos: 1, retain: true })
      })
    }

    if (!broker.mqtt5) {
      await t.test(
        'MQTT 5 to a 3.1.1-only broker: the broker refusal reaches the client',
        async (t) => {
          await t.rejects(
            connectAsync(gw.url, { protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 5_000 }),
            /Unacceptable protocol version|Unsupported Protocol Version/,
          )
        },
      )
    }
  })
}

// A second, independent client implementation: python paho-mqtt over WebSocket, with MQTT.js on
// the broker's TCP side. Runs when Debian's python3-paho-mqtt is installed (always in CI).
import { spawn, spawnSync } from 'node:child_process'
import { createInterface } from 'node:readline'
import { connectAsync } from 'mqtt'
import t from 'tap'
import { BROKER_KINDS, startBroker } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { eventually } from './helpers/scrape.js'

// Debian's package installs for /usr/bin/python3, which may not be the python3 first on PATH.
const PYTHON = '/usr/bin/python3'
const havePaho =
  spawnSync(PYTHON, ['-c', 'import paho.mqtt.client'], { stdio: 'ignore' }).status === 0
if (!havePaho && process.env.CI === 'true')
  throw new Error('CI must have python3-paho-mqtt installed')
const SCRIPT = new URL('./fixtures/paho_ws.py', import.meta.url).pathname

interface PahoLine {
  event: string
  received?: { topic: string; payload: string; qos: number }[]
}

if (!havePaho) {
  t.plan(0, 'python3-paho-mqtt not installed here; CI installs it (.ci/run)')
} else {
  for (const kind of BROKER_KINDS) {
    t.test(`paho-mqtt over WebSocket, ${kind}`, async (t) => {
      const broker = await startBroker(t, kind)
      const gw = await startTestGateway(t, broker.port)
      for (const version of broker.mqtt5 ? ['31', '311', '5'] : ['31', '311']) {
        await t.test(`MQTT version ${version}`, async (t) => {
          const prefix = `paho/${kind}/${version}`
          const tcp = await connectAsync(`mqtt://127.0.0.1:${broker.port}`, { reconnectPeriod: 0 })
          t.teardown(() => tcp.endAsync(true))
          const up: string[] = []
          tcp.on('message', (_topic, payload) => up.push(payload.toString()))
          await tcp.subscribeAsync(`${prefix}/up`, { qos: 2 })

          const child = spawn(PYTHON, [
            SCRIPT,
            '127.0.0.1',
            String(gw.port),
            '/mqtt',
            version,
            prefix,
          ])
          t.teardown(() => child.kill('SIGKILL'))
          let stderr = ''
          child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
          const lines: PahoLine[] = []
          for await (const line of createInterface({ input: child.stdout })) {
            const parsed = JSON.parse(line) as PahoLine
            lines.push(parsed)
            if (parsed.event === 'ready') {
              for (const qos of [0, 1, 2] as const) {
                await tcp.publishAsync(`${prefix}/down`, `tcp qos ${qos}`, { qos })
              }
            }
          }
          const done = lines.find((l) => l.event === 'done')
          t.ok(done, `paho finished (${stderr})`)
          const payloads = (done?.received ?? [])
            .map((m) => Buffer.from(m.payload, 'hex').toString())
            .sort()
          t.same(
            payloads,
            ['tcp qos 0', 'tcp qos 1', 'tcp qos 2'],
            'paho received what the TCP client sent',
          )
          // paho is done when its own QoS 2 flow is; the broker's QoS 2 flow to the TCP client
          // (MQTT.js emits on PUBREL) may still be a round trip behind.
          await eventually(async () => up.length >= 3, 5_000)
          t.same(
            [...up].sort(),
            ['paho qos 0', 'paho qos 1', 'paho qos 2'],
            'the TCP client received what paho sent',
          )
          const opened = gw.logs.filter((l) => l.msg === 'connection opened').at(-1)
          // paho-mqtt 1.6 offers "mqtt" whatever the protocol version.
          t.equal(
            opened?.protocol,
            'mqtt',
            'the gateway carried it with the subprotocol paho offered',
          )
          // The framers read paho's CONNECT (mqtt.inspect is on by default).
          const connect = gw.logs.filter((l) => l.msg === 'mqtt connect').at(-1)
          t.equal(
            connect?.protocolLevel,
            { '31': 3, '311': 4, '5': 5 }[version],
            'the gateway read the protocol level from the CONNECT',
          )
        })
      }
    })
  }
}

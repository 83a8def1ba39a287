// What operators see of the MQTT inside a connection (mqtt.inspect): the 'mqtt connect' and
// close log lines and /connections name the client (never its password); CONNECTs by level,
// CONNACKs by code and packets by type and direction are counted.
import net from 'node:net'
import { connectAsync } from 'mqtt'
import t from 'tap'
import type { ConnectionView } from '../src/admin/connections.js'
import { MOSQUITTO, startBroker, type Teardown } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { nextMessage } from './helpers/mqtt.js'
import { adminGet, scrape, value, type Scrape } from './helpers/scrape.js'
import { connectPacket, openRawClient } from './helpers/wsmqtt.js'

const PACKETS = 'drawbridge_mqtt_packets_total'
const C2B = { direction: 'client_to_broker' }
const B2C = { direction: 'broker_to_client' }

function packets(s: Scrape, type: string, direction: Record<string, string>): number {
  return value(s, PACKETS, { type, ...direction })
}

t.test('the CONNECT names the client in logs, /connections and metrics', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port)
  const client = await connectAsync(gw.url, {
    protocolVersion: 4,
    reconnectPeriod: 0,
    clientId: 'device-42',
    username: 'alice',
    password: 'hunter2-secret',
    keepalive: 30,
  })
  t.teardown(() => client.end(true))
  const connectLine = await gw.waitForLog((l) => l.msg === 'mqtt connect')
  t.match(connectLine, {
    clientId: 'device-42',
    username: 'alice',
    protocolLevel: 4,
    keepalive: 30,
  })

  await client.subscribeAsync('observe/t')
  const got = nextMessage(client, 'observe/t')
  await client.publishAsync('observe/t', 'hi')
  await got
  const [view] = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as ConnectionView[]
  t.same(view?.mqtt, { clientId: 'device-42', username: 'alice', protocolLevel: 4, keepalive: 30 })

  const live = await scrape(gw.adminUrl)
  t.equal(value(live, 'drawbridge_mqtt_connects_total', { level: '4' }), 1)
  t.equal(value(live, 'drawbridge_mqtt_connects_total', { level: '5' }), 0)
  t.equal(value(live, 'drawbridge_mqtt_connacks_total', { level: '4', code: '0' }), 1)
  t.equal(packets(live, 'CONNECT', C2B), 1, 'live counts are folded at scrape time')
  t.equal(packets(live, 'SUBSCRIBE', C2B), 1)
  t.equal(packets(live, 'PUBLISH', C2B), 1)
  t.equal(packets(live, 'CONNACK', B2C), 1)
  t.equal(packets(live, 'SUBACK', B2C), 1)
  t.equal(packets(live, 'PUBLISH', B2C), 1)
  t.equal(packets(live, 'CONNACK', C2B), 0)

  await client.endAsync()
  const closed = await gw.waitForLog((l) => l.msg === 'connection closed')
  t.match(closed, { clientId: 'device-42', username: 'alice', protocolLevel: 4 })
  const after = await scrape(gw.adminUrl)
  t.equal(packets(after, 'PUBLISH', C2B), 1, 'a closed connection keeps its counts')
  t.equal(packets(after, 'DISCONNECT', C2B), 1)
  const logs = JSON.stringify(gw.logs)
  t.notOk(logs.includes('hunter2'), 'the password is in no log line')
  t.notOk(after.text.includes('device-42'), 'no client id in any metric label')
})

t.test('mqtt.inspect=false: no mqtt fields, no packet counts', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_MQTT_INSPECT: 'false' })
  const client = await connectAsync(gw.url, { protocolVersion: 4, reconnectPeriod: 0 })
  t.teardown(() => client.end(true))
  await client.subscribeAsync('observe/blind')
  const [view] = JSON.parse((await adminGet(gw.adminUrl, '/connections')).body) as ConnectionView[]
  t.equal(view?.mqtt, null)
  const s = await scrape(gw.adminUrl)
  t.equal(packets(s, 'CONNECT', C2B), 0)
  t.equal(value(s, 'drawbridge_mqtt_connects_total', { level: '4' }), 0)
})

/** A stand-in broker that answers the CONNECT with `connack`. */
async function connackBroker(t: Teardown, connack: Buffer): Promise<number> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => undefined)
    socket.once('data', () => socket.write(connack))
    socket.on('end', () => socket.end())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  return (server.address() as net.AddressInfo).port
}

t.test('CONNACK codes are counted, unknown ones as other', async (t) => {
  for (const [code, label] of [
    [5, '5'],
    [0x42, 'other'],
  ] as const) {
    const port = await connackBroker(t, Buffer.from([0x20, 0x02, 0x00, code]))
    const gw = await startTestGateway(t, port)
    const client = await openRawClient(t, gw.url)
    client.ws.send(connectPacket(`code-${code}`))
    await client.next('connack')
    const s = await scrape(gw.adminUrl)
    t.equal(value(s, 'drawbridge_mqtt_connacks_total', { level: '4', code: label }), 1, label)
    client.ws.close()
    await gw.waitForLog((l) => l.msg === 'connection closed')
  }
})

t.test('MQTT 5 CONNECT and CONNACK (Mosquitto)', { skip: !MOSQUITTO }, async (t) => {
  const broker = await startBroker(t, 'mosquitto')
  const gw = await startTestGateway(t, broker.port)
  const client = await connectAsync(gw.url, {
    protocolVersion: 5,
    reconnectPeriod: 0,
    clientId: 'v5-client',
  })
  t.teardown(() => client.end(true))
  const line = await gw.waitForLog((l) => l.msg === 'mqtt connect')
  t.match(line, { clientId: 'v5-client', protocolLevel: 5 })
  t.notOk('username' in line && line.username !== undefined, 'no username sent, none logged')
  const s = await scrape(gw.adminUrl)
  t.equal(value(s, 'drawbridge_mqtt_connects_total', { level: '5' }), 1)
  t.equal(value(s, 'drawbridge_mqtt_connacks_total', { level: '5', code: '0' }), 1)
})

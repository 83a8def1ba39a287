// The bridge at the frame level, with a raw ws client: packets split over frames and packed
// into one frame [MQTT-6.0.0-2], text frames [MQTT-6.0.0-1], oversize messages, the broker side
// closing or failing, will messages, and pings.
import { once } from 'node:events'
import net from 'node:net'
import { connectAsync } from 'mqtt'
import t from 'tap'
import { WebSocket } from 'ws'
import { BROKER_KINDS, startBroker, type Teardown } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { nextMessage, pattern, sha256 } from './helpers/mqtt.js'
import { upgradeRequest } from './helpers/raw.js'
import { connectPacket, encode, openRawClient } from './helpers/wsmqtt.js'

/** A stand-in broker that hands each accepted socket to `onSocket`. */
async function fakeBroker(t: Teardown, onSocket: (socket: net.Socket) => void): Promise<number> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => undefined)
    onSocket(socket)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  return (server.address() as net.AddressInfo).port
}

t.test('one MQTT packet split over several frames, several packets in one frame', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port)

  const split = await openRawClient(t, gw.url)
  const connect = connectPacket('split-client')
  split.ws.send(connect.subarray(0, 1))
  split.ws.send(connect.subarray(1, 5))
  split.ws.send(connect.subarray(5))
  t.match(
    await split.next('connack'),
    { cmd: 'connack', returnCode: 0 },
    'CONNACK after a 3-frame CONNECT',
  )
  const subscribe = encode({
    cmd: 'subscribe',
    messageId: 1,
    subscriptions: [{ topic: 'raw/split', qos: 0 }],
  })
  split.ws.send(subscribe.subarray(0, 3))
  split.ws.send(subscribe.subarray(3))
  await split.next('suback')
  const payload = pattern(3000)
  const publish = encode({
    cmd: 'publish',
    topic: 'raw/split',
    payload,
    qos: 0,
    dup: false,
    retain: false,
  })
  for (let i = 0; i < publish.length; i += 700) split.ws.send(publish.subarray(i, i + 700))
  const echoed = await split.next('publish')
  t.equal(
    sha256((echoed as { payload: Buffer }).payload),
    sha256(payload),
    'a PUBLISH cut into 5 frames arrives whole',
  )

  const packed = await openRawClient(t, gw.url)
  packed.ws.send(
    Buffer.concat([
      connectPacket('packed-client'),
      encode({ cmd: 'subscribe', messageId: 7, subscriptions: [{ topic: 'raw/packed', qos: 0 }] }),
      encode({
        cmd: 'publish',
        topic: 'raw/packed',
        payload: Buffer.from('three in one'),
        qos: 0,
        dup: false,
        retain: false,
      }),
    ]),
  )
  t.match(await packed.next('connack'), { returnCode: 0 })
  t.match(await packed.next('suback'), { messageId: 7 })
  t.match(await packed.next('publish'), {
    topic: 'raw/packed',
    payload: Buffer.from('three in one'),
  })
})

t.test('a text frame is closed with 1003 [MQTT-6.0.0-1]', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port)
  const client = await openRawClient(t, gw.url)
  client.ws.send('CONNECT as text')
  const closed = await client.closed
  t.equal(closed.code, 1003)
  t.match(closed.reason, /text frames are not allowed/)
  const line = await gw.waitForLog((l) => l.msg === 'connection closed')
  t.match(line, { code: 1003, initiator: 'gateway', bytesToBroker: 0 })
})

/** A masked client frame (RFC 6455 5.2), payload under 126 bytes. */
function maskedFrame(opcode: number, payload: Buffer): Buffer {
  const mask = Buffer.from([0x12, 0x34, 0x56, 0x78])
  const masked = Buffer.from(payload.map((byte, i) => byte ^ (mask[i % 4] ?? 0)))
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length]), mask, masked])
}

t.test(
  'a close frame whose reason is not UTF-8 is answered with 1007 (RFC 6455 8.1)',
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const gw = await startTestGateway(t, broker.port)
    const socket = net.connect(gw.port, '127.0.0.1')
    t.teardown(() => socket.destroy())
    socket.write(`${upgradeRequest('/mqtt').join('\r\n')}\r\n\r\n`)
    let received = Buffer.alloc(0)
    const closeFrame = new Promise<Buffer>((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        received = Buffer.concat([received, chunk])
        const end = received.indexOf('\r\n\r\n')
        // The server's close frame follows the 101: FIN + opcode 8, its code in 2 bytes.
        if (end !== -1 && received.length >= end + 4 + 4) resolve(received.subarray(end + 4))
      })
    })
    await once(socket, 'data')
    t.match(received.toString('latin1'), /^HTTP\/1\.1 101 /)
    socket.write(maskedFrame(0x8, Buffer.from([0x03, 0xe8, 0xff, 0xfe])))
    const frame = await closeFrame
    t.equal(frame[0], 0x88, 'a close frame')
    t.equal(frame.readUInt16BE(2), 1007)
    const line = await gw.waitForLog((l) => l.msg === 'connection closed')
    t.match(line, { code: 1007, initiator: 'gateway' })
  },
)

t.test('a message over ws.maxPayload is closed with 1009', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_WS_MAX_PAYLOAD: '1KiB' })
  const client = await openRawClient(t, gw.url)
  client.ws.send(Buffer.alloc(1025))
  const closed = await client.closed
  t.equal(closed.code, 1009)
  const line = await gw.waitForLog((l) => l.msg === 'connection closed')
  t.match(line, { code: 1009, initiator: 'gateway' })
})

t.test('broker bytes reach the client byte for byte in binary frames', async (t) => {
  const data = pattern(5 * 1024 * 1024, 3)
  const port = await fakeBroker(t, (socket) => socket.end(data))
  // A byte pattern, not MQTT: the blind pipe (mqtt.inspect=false) forwards anything.
  const gw = await startTestGateway(t, port, { DRAWBRIDGE_MQTT_INSPECT: 'false' })
  const ws = new WebSocket(gw.url, ['mqtt'])
  t.teardown(() => ws.terminate())
  const chunks: Buffer[] = []
  let allBinary = true
  ws.on('message', (chunk: Buffer, isBinary) => {
    allBinary &&= isBinary
    chunks.push(chunk)
  })
  const [code, reason] = (await once(ws, 'close')) as [number, Buffer]
  t.equal(sha256(Buffer.concat(chunks)), sha256(data), '5 MiB arrive unchanged')
  t.ok(allBinary, 'every frame is binary')
  t.equal(code, 1000, 'broker end closes the WebSocket with 1000')
  t.equal(reason.toString(), 'broker closed the connection')
})

t.test('a broker reset closes the WebSocket with 1011 and the cause', async (t) => {
  const port = await fakeBroker(t, (socket) => {
    socket.once('data', () => socket.resetAndDestroy())
  })
  const gw = await startTestGateway(t, port)
  const client = await openRawClient(t, gw.url)
  client.ws.send(connectPacket('reset-me'))
  const closed = await client.closed
  t.equal(closed.code, 1011)
  t.equal(closed.reason, 'broker connection failed: ECONNRESET')
  const line = await gw.waitForLog((l) => l.msg === 'connection closed')
  t.match(line, { code: 1011, initiator: 'broker' })
})

t.test('a client close ends the broker connection', async (t) => {
  let brokerSawEnd: () => void = () => undefined
  const ended = new Promise<void>((resolve) => (brokerSawEnd = resolve))
  const port = await fakeBroker(t, (socket) => {
    socket.on('data', () => undefined)
    socket.on('end', () => {
      brokerSawEnd()
      socket.end()
    })
  })
  const gw = await startTestGateway(t, port)
  const client = await openRawClient(t, gw.url)
  client.ws.close(1000, 'bye')
  await ended
  const line = await gw.waitForLog((l) => l.msg === 'connection closed')
  t.match(line, { code: 1000, initiator: 'client', reason: 'bye' })
})

for (const kind of BROKER_KINDS) {
  t.test(
    `${kind}: the will is sent after an abrupt drop, not after a clean DISCONNECT`,
    async (t) => {
      const broker = await startBroker(t, kind)
      const gw = await startTestGateway(t, broker.port)
      const watcher = await connectAsync(`mqtt://127.0.0.1:${broker.port}`, { reconnectPeriod: 0 })
      t.teardown(() => watcher.endAsync(true))
      await watcher.subscribeAsync('will/#', { qos: 1 })
      const wills: string[] = []
      watcher.on('message', (topic) => wills.push(topic))

      const will = {
        topic: 'will/abrupt',
        payload: Buffer.from('gone'),
        qos: 1 as const,
        retain: false,
      }
      const abrupt = await openRawClient(t, gw.url)
      abrupt.ws.send(connectPacket('abrupt', { will }))
      await abrupt.next('connack')
      const arrived = nextMessage(watcher, 'will/abrupt')
      abrupt.ws.terminate() // TCP torn down, no close frame, no DISCONNECT
      t.equal((await arrived).payload.toString(), 'gone', 'will published after an abrupt drop')

      const clean = await openRawClient(t, gw.url)
      clean.ws.send(connectPacket('clean', { will: { ...will, topic: 'will/clean' } }))
      await clean.next('connack')
      clean.ws.send(encode({ cmd: 'disconnect' }))
      clean.ws.close(1000)
      await clean.closed
      await gw.waitForLog(
        (l) =>
          l.msg === 'connection closed' &&
          l.bytesToBroker ===
            connectPacket('clean', { will: { ...will, topic: 'will/clean' } }).length + 2,
      )
      // The close is logged once the broker has closed its side, which it does after handling
      // the DISCONNECT: a will it wrongly sent was queued to the watcher by then. The broker
      // delivers to the watcher in the order it handled the publishes, so the watcher's own
      // publish, sent now, arrives after any such will.
      const fence = nextMessage(watcher, 'will/fence')
      await watcher.publishAsync('will/fence', 'fence', { qos: 1 })
      await fence
      t.same(wills, ['will/abrupt', 'will/fence'], 'no will after a clean DISCONNECT')
    },
  )
}

t.test('pings: a client that answers stays, one that does not is terminated', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startTestGateway(t, broker.port, {
    DRAWBRIDGE_WS_PING_INTERVAL: '150ms',
    DRAWBRIDGE_WS_PONG_TIMEOUT: '150ms',
  })
  const lively = new WebSocket(gw.url, ['mqtt'])
  const silent = new WebSocket(gw.url, ['mqtt'], { autoPong: false })
  t.teardown(() => {
    lively.terminate()
    silent.terminate()
  })
  let pings = 0
  lively.on('ping', () => pings++)
  await Promise.all([once(lively, 'open'), once(silent, 'open')])
  const [code] = (await once(silent, 'close')) as [number]
  t.equal(code, 1006, 'the silent client was cut without a close frame')
  const line = await gw.waitForLog(
    (l) => l.msg === 'connection closed' && l.reason === 'ping timeout',
  )
  t.match(line, { initiator: 'gateway' })
  // The gateway pings a client again only once it has its pong to the last ping, and sweeps
  // for overdue pongs on every ping interval: two more pings after the silent one was cut mean
  // two more sweeps passed over the answering client.
  const wanted = Math.max(3, pings + 2)
  await new Promise<void>((resolve, reject) => {
    const settle = (err?: Error): void => {
      clearTimeout(deadline)
      lively.off('ping', onPing)
      lively.off('close', onClose)
      if (err) reject(err)
      else resolve()
    }
    const onPing = (): void => {
      if (pings >= wanted) settle()
    }
    const onClose = (code: number): void => settle(new Error(`answering client closed: ${code}`))
    const deadline = setTimeout(() => settle(new Error(`${pings} of ${wanted} pings`)), 5_000)
    lively.on('ping', onPing)
    lively.on('close', onClose)
    // Cut in the same sweep as the silent one, it has closed already.
    if (lively.readyState !== WebSocket.OPEN) settle(new Error('answering client closed'))
  })
  t.equal(lively.readyState, WebSocket.OPEN, 'the answering client is still open')
  t.ok(pings >= 3, `the answering client was pinged repeatedly (${pings})`)
})

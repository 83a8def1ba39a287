// Memory stays bounded when one side is slower than the other. The gateway runs as its own
// process so its resident memory can be read from /proc while 50 MiB wait on the other side.
import { once } from 'node:events'
import net from 'node:net'
import t from 'tap'
import { WebSocket } from 'ws'
import { pattern, sha256 } from './helpers/mqtt.js'
import { listeningPort, spawnGateway, type GatewayProcess } from './helpers/process.js'
import { eventually } from './helpers/scrape.js'
import { zeroWindow } from './helpers/tcp.js'

const TOTAL = 50 * 1024 * 1024
const CHUNK = 64 * 1024
// Kernel socket buffers on loopback hold a few MiB each way, plus limits.highWaterMark; the
// gateway must not add the 50 MiB on top.
const MAX_GROWTH = 24 * 1024 * 1024

/** A connection as /proc/net/tcp names it: the sender's local port, then the receiver's. */
type Hop = readonly [from: number, to: number]

/**
 * Waits until the paused pipe has filled up for good, or `finished()` says the writer got
 * everything through (no backpressure at all: the caller's assertions then fail). Filled up for
 * good: on both hops the kernel holds data on a zero window, and the gateway reads next to
 * nothing during `roundTrip()`, a message through it the other way: the event-loop turn that
 * carries that message would also have read the paused side, full and so readable, had the
 * gateway not stopped reading it (a read takes up to 64 KiB). Three such round trips in a row,
 * so a turn that came just as the gateway had emptied its buffer does not pass for a stall.
 */
async function waitForStall(options: {
  gw: GatewayProcess
  hops: readonly [Hop, Hop]
  roundTrip: () => Promise<void>
  finished: () => boolean
}): Promise<boolean> {
  const full = (): boolean => options.hops.every(([from, to]) => zeroWindow(from, to))
  // The round trip's own few bytes, and the event loop's 8-byte wake-ups.
  const quiet = 1024
  const roundTrip = async (): Promise<void> => {
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error('no round trip through the gateway in 5 s')), 5_000)
    })
    try {
      await Promise.race([options.roundTrip(), late])
    } finally {
      clearTimeout(timer)
    }
  }
  return eventually(
    async () => {
      if (options.finished()) return true
      for (let i = 0; i < 3; i++) {
        if (!full()) return false
        const before = options.gw.bytesRead()
        await roundTrip()
        if (options.gw.bytesRead() - before >= quiet) return false
      }
      return full()
    },
    20_000,
    20,
  )
}

function gatewayEnv(brokerPort: number): Record<string, string> {
  return {
    DRAWBRIDGE_PROFILE: 'production',
    DRAWBRIDGE_LISTEN_HOST: '127.0.0.1',
    DRAWBRIDGE_LISTEN_PORT: '0',
    DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${brokerPort}`,
    DRAWBRIDGE_LIMITS_HIGH_WATER_MARK: '256KiB',
    DRAWBRIDGE_WS_PING_INTERVAL: '0',
    // The fake brokers here treat every TCP connection as the client's; the readiness check's
    // own connects would be counted as client traffic.
    DRAWBRIDGE_ADMIN_ENABLED: 'false',
    // The 50 MiB are a byte pattern, not MQTT packets: this measures the blind pipe.
    DRAWBRIDGE_MQTT_INSPECT: 'false',
  }
}

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as net.AddressInfo).port
}

t.test('slow WebSocket reader: the broker is paused, gateway memory stays flat', async (t) => {
  const block = pattern(CHUNK, 9)
  let written = 0
  let brokerBlocked = false
  let brokerSocket: net.Socket | undefined
  const server = net.createServer((socket) => {
    brokerSocket = socket
    socket.on('error', () => undefined)
    // Write as fast as the gateway accepts, honouring its backpressure like a real broker.
    const pump = (): void => {
      while (written < TOTAL) {
        written += CHUNK
        if (!socket.write(block)) {
          brokerBlocked = true
          socket.once('drain', pump)
          return
        }
      }
      socket.end()
    }
    pump()
  })
  const port = await listen(server)
  t.teardown(() => server.close())
  const gw = spawnGateway(t, gatewayEnv(port))
  const gwPort = await listeningPort(gw)
  const url = `ws://127.0.0.1:${gwPort}/mqtt`
  // 'gateway listening' is the last thing start-up does.
  const baseline = gw.rss()

  const ws = new WebSocket(url, ['mqtt'])
  t.teardown(() => ws.terminate())
  let clientPort = 0
  ws.once('upgrade', (res) => (clientPort = res.socket.localPort ?? 0))
  await once(ws, 'open')
  ws.pause() // the slow reader: nothing is read from its TCP socket
  const broker = brokerSocket
  if (broker === undefined) throw new Error('the gateway opened no broker connection')
  const stalled = await waitForStall({
    // broker -> gateway, which must stop reading it; gateway -> the paused reader.
    hops: [
      [port, broker.remotePort ?? 0],
      [gwPort, clientPort],
    ],
    gw,
    // A PINGREQ's bytes, client to broker.
    roundTrip: async () => {
      const arrived = once(broker, 'data')
      ws.send(Buffer.from([0xc0, 0x00]))
      await arrived
    },
    finished: () => written >= TOTAL,
  })
  t.ok(stalled, 'the pipe filled up and stopped')
  const growth = gw.rss() - baseline
  t.ok(brokerBlocked, 'the broker saw backpressure')
  t.ok(
    written < TOTAL / 2,
    `the broker could write only ${(written / 2 ** 20).toFixed(1)} MiB of 50`,
  )
  t.ok(growth < MAX_GROWTH, `gateway RSS grew ${(growth / 2 ** 20).toFixed(1)} MiB while paused`)

  let received = 0
  const hash = (await import('node:crypto')).createHash('sha256')
  ws.on('message', (data: Buffer) => {
    received += data.length
    hash.update(data)
  })
  ws.resume()
  await once(ws, 'close')
  t.equal(received, TOTAL, 'all 50 MiB arrived after the reader resumed')
  const expected = (await import('node:crypto')).createHash('sha256')
  for (let i = 0; i < TOTAL / CHUNK; i++) expected.update(block)
  t.equal(hash.digest('hex'), expected.digest('hex'), 'byte-exact')
})

t.test('slow broker reader: the WebSocket is paused, gateway memory stays flat', async (t) => {
  let brokerSocket: net.Socket | undefined
  let receivedAtBroker = 0
  const hash = (await import('node:crypto')).createHash('sha256')
  let allArrived: () => void = () => undefined
  const arrivedOrDeadline = new Promise<void>((resolve) => {
    allArrived = resolve
  })
  const server = net.createServer((socket) => {
    brokerSocket = socket
    socket.on('error', () => undefined)
    socket.pause() // the broker does not read
    socket.on('data', (data: Buffer) => {
      receivedAtBroker += data.length
      hash.update(data)
      if (receivedAtBroker >= TOTAL) allArrived()
    })
  })
  const port = await listen(server)
  t.teardown(() => {
    brokerSocket?.destroy()
    server.close()
  })
  const gw = spawnGateway(t, gatewayEnv(port))
  const gwPort = await listeningPort(gw)
  const url = `ws://127.0.0.1:${gwPort}/mqtt`
  // 'gateway listening' is the last thing start-up does.
  const baseline = gw.rss()

  const ws = new WebSocket(url, ['mqtt'])
  t.teardown(() => ws.terminate())
  let clientPort = 0
  ws.once('upgrade', (res) => (clientPort = res.socket.localPort ?? 0))
  await once(ws, 'open')
  const broker = brokerSocket
  if (broker === undefined) throw new Error('the gateway opened no broker connection')
  const block = pattern(CHUNK, 4)
  for (let sent = 0; sent < TOTAL; sent += CHUNK) ws.send(block)
  const stalled = await waitForStall({
    // client -> gateway, which must stop reading it; gateway -> the paused broker.
    hops: [
      [clientPort, gwPort],
      [broker.remotePort ?? 0, port],
    ],
    gw,
    // A PINGRESP's bytes, broker to client.
    roundTrip: async () => {
      const arrived = once(ws, 'message')
      broker.write(Buffer.from([0xd0, 0x00]))
      await arrived
    },
    finished: () => ws.bufferedAmount === 0,
  })
  t.ok(stalled, 'the pipe filled up and stopped')
  const growth = gw.rss() - baseline
  t.ok(ws.bufferedAmount > TOTAL / 2, 'most of the 50 MiB is still waiting on the client side')
  t.ok(growth < MAX_GROWTH, `gateway RSS grew ${(growth / 2 ** 20).toFixed(1)} MiB while paused`)

  broker.resume()
  const deadline = setTimeout(allArrived, 30_000)
  await arrivedOrDeadline
  clearTimeout(deadline)
  t.equal(receivedAtBroker, TOTAL, 'all 50 MiB reached the broker once it read again')
  t.equal(
    hash.digest('hex'),
    sha256(Buffer.concat(Array.from({ length: TOTAL / CHUNK }, () => block))),
    'byte-exact',
  )
})

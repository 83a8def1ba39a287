// Memory stays bounded when one side is slower than the other. The gateway runs as its own
// process so its resident memory can be read from /proc while 50 MiB wait on the other side.
import { once } from 'node:events'
import net from 'node:net'
import t from 'tap'
import { WebSocket } from 'ws'
import { pattern, sha256 } from './helpers/mqtt.js'
import { listeningPort, spawnGateway } from './helpers/process.js'

const TOTAL = 50 * 1024 * 1024
const CHUNK = 64 * 1024
// Kernel socket buffers on loopback hold a few MiB each way, plus limits.highWaterMark; the
// gateway must not add the 50 MiB on top.
const MAX_GROWTH = 24 * 1024 * 1024

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

function gatewayEnv(brokerPort: number): Record<string, string> {
  return {
    DRAWBRIDGE_PROFILE: 'production',
    DRAWBRIDGE_LISTEN_HOST: '127.0.0.1',
    DRAWBRIDGE_LISTEN_PORT: '0',
    DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${brokerPort}`,
    DRAWBRIDGE_LIMITS_HIGH_WATER_MARK: '256KiB',
    DRAWBRIDGE_WS_PING_INTERVAL: '0',
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
  const server = net.createServer((socket) => {
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
  const url = `ws://127.0.0.1:${await listeningPort(gw)}/mqtt`
  await delay(300)
  const baseline = gw.rss()

  const ws = new WebSocket(url, ['mqtt'])
  t.teardown(() => ws.terminate())
  await once(ws, 'open')
  ws.pause() // the slow reader: nothing is read from its TCP socket
  await delay(2_000)
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
  const server = net.createServer((socket) => {
    brokerSocket = socket
    socket.on('error', () => undefined)
    socket.pause() // the broker does not read
    socket.on('data', (data: Buffer) => {
      receivedAtBroker += data.length
      hash.update(data)
    })
  })
  const port = await listen(server)
  t.teardown(() => {
    brokerSocket?.destroy()
    server.close()
  })
  const gw = spawnGateway(t, gatewayEnv(port))
  const url = `ws://127.0.0.1:${await listeningPort(gw)}/mqtt`
  await delay(300)
  const baseline = gw.rss()

  const ws = new WebSocket(url, ['mqtt'])
  t.teardown(() => ws.terminate())
  await once(ws, 'open')
  const block = pattern(CHUNK, 4)
  for (let sent = 0; sent < TOTAL; sent += CHUNK) ws.send(block)
  await delay(2_000)
  const growth = gw.rss() - baseline
  t.ok(ws.bufferedAmount > TOTAL / 2, 'most of the 50 MiB is still waiting on the client side')
  t.ok(growth < MAX_GROWTH, `gateway RSS grew ${(growth / 2 ** 20).toFixed(1)} MiB while paused`)

  brokerSocket?.resume()
  const deadline = Date.now() + 30_000
  while (receivedAtBroker < TOTAL && Date.now() < deadline) await delay(50)
  t.equal(receivedAtBroker, TOTAL, 'all 50 MiB reached the broker once it read again')
  t.equal(
    hash.digest('hex'),
    sha256(Buffer.concat(Array.from({ length: TOTAL / CHUNK }, () => block))),
    'byte-exact',
  )
})

// The MQTT framer on its own, in this process: nanoseconds per packet pushed, and the heap a
// framer pair (one connection's two directions) holds. Reads the build in dist/ (npm run
// build), or another one: node --expose-gc bench/framer-micro.mjs [DIST]
// Every loop runs a fixed count; the whole script takes a few seconds.
import { Buffer } from 'node:buffer'
import path from 'node:path'
import process from 'node:process'
import { fileURLToPath, pathToFileURL } from 'node:url'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const dist = path.resolve(process.argv[2] ?? path.join(HERE, '..', 'dist'))
const { MqttFramer } = await import(pathToFileURL(path.join(dist, 'mqtt', 'framer.js')).href)

function publish(size) {
  const topic = Buffer.from('bench/t/1')
  let rest = 2 + topic.length + size
  const length = []
  do {
    let digit = rest % 128
    rest = Math.floor(rest / 128)
    if (rest > 0) digit |= 0x80
    length.push(digit)
  } while (rest > 0)
  return Buffer.concat([
    Buffer.from([0x30, ...length, 0, topic.length]),
    topic,
    Buffer.alloc(size, 0x61),
  ])
}

// MQTT 3.1.1: CONNECT "client", clean session, keepalive 0; CONNACK accepted.
const CONNECT = Buffer.concat([
  Buffer.from([0x10, 0x12, 0x00, 0x04]),
  Buffer.from('MQTT'),
  Buffer.from([0x04, 0x02, 0x00, 0x00, 0x00, 0x06]),
  Buffer.from('client'),
])
const CONNACK = Buffer.from([0x20, 0x02, 0x00, 0x00])
const events = {
  mqttPacket: (_type, _flags, size) => size <= 16 * 1024 * 1024,
  mqttConnect() {},
  mqttConnack() {},
}

function connected() {
  const pair = MqttFramer.pair({ client: events, broker: events })
  if (pair.fromClient.push(CONNECT).forward !== CONNECT.length) throw new Error('CONNECT')
  pair.fromBroker.push(CONNACK)
  return pair
}

/** ns per packet: `chunks` pushed `rounds` times to one side, `packets` packets in all. */
function time(framer, chunks, packets, rounds) {
  let forwarded = 0
  // CPU time, not wall time: on a shared host this process may wait for a core mid-loop.
  const t0 = process.cpuUsage()
  for (let r = 0; r < rounds; r++) {
    for (const chunk of chunks) {
      const result = framer.push(chunk)
      forwarded += result.forward + (result.released?.length ?? 0)
    }
  }
  const used = process.cpuUsage(t0)
  const ns = (used.user + used.system) * 1000
  const bytes = chunks.reduce((n, c) => n + c.length, 0) * rounds
  if (forwarded !== bytes) throw new Error(`forwarded ${forwarded} of ${bytes} bytes`)
  return ns / (packets * rounds)
}

const cases = {
  // A client's frames: one PUBLISH per WebSocket message.
  'client, 64 B, 1 per push': () => [connected().fromClient, [publish(64)], 1, 1_000_000],
  'client, 1 KiB, 1 per push': () => [connected().fromClient, [publish(1024)], 1, 1_000_000],
  // A broker's reads: many PUBLISHes per TCP read.
  'broker, 64 B, 16 per push': () => [
    connected().fromBroker,
    [Buffer.concat(Array(16).fill(publish(64)))],
    16,
    100_000,
  ],
  // Reads cut every 1,001 bytes: headers straddle chunks now and then.
  'broker, 64 B, cut anywhere': () => {
    const stream = Buffer.concat(Array(64).fill(publish(64)))
    const chunks = []
    for (let at = 0; at < stream.length; at += 1001) chunks.push(stream.subarray(at, at + 1001))
    return [connected().fromBroker, chunks, 64, 20_000]
  },
}
process.stdout.write(`framer from ${dist}\nCPU ns per packet, best of 5:\n`)
for (const [name, make] of Object.entries(cases)) {
  let best = Infinity
  for (let i = 0; i < 5; i++) best = Math.min(best, time(...make()))
  process.stdout.write(`${best.toFixed(1).padStart(8)}  ${name}\n`)
}

if (typeof globalThis.gc === 'function') {
  const heap = () => {
    globalThis.gc()
    globalThis.gc()
    return process.memoryUsage()
  }
  const n = 20_000
  const keep = []
  const before = heap()
  for (let i = 0; i < n; i++) {
    const { fromClient, fromBroker } = connected()
    // A header across two chunks on each side.
    const p = publish(8)
    fromClient.push(p.subarray(0, 1))
    fromClient.push(p.subarray(1))
    fromBroker.push(p.subarray(0, 1))
    fromBroker.push(p.subarray(1))
    keep.push(fromClient, fromBroker)
  }
  const after = heap()
  process.stdout.write(
    `heap per framer pair (connected, a header split each way): ${((after.heapUsed - before.heapUsed) / n).toFixed(0)} B; off the heap (ArrayBuffers): ${((after.arrayBuffers - before.arrayBuffers) / n).toFixed(0)} B\n`,
  )
  if (keep.length !== 2 * n) throw new Error('kept')
} else {
  process.stdout.write('(run with node --expose-gc for the heap per framer pair)\n')
}

// The load generator: a child process of bench/run.mjs, driven over the IPC channel. It speaks
// MQTT 3.1.1 with hand-encoded packets (bench/lib/mqtt.mjs) over plain TCP, ws or wss, so its
// own CPU per message stays small next to the system under test's. Every loop is bounded by a
// count and a deadline.
//
// Protocol: the parent sends { id, cmd, ...params }; for measured workloads the generator first
// answers { id, ready: true } once every connection is set up, waits for { id, go: true }, then
// answers { id, result }. Errors come back as { id, error }.
import { Buffer } from 'node:buffer'
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { performance } from 'node:perf_hooks'
import process from 'node:process'
import { clearInterval, clearTimeout, setImmediate, setInterval, setTimeout } from 'node:timers'
import tls from 'node:tls'
import WebSocket from 'ws'
import {
  CONNACK,
  connect,
  DISCONNECT,
  PacketStream,
  publish,
  PUBLISH,
  SUBACK,
  subscribe,
} from './lib/mqtt.mjs'

const WS_HIGH_WATER = 256 * 1024

function deadline(ms, what) {
  let timer
  const promise = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)
  })
  return { promise, cancel: () => clearTimeout(timer) }
}

async function within(ms, what, promise) {
  const d = deadline(ms, what)
  try {
    return await Promise.race([promise, d.promise])
  } finally {
    d.cancel()
  }
}

/**
 * One MQTT connection over the target's transport. `onData` receives raw stream chunks.
 * send() returns false when the transport is backed up; drained() resolves when it is not.
 */
function openTransport(target, onData) {
  return new Promise((resolve, reject) => {
    if (target.kind === 'tcp') {
      const socket = net.connect({ host: target.host, port: target.port, noDelay: true })
      socket.once('error', reject)
      socket.once('connect', () => {
        socket.removeListener('error', reject)
        socket.on('error', () => {})
        socket.on('data', onData)
        resolve({
          send: (buf) => socket.write(buf),
          cork: () => socket.cork(),
          uncork: () => socket.uncork(),
          drained: () => new Promise((r) => socket.once('drain', r)),
          close: () =>
            new Promise((r) => {
              if (socket.destroyed) return r()
              socket.once('close', r)
              socket.end(DISCONNECT)
            }),
        })
      })
      return
    }
    const scheme = target.kind === 'wss' ? 'wss' : 'ws'
    const ws = new WebSocket(
      `${scheme}://${target.host}:${target.port}${target.path}`,
      target.protocol ? [target.protocol] : [],
      { rejectUnauthorized: false, perMessageDeflate: false, skipUTF8Validation: true },
    )
    ws.binaryType = 'nodebuffer'
    ws.once('error', reject)
    ws.once('open', () => {
      ws.removeListener('error', reject)
      ws.on('error', () => {})
      ws.on('message', onData)
      resolve({
        send: (buf) => {
          ws.send(buf)
          return ws.bufferedAmount < WS_HIGH_WATER
        },
        // ws has no cork of its own; corking its socket puts a burst of frames in one write.
        cork: () => ws._socket.cork(),
        uncork: () => ws._socket.uncork(),
        drained: () =>
          new Promise((r) => {
            const sock = ws._socket
            if (sock && ws.bufferedAmount >= WS_HIGH_WATER) sock.once('drain', r)
            else setImmediate(r)
          }),
        close: () =>
          new Promise((r) => {
            if (ws.readyState === WebSocket.CLOSED) return r()
            ws.once('close', r)
            ws.send(DISCONNECT)
            ws.close(1000)
          }),
      })
    })
  })
}

/** Opens a transport and completes CONNECT/CONNACK (and SUBSCRIBE/SUBACK when `topic`). */
async function mqttClient(target, clientId, onPublish, topic) {
  let waiting
  const stream = new PacketStream((type, buf, start, end, body) => {
    if (type === PUBLISH) onPublish(buf, body)
    else if ((type === CONNACK || type === SUBACK) && waiting) {
      const w = waiting
      waiting = undefined
      if (type === CONNACK && buf[start + 3] !== 0)
        w.reject(new Error(`CONNACK rc ${buf[start + 3]}`))
      else w.resolve()
    }
    void end
  })
  const expect = () => new Promise((resolve, reject) => (waiting = { resolve, reject }))
  const conn = await openTransport(target, (chunk) => stream.push(chunk))
  const connack = expect()
  conn.send(connect(clientId))
  await within(10_000, 'CONNACK', connack)
  if (topic !== undefined) {
    const suback = expect()
    conn.send(subscribe(topic))
    await within(10_000, 'SUBACK', suback)
  }
  return conn
}

function payloadStart(buf, body) {
  return body + 2 + buf.readUInt16BE(body)
}

let goResolvers = new Map()
function waitGo(id) {
  process.send({ id, ready: true })
  return new Promise((resolve) => goResolvers.set(id, resolve))
}

/** Throughput: `pairs` publisher/subscriber pairs, `count` QoS 0 messages each, windowed. */
async function throughput({ id, target, pairs, count, size, window, maxSeconds }) {
  const tag = randomBytes(4).toString('hex')
  const state = []
  let done
  const finished = new Promise((resolve) => (done = resolve))
  let remainingPairs = pairs
  let lastProgress = 0
  for (let i = 0; i < pairs; i++) {
    const topic = `bench/${tag}/${i}`
    const { packet, payloadOffset } = publish(topic, Math.max(size, 8))
    const s = {
      i,
      sent: 0,
      received: 0,
      expected: 0,
      errors: 0,
      packet,
      payloadOffset,
      pub: undefined,
      pumping: false,
      done: false,
    }
    state.push(s)
    const onPublish = (buf, body) => {
      const seq = buf.readUInt32BE(payloadStart(buf, body))
      if (seq !== s.expected) s.errors++
      s.expected = seq + 1
      s.received++
      lastProgress = performance.now()
      if (s.received >= count && !s.done) {
        s.done = true
        if (--remainingPairs === 0) done()
      }
    }
    s.sub = await mqttClient(
      target,
      `sub-${tag}-${i}`,
      (buf, body) => {
        onPublish(buf, body)
        if (!s.pumping && s.sent - s.received <= window / 2) pump(s)
      },
      topic,
    )
    s.pub = await mqttClient(target, `pub-${tag}-${i}`, () => {})
  }

  // The publisher refills its window in bursts (when half of it has been delivered), one
  // frame per MQTT packet, the burst corked into one write: a busy client, not a chatty one.
  let stopped = false
  function pump(s) {
    if (stopped || s.sent >= count) return
    s.pumping = true
    s.pub.cork()
    let full = false
    while (s.sent < count && s.sent - s.received < window) {
      const buf = Buffer.allocUnsafe(s.packet.length)
      s.packet.copy(buf)
      buf.writeUInt32BE(s.sent, s.payloadOffset)
      s.sent++
      if (!s.pub.send(buf)) {
        full = true
        break
      }
    }
    s.pub.uncork()
    if (full) {
      void s.pub.drained().then(() => pump(s))
      return
    }
    s.pumping = false
  }

  await waitGo(id)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  lastProgress = t0
  for (const s of state) pump(s)
  // Bounded: the whole run by maxSeconds, and a stall (messages lost in a full queue) by 5 s.
  const watchdog = setInterval(() => {
    const now = performance.now()
    if (now - t0 > maxSeconds * 1000 || now - lastProgress > 5_000) done()
  }, 250)
  await finished
  stopped = true
  clearInterval(watchdog)
  const seconds = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const sent = state.reduce((a, s) => a + s.sent, 0)
  const delivered = state.reduce((a, s) => a + s.received, 0)
  const errors = state.reduce((a, s) => a + s.errors, 0)
  setImmediate(() => void closeAll(state.flatMap((s) => [s.pub, s.sub])))
  return {
    sent,
    delivered,
    seqErrors: errors,
    seconds,
    loadgenCpuUtil: (cpu.user + cpu.system) / 1e6 / seconds,
  }
}

async function closeAll(conns) {
  await within(
    20_000,
    'closing connections',
    Promise.all(conns.filter(Boolean).map((c) => c.close())),
  ).catch(() => {})
}

/** Latency: one pair at a fixed rate; each payload carries its send time. */
async function latency({ id, target, rate, seconds, size, warmup }) {
  const tag = randomBytes(4).toString('hex')
  const topic = `bench/${tag}/lat`
  const total = Math.round(rate * seconds)
  const samples = new Float64Array(total)
  let received = 0
  let done
  const finished = new Promise((resolve) => (done = resolve))
  const sub = await mqttClient(
    target,
    `lsub-${tag}`,
    (buf, body) => {
      const now = performance.now()
      const off = payloadStart(buf, body)
      const seq = buf.readUInt32BE(off)
      if (seq < total) samples[seq] = now - buf.readDoubleBE(off + 4)
      if (++received >= total) done()
    },
    topic,
  )
  const pub = await mqttClient(target, `lpub-${tag}`, () => {})
  const { packet, payloadOffset } = publish(topic, Math.max(size, 12))
  await waitGo(id)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  let sent = 0
  const ticker = setInterval(() => {
    const due = Math.min(total, Math.floor(((performance.now() - t0) * rate) / 1000))
    while (sent < due) {
      const buf = Buffer.allocUnsafe(packet.length)
      packet.copy(buf)
      buf.writeUInt32BE(sent, payloadOffset)
      buf.writeDoubleBE(performance.now(), payloadOffset + 4)
      sent++
      pub.send(buf)
    }
    if (sent >= total) clearInterval(ticker)
  }, 1)
  const limit = setTimeout(done, seconds * 1000 + 5_000)
  await finished
  clearInterval(ticker)
  clearTimeout(limit)
  const wall = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  setImmediate(() => void closeAll([pub, sub]))
  const skip = Math.min(warmup, Math.floor(total / 10))
  const got = Array.from(samples.subarray(skip))
    .filter((v) => v > 0)
    .sort((a, b) => a - b)
  const pct = (p) =>
    got.length === 0 ? NaN : got[Math.min(got.length - 1, Math.floor(p * got.length))]
  return {
    sent,
    delivered: received,
    samples: got.length,
    seconds: wall,
    p50: pct(0.5),
    p99: pct(0.99),
    p999: pct(0.999),
    max: got.length ? got[got.length - 1] : NaN,
    loadgenCpuUtil: (cpu.user + cpu.system) / 1e6 / wall,
  }
}

const idleConns = []
/** With `subscribe`, each idle connection's own topic (idle-traffic publishes to it). */
const idleTopics = []
let idleReceived = 0

/**
 * Idle: opens `clients` MQTT connections (CONNECT/CONNACK, keep-alive off) and holds them.
 * With `subscribe`, each also subscribes to a topic of its own, for idle-traffic.
 */
async function idleOpen({ target, clients, concurrency, subscribe: sub = false }) {
  const tag = randomBytes(4).toString('hex')
  const t0 = performance.now()
  let next = 0
  let failed = 0
  let firstError
  const worker = async () => {
    while (next < clients && performance.now() - t0 < 300_000) {
      const n = next++
      try {
        const topic = sub ? `idle/${tag}/${n}` : undefined
        const conn = await mqttClient(target, `idle-${tag}-${n}`, () => void idleReceived++, topic)
        idleConns.push(conn)
        idleTopics.push(topic)
      } catch (err) {
        failed++
        firstError ??= err.message
      }
      if (n % 1000 === 999) process.send({ progress: `${n + 1}/${clients} connected` })
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return { opened: idleConns.length, failed, firstError, seconds: (performance.now() - t0) / 1000 }
}

/**
 * Some traffic on every idle connection, then idle again: each sends `messages` QoS 0
 * PUBLISHes of `size` bytes to its own topic (so each comes back to it through the broker),
 * every one in two WebSocket frames cut after its first byte, so the packet's header straddles
 * two chunks. Resolves once every message came back, or after `maxSeconds`.
 */
async function idleTraffic({ messages, size, maxSeconds }) {
  const t0 = performance.now()
  const expected = idleReceived + idleConns.length * messages
  for (let i = 0; i < idleConns.length; i++) {
    const topic = idleTopics[i]
    if (topic === undefined) continue
    const { packet } = publish(topic, size)
    for (let k = 0; k < messages; k++) {
      idleConns[i].send(packet.subarray(0, 1))
      idleConns[i].send(packet.subarray(1))
    }
    if (i % 100 === 99) await new Promise((r) => setImmediate(r))
  }
  while (idleReceived < expected && performance.now() - t0 < maxSeconds * 1000) {
    await new Promise((r) => setTimeout(r, 20))
  }
  return {
    expected: idleConns.length * messages,
    received: idleConns.length * messages - (expected - idleReceived),
    seconds: (performance.now() - t0) / 1000,
  }
}

async function idleClose() {
  idleTopics.length = 0
  const conns = idleConns.splice(0)
  await within(60_000, 'closing idle connections', Promise.all(conns.map((c) => c.close()))).catch(
    () => {},
  )
  return { closed: conns.length }
}

function wsFrame(opcode, payload) {
  // Client frames are masked [RFC 6455 5.3]; payloads here are always < 126 bytes.
  const mask = randomBytes(4)
  const out = Buffer.alloc(6 + payload.length)
  out[0] = 0x80 | opcode
  out[1] = 0x80 | payload.length
  mask.copy(out, 2)
  for (let i = 0; i < payload.length; i++) out[6 + i] = payload[i] ^ mask[i & 3]
  return out
}

/** The raw HTTP upgrade request of a set-up or storm client. */
function upgradeRequest(target, key) {
  return (
    `GET ${target.path} HTTP/1.1\r\nHost: ${target.host}:${target.port}\r\nUpgrade: websocket\r\n` +
    `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
    (target.protocol ? `Sec-WebSocket-Protocol: ${target.protocol}\r\n` : '') +
    '\r\n'
  )
}

/**
 * One connection setup, timed by the caller: TLS (or TCP), HTTP upgrade, then CONNECT/CONNACK
 * in a binary frame. Resolves at CONNACK; the close (WebSocket close frame + FIN) goes on in
 * the background and is awaited at the end through `closing`.
 */
function setupOnce(target, session, closing) {
  return new Promise((resolve, reject) => {
    const socket =
      target.kind === 'wss'
        ? tls.connect({ host: target.host, port: target.port, rejectUnauthorized: false, session })
        : net.connect({ host: target.host, port: target.port })
    let newSession
    socket.on('session', (s) => (newSession = s))
    const key = randomBytes(16).toString('base64')
    let stage = 'http'
    let buf = Buffer.alloc(0)
    const timer = setTimeout(() => socket.destroy(new Error('setup took over 10 s')), 10_000)
    closing.push(new Promise((r) => socket.once('close', r)))
    socket.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    socket.once(target.kind === 'wss' ? 'secureConnect' : 'connect', () => {
      socket.write(upgradeRequest(target, key))
    })
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk])
      if (stage === 'http') {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        const head = buf.subarray(0, end).toString('latin1')
        if (!head.startsWith('HTTP/1.1 101')) {
          clearTimeout(timer)
          socket.destroy()
          reject(new Error(`upgrade refused: ${head.split('\r\n')[0]}`))
          return
        }
        buf = buf.subarray(end + 4)
        stage = 'connack'
        socket.write(wsFrame(0x2, connect(`hs-${key}`)))
      }
      // Server frames are unmasked: 0x82, length, payload. CONNACK is 4 bytes.
      if (stage === 'connack' && buf.length >= 6) {
        clearTimeout(timer)
        stage = 'done'
        const ok = buf[0] === 0x82 && buf[2] >> 4 === CONNACK && buf[5] === 0
        const reused = target.kind === 'wss' ? socket.isSessionReused() : false
        const close = Buffer.alloc(2)
        close.writeUInt16BE(1000)
        socket.end(wsFrame(0x8, close))
        setTimeout(() => socket.destroy(), 5_000).unref()
        if (!ok) reject(new Error('no CONNACK'))
        else resolve({ reused, session: newSession })
      }
    })
  })
}

/** Connection setup rate: `count` setups, `concurrency` at a time; optional TLS resumption. */
async function handshake({ id, target, count, concurrency, resume, maxSeconds }) {
  let session
  if (resume) {
    // Get a ticket first (TLS 1.3 tickets arrive after the handshake).
    const closing = []
    const first = await setupOnce(target, undefined, closing)
    await Promise.all(closing)
    session = first.session
  }
  await waitGo(id)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const closing = []
  let next = 0
  let ok = 0
  let failed = 0
  let reused = 0
  let firstError
  const worker = async () => {
    while (next < count && performance.now() - t0 < maxSeconds * 1000) {
      next++
      try {
        const r = await setupOnce(target, resume ? session : undefined, closing)
        ok++
        if (r.reused) reused++
        if (resume && r.session) session = r.session
      } catch (err) {
        failed++
        firstError ??= err.message
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  const seconds = (performance.now() - t0) / 1000
  await within(20_000, 'closing', Promise.all(closing)).catch(() => {})
  const cpu = process.cpuUsage(cpu0)
  const wall = (performance.now() - t0) / 1000
  return {
    ok,
    failed,
    reused,
    firstError,
    seconds,
    closeSeconds: wall,
    loadgenCpuUtil: (cpu.user + cpu.system) / 1e6 / wall,
  }
}

// ---- reconnect storm -------------------------------------------------------------------------

/** The storm's clients that got their CONNACK, kept open until storm-close. */
const stormSockets = []

/**
 * One storm client's attempt: TLS (or TCP), upgrade, CONNECT, and stays open at CONNACK.
 * Resolves with the socket, or rejects with a short reason for the refusal table: `http 503`,
 * `connack 3`, `reset`, `timeout`, `closed`, or the error code.
 */
function stormAttempt(target, clientId, timeoutMs, session) {
  return new Promise((resolve, reject) => {
    const socket =
      target.kind === 'wss'
        ? tls.connect({ host: target.host, port: target.port, rejectUnauthorized: false, session })
        : net.connect({ host: target.host, port: target.port })
    const key = randomBytes(16).toString('base64')
    let stage = 'http'
    let buf = Buffer.alloc(0)
    let settled = false
    const fail = (reason) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      reject(new Error(reason))
    }
    const timer = setTimeout(() => fail('timeout'), timeoutMs)
    socket.once('error', (err) => fail(err.code === 'ECONNRESET' ? 'reset' : (err.code ?? 'error')))
    socket.once('close', () => fail(stage === 'http' ? 'closed before the 101' : 'closed'))
    socket.once(target.kind === 'wss' ? 'secureConnect' : 'connect', () => {
      socket.write(upgradeRequest(target, key))
    })
    socket.on('data', (chunk) => {
      if (settled) return
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
      if (stage === 'http') {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        const status = buf.subarray(0, end).toString('latin1').split(' ', 2)[1]
        if (status !== '101') return fail(`http ${status}`)
        buf = buf.subarray(end + 4)
        stage = 'connack'
        socket.write(wsFrame(0x2, connect(clientId)))
      }
      // Server frames are unmasked: 0x82, length, then the 4-byte CONNACK.
      if (stage === 'connack' && buf.length >= 6) {
        if (buf[0] !== 0x82 || buf[2] >> 4 !== CONNACK) return fail('no CONNACK')
        if (buf[5] !== 0) return fail(`connack ${buf[5]}`)
        settled = true
        clearTimeout(timer)
        socket.removeAllListeners('data')
        socket.removeAllListeners('close')
        socket.on('error', () => {})
        resolve(socket)
      }
    })
  })
}

/**
 * A TLS session ticket for each of `clients` clients, as they would hold one from before an
 * outage: one connection each (50 at a time), to the CONNACK, then closed.
 */
async function stormTickets(target, clients, tag, attemptTimeoutMs) {
  const tickets = new Array(clients)
  let next = 0
  const worker = async () => {
    while (next < clients) {
      const n = next++
      const socket = await stormAttempt(target, `storm-${tag}-${n}`, attemptTimeoutMs).catch(
        () => undefined,
      )
      if (socket === undefined) continue
      // TLS 1.3 tickets arrive after the handshake; the CONNACK came after them.
      tickets[n] = socket.getSession()
      await new Promise((r) => {
        socket.once('close', r)
        socket.destroy()
      })
    }
  }
  await Promise.all(Array.from({ length: 50 }, worker))
  return tickets
}

/**
 * A reconnect storm, as after an outage: `clients` clients all start connecting at once (no
 * pacing), each retrying a refused or failed attempt after `retryMs` (MQTT.js's default
 * reconnectPeriod is 1 s), until each has its CONNACK or `maxSeconds` have passed. With
 * `resume`, each first gets a TLS session ticket and offers it in the storm, as clients that
 * were connected before a broker outage or a network blip do.
 */
async function storm({ id, target, clients, retryMs, attemptTimeoutMs, maxSeconds, tag, resume }) {
  const tickets =
    resume && target.kind === 'wss'
      ? await stormTickets(target, clients, tag, attemptTimeoutMs)
      : []
  await waitGo(id)
  let resumed = 0
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const times = []
  const failures = {}
  let attempts = 0
  const client = (n) =>
    new Promise((done) => {
      const attempt = () => {
        if (performance.now() - t0 > maxSeconds * 1000) return done(false)
        attempts++
        stormAttempt(target, `storm-${tag}-${n}`, attemptTimeoutMs, tickets[n]).then(
          (socket) => {
            if (socket.isSessionReused?.()) resumed++
            stormSockets.push(socket)
            times.push(performance.now() - t0)
            done(true)
          },
          (err) => {
            failures[err.message] = (failures[err.message] ?? 0) + 1
            setTimeout(attempt, retryMs)
          },
        )
      }
      attempt()
    })
  const outcomes = await Promise.all(Array.from({ length: clients }, (_, n) => client(n)))
  const cpu = process.cpuUsage(cpu0)
  const wall = (performance.now() - t0) / 1000
  times.sort((a, b) => a - b)
  const at = (q) =>
    times.length ? times[Math.min(times.length - 1, Math.floor(q * times.length))] : NaN
  return {
    clients,
    connected: outcomes.filter(Boolean).length,
    resumed,
    attempts,
    failures,
    lastMs: times.at(-1) ?? NaN,
    p50Ms: at(0.5),
    p90Ms: at(0.9),
    p99Ms: at(0.99),
    loadgenCpuUtil: (cpu.user + cpu.system) / 1e6 / wall,
  }
}

async function stormClose() {
  const sockets = stormSockets.splice(0)
  const closed = sockets.map(
    (s) =>
      new Promise((r) => {
        if (s.destroyed) return r()
        s.once('close', r)
        const code = Buffer.alloc(2)
        code.writeUInt16BE(1000)
        s.end(wsFrame(0x8, code))
        setTimeout(() => s.destroy(), 5_000).unref()
      }),
  )
  await within(60_000, 'closing storm connections', Promise.all(closed)).catch(() => {})
  return { closed: sockets.length }
}

const handlers = {
  throughput,
  latency,
  'idle-open': idleOpen,
  'idle-traffic': idleTraffic,
  'idle-close': idleClose,
  handshake,
  storm,
  'storm-close': stormClose,
}

process.on('message', (msg) => {
  if (msg.go) {
    goResolvers.get(msg.id)?.()
    goResolvers.delete(msg.id)
    return
  }
  if (msg.cmd === 'exit') process.exit(0)
  const handler = handlers[msg.cmd]
  if (!handler) {
    process.send({ id: msg.id, error: `unknown command ${msg.cmd}` })
    return
  }
  handler(msg).then(
    (result) => process.send({ id: msg.id, result }),
    (err) => process.send({ id: msg.id, error: err instanceof Error ? err.message : String(err) }),
  )
})
process.on('disconnect', () => process.exit(0))

#!/usr/bin/env node
// `npm run bench`: every system under test, each as its own process in front of one broker,
// driven by a load generator in its own process; figures from the kernel's accounting of the
// system under test. Progress on stderr, a markdown report on stdout, results JSON in
// bench/results/. See bench/README.md.
import { execFile, execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import process from 'node:process'
import { clearInterval, clearTimeout, setInterval, setTimeout } from 'node:timers'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs, promisify } from 'node:util'
import {
  effectiveFileLimit,
  freePort,
  rssKiB,
  spawnChild,
  stopChild,
  syscalls,
  treeCpu,
  treeCpuSeconds,
  waitForPort,
} from './lib/proc.mjs'
import { InspectorSession } from './lib/gc.mjs'
import {
  abSystem,
  acceptRateSystem,
  inspectSystem,
  SYSTEMS,
  workersSystem,
} from './lib/systems.mjs'
import { compareReport, report } from './lib/report.mjs'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const run = promisify(execFile)

const USAGE = `Usage: npm run bench -- [options]
  --quick              small counts, whole run under two minutes
  --compare FILE       also show the change against an earlier results JSON
  --systems a,b        only these systems (${SYSTEMS.map((s) => s.name).join(', ')})
  --workloads a,b      only these workloads (throughput, latency, idle, setup, storm,
                       inspect, inspect-memory)
  --storm-clients N    clients of the reconnect storm (default 5000, quick 1000)
  --storm-generators N generator processes for the storm (default: one per core left over
                       by the system under test, at least 1)
  --storm-accept-rate R
                       also run the storm against Drawbridge with limits.acceptRate R/s
                       (default 2000; 0 = not)
  --inspect-rounds N   on/off rounds of the inspect workload (each round runs both, in
                       alternating order; default 6, quick 2)
  --inspect-mode M     together (default): each round runs on and off at the same time,
                       from one start; alternate: one after the other, order alternating
  --inspect-transports ws,wss
                       transports of the inspect and inspect-memory workloads (default both)
  --sizes 64,1024      only these throughput payload sizes
  --idle 1000,10000    idle client counts
  --repeat N           run each throughput/setup measurement N times, keep the least CPU
  --drawbridge-env K=V extra env for the Drawbridge processes (repeatable)
  --ab DIST            also run "drawbridge-ws-ab" and "drawbridge-wss-ab" from another
                       build's dist/ (A/B of a change; pick them with --systems)
  --ab-env K=V         extra env for the -ab systems only (repeatable; A/B of a setting)
  --workers 1,2        also run Drawbridge over ws as N node:cluster workers on one port
  --drawbridge-dist D  run the Drawbridge systems from another build's dist/ (e.g. a merge preview)
  --cpu-prof DIR       run Drawbridge (and the naive bridge) with --cpu-prof, profiles
                       written to DIR
  --node-flag F        an extra node flag for Drawbridge and the naive bridge (repeatable),
                       e.g. --node-flag=--trace-gc with BENCH_DEBUG=1 to see their output
  --cpu-prof-interval US
                       sampling interval of --cpu-prof in µs (node's default 1000)
  --scrape MS          scrape each Drawbridge's /metrics every MS during measurements, as
                       Prometheus would (default 1000; 0 = never)
  --out FILE           results JSON path (default bench/results/<date>.json)
`

const { values: opts } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    compare: { type: 'string' },
    systems: { type: 'string' },
    workloads: { type: 'string' },
    repeat: { type: 'string' },
    sizes: { type: 'string' },
    idle: { type: 'string' },
    'drawbridge-env': { type: 'string', multiple: true },
    'cpu-prof': { type: 'string' },
    'cpu-prof-interval': { type: 'string' },
    'node-flag': { type: 'string', multiple: true },
    ab: { type: 'string' },
    'drawbridge-dist': { type: 'string' },
    'ab-env': { type: 'string', multiple: true },
    workers: { type: 'string' },
    'inspect-rounds': { type: 'string' },
    'storm-clients': { type: 'string' },
    'storm-generators': { type: 'string' },
    'storm-accept-rate': { type: 'string', default: '2000' },
    'inspect-transports': { type: 'string', default: 'ws,wss' },
    'inspect-mode': { type: 'string', default: 'together' },
    scrape: { type: 'string', default: '1000' },
    out: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
})
if (opts['drawbridge-dist'])
  process.env.BENCH_DRAWBRIDGE_DIST = path.resolve(opts['drawbridge-dist'])
if (opts.help) {
  process.stdout.write(USAGE)
  process.exit(0)
}

/** Message counts, durations and client counts; every loop below is bounded by these. */
const PLAN = opts.quick
  ? {
      throughput: [
        { size: 64, count: 20_000, window: 1000 },
        { size: 1024, count: 10_000, window: 256 },
        { size: 16384, count: 2_000, window: 16 },
        { size: 262144, count: 200, window: 4 },
      ],
      pairs: 2,
      maxSeconds: 20,
      latency: { rate: 2000, seconds: 2, size: 64, warmup: 200, rounds: 1 },
      idle: [1000],
      settleMs: 1500,
      flatMs: 1500,
      setup: { count: 150, concurrency: 4, maxSeconds: 20 },
      storm: { clients: 1000, retryMs: 1000, attemptTimeoutMs: 10_000, maxSeconds: 60 },
      repeat: 1,
      inspect: {
        throughput: [
          { size: 64, count: 40_000, window: 1000 },
          { size: 1024, count: 20_000, window: 256 },
        ],
        rounds: 2,
        memory: { clients: 1000, rounds: 1, settleMs: 1000 },
      },
    }
  : {
      throughput: [
        { size: 64, count: 200_000, window: 1000 },
        { size: 1024, count: 100_000, window: 256 },
        { size: 16384, count: 15_000, window: 16 },
        { size: 262144, count: 1_500, window: 4 },
      ],
      pairs: 2,
      maxSeconds: 90,
      latency: { rate: 2000, seconds: 10, size: 64, warmup: 1000, rounds: 3 },
      idle: [1000, 10_000],
      settleMs: 5000,
      flatMs: 10_000,
      setup: { count: 1000, concurrency: 4, maxSeconds: 60 },
      storm: { clients: 5000, retryMs: 1000, attemptTimeoutMs: 10_000, maxSeconds: 120 },
      repeat: 2,
      inspect: {
        throughput: [
          { size: 64, count: 100_000, window: 1000 },
          { size: 1024, count: 50_000, window: 256 },
        ],
        rounds: 6,
        memory: { clients: 1000, rounds: 3, settleMs: 2000 },
      },
    }
if (opts.repeat !== undefined) PLAN.repeat = Math.max(1, Number(opts.repeat))
if (opts['storm-clients'] !== undefined) PLAN.storm.clients = Number(opts['storm-clients'])
if (opts.idle !== undefined) PLAN.idle = opts.idle.split(',').map(Number)
if (opts['inspect-rounds'] !== undefined) {
  PLAN.inspect.rounds = Math.max(1, Number(opts['inspect-rounds']))
}
if (opts.sizes !== undefined) {
  const sizes = new Set(opts.sizes.split(',').map(Number))
  PLAN.throughput = PLAN.throughput.filter((t) => sizes.has(t.size))
  PLAN.inspect.throughput = PLAN.inspect.throughput.filter((t) => sizes.has(t.size))
}
// With --systems, only the transports whose Drawbridge system was asked for.
const inspectTogether = opts['inspect-mode'] !== 'alternate'
if (!['together', 'alternate'].includes(opts['inspect-mode'])) {
  process.stderr.write(`--inspect-mode: together or alternate, not ${opts['inspect-mode']}\n`)
  process.exit(2)
}
const inspectTransports = opts['inspect-transports']
  .split(',')
  .filter((t) => t !== '' && (!opts.systems || opts.systems.split(',').includes(`drawbridge-${t}`)))

const wantedWorkloads = new Set(
  (opts.workloads ?? 'throughput,latency,idle,setup,storm,inspect,inspect-memory').split(','),
)
const wantedSystems = opts.systems ? new Set(opts.systems.split(',')) : undefined

function progress(msg) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`)
}

// ---------------------------------------------------------------------------------------------
// Certificates and broker

async function makeCerts(dir) {
  const certs = {}
  const kinds = {
    ecdsa: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'],
    rsa: ['-newkey', 'rsa:2048'],
  }
  for (const [name, keyArgs] of Object.entries(kinds)) {
    const cert = path.join(dir, `${name}-cert.pem`)
    const key = path.join(dir, `${name}-key.pem`)
    await run(
      'openssl',
      [
        'req',
        '-x509',
        ...keyArgs,
        '-nodes',
        '-keyout',
        key,
        '-out',
        cert,
        '-days',
        '2',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=DNS:localhost,IP:127.0.0.1',
      ],
      { timeout: 30_000 },
    )
    certs[name] = { cert, key, name }
  }
  return certs
}

async function startBroker(dir) {
  const port = await freePort()
  let mosquitto
  try {
    mosquitto = execFileSync('sh', ['-c', 'command -v mosquitto || ls /usr/sbin/mosquitto'], {
      encoding: 'utf8',
    })
      .trim()
      .split('\n')[0]
  } catch {
    mosquitto = undefined
  }
  if (mosquitto) {
    const conf = path.join(dir, 'mosquitto.conf')
    writeFileSync(
      conf,
      [
        `listener ${port} 127.0.0.1`,
        'allow_anonymous true',
        // Throughput runs keep up to `window` messages in flight per pair; leave room.
        'max_queued_messages 1000000',
        'max_queued_bytes 0',
        'persistence false',
        'set_tcp_nodelay true',
        'log_dest stderr',
        'log_type error',
        '',
      ].join('\n'),
    )
    const entry = spawnChild('mosquitto', mosquitto, ['-c', conf])
    await waitForPort(port, entry)
    let version = 'mosquitto'
    try {
      const { stdout } = await run(mosquitto, ['-h'], { timeout: 5_000 }).catch((e) => e)
      version = /mosquitto version [\d.]+/.exec(String(stdout))?.[0] ?? version
    } catch {
      // keep the plain name
    }
    return { port, pid: entry.child.pid, kind: version, stop: () => stopChild(entry) }
  }
  progress(
    'mosquitto not on PATH: falling back to Aedes (in its own process); figures are not comparable with mosquitto runs',
  )
  const entry = spawnChild('aedes', process.execPath, [
    path.join(HERE, 'aedes-broker.mjs'),
    String(port),
  ])
  await waitForPort(port, entry)
  return { port, pid: entry.child.pid, kind: 'aedes (fallback)', stop: () => stopChild(entry) }
}

// ---------------------------------------------------------------------------------------------
// Load generator

class Loadgen {
  #entry
  #next = 0
  #pending = new Map()

  constructor() {
    this.#entry = spawnChild('loadgen', process.execPath, [path.join(HERE, 'loadgen.mjs')], {
      stdio: ['ignore', 'inherit', 'pipe', 'ipc'],
    })
    this.#entry.child.on('message', (msg) => this.#onMessage(msg))
    this.#entry.child.once('exit', (code) => {
      for (const p of this.#pending.values()) {
        p.reject(new Error(`load generator exited (${code}): ${this.#entry.stderr().trim()}`))
      }
      this.#pending.clear()
    })
  }

  get pid() {
    return this.#entry.child.pid
  }

  /**
   * Runs one command; `onReady` runs (to take the "before" sample) just before it starts. When
   * it returns a promise, the command starts once that resolves (see barrier()).
   */
  request(cmd, params, { onReady, timeoutMs = 600_000 } = {}) {
    const id = ++this.#next
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(new Error(`load generator: ${cmd} did not finish within ${timeoutMs} ms`))
      }, timeoutMs)
      this.#pending.set(id, {
        onReady,
        resolve: (v) => {
          clearTimeout(timer)
          resolve(v)
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        },
      })
      this.#entry.child.send({ id, cmd, ...params })
    })
  }

  #onMessage(msg) {
    if (msg.progress) {
      progress(`  ${msg.progress}`)
      return
    }
    const p = this.#pending.get(msg.id)
    if (!p) return
    if (msg.ready) {
      void Promise.resolve(p.onReady?.()).then(() => {
        if (this.#entry.child.connected) this.#entry.child.send({ id: msg.id, go: true })
      })
      return
    }
    this.#pending.delete(msg.id)
    if (msg.error) p.reject(new Error(msg.error))
    else p.resolve(msg.result)
  }

  async stop() {
    if (this.#entry.child.connected) this.#entry.child.send({ cmd: 'exit' })
    await stopChild(this.#entry, 3_000)
  }
}

// ---------------------------------------------------------------------------------------------
// Measurements

/** Jiffies of all CPUs: [busy, total], from the first line of /proc/stat. */
function machineJiffies() {
  const f = readFileSync('/proc/stat', 'utf8')
    .split('\n')[0]
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number)
  const total = f.reduce((a, b) => a + b, 0)
  const idle = (f[3] ?? 0) + (f[4] ?? 0)
  return [total - idle, total]
}

function sample(sut, broker, loadgen) {
  return {
    machine: machineJiffies(),
    t: performance.now(),
    sut: sut.pid ? treeCpuSeconds(sut.pid) : 0,
    sutSystem: sut.pid ? treeCpu(sut.pid).system : 0,
    sutSyscalls: sut.pid ? syscalls(sut.pid) : 0,
    broker: treeCpuSeconds(broker.pid),
    loadgen: treeCpuSeconds(loadgen.pid),
  }
}

/**
 * What bounded the run: a process of ours that used (nearly) a whole core, else the machine
 * when all its cores were busy (other work on this shared host included), else the window.
 */
function limitOf(util) {
  const [name, value] = Object.entries(util)
    .filter(([k]) => k !== 'machine')
    .sort((a, b) => b[1] - a[1])[0]
  if (value >= 0.85) {
    return name === 'loadgen' ? 'load generator' : name === 'sut' ? 'system under test' : 'broker'
  }
  if (util.machine >= 0.9) return 'machine busy'
  return 'none (window-bound)'
}

/**
 * Scrapes `sut`'s /metrics every `--scrape` ms until stopped, so the measured CPU includes what
 * a monitored gateway spends on metrics. Returns a stop function giving the scrape count.
 */
function startScraping(sut) {
  const every = Number(opts.scrape)
  if (!sut.adminUrl || !(every > 0)) return async () => 0
  let scrapes = 0
  let inFlight = Promise.resolve()
  const timer = setInterval(() => {
    inFlight = fetch(`${sut.adminUrl}/metrics`)
      .then((res) => res.text())
      .then(() => void scrapes++)
      .catch(() => undefined)
  }, every)
  return async () => {
    clearInterval(timer)
    await inFlight
    return scrapes
  }
}

/**
 * For `n` measurements run at the same time: each calls arrive(takeSample) once it is ready;
 * the samples are all taken, and every one of them started, once the last has arrived.
 */
function barrier(n) {
  const waiting = []
  let release
  const all = new Promise((resolve) => (release = resolve))
  return (takeSample) => {
    waiting.push(takeSample)
    if (waiting.length === n) {
      for (const take of waiting) take()
      release()
    }
    return all
  }
}

async function measured(lg, sut, broker, cmd, params, arrive) {
  let before
  const stopScraping = startScraping(sut)
  const takeSample = () => (before = sample(sut, broker, lg))
  const result = await lg.request(cmd, params, {
    onReady: arrive ? () => arrive(takeSample) : takeSample,
  })
  const after = sample(sut, broker, lg)
  const scrapes = await stopScraping()
  const wall = (after.t - before.t) / 1000
  const util = {
    sut: sut.pid ? (after.sut - before.sut) / wall : 0,
    broker: (after.broker - before.broker) / wall,
    loadgen: (after.loadgen - before.loadgen) / wall,
    // Fraction of all cores busy, whoever used them.
    machine:
      (after.machine[0] - before.machine[0]) / Math.max(1, after.machine[1] - before.machine[1]),
  }
  return {
    result,
    sutCpuSeconds: after.sut - before.sut,
    sutSystemSeconds: after.sutSystem - before.sutSystem,
    sutSyscalls: after.sutSyscalls - before.sutSyscalls,
    wall,
    util,
    scrapes,
  }
}

/** `arrive`: from barrier(), when this run starts together with others. */
async function throughputRun(lg, sut, broker, t, arrive) {
  const { size, count } = t
  const m = await measured(
    lg,
    sut,
    broker,
    'throughput',
    {
      target: sut.target,
      pairs: PLAN.pairs,
      count,
      size,
      window: t.window,
      maxSeconds: PLAN.maxSeconds,
    },
    arrive,
  )
  const r = m.result
  return {
    sent: r.sent,
    delivered: r.delivered,
    lost: r.sent - r.delivered,
    seqErrors: r.seqErrors,
    seconds: r.seconds,
    msgPerSec: r.delivered / r.seconds,
    cpuUsPerMsg: sut.pid ? (m.sutCpuSeconds * 1e6) / r.delivered : null,
    // User-space CPU alone: where a change in the process's own code (e.g. the framer) shows,
    // without the kernel's send path, which is most of the total and most of its noise.
    userUsPerMsg: sut.pid ? ((m.sutCpuSeconds - m.sutSystemSeconds) * 1e6) / r.delivered : null,
    syscallsPerMsg: sut.pid ? m.sutSyscalls / r.delivered : null,
    kernelShare: sut.pid && m.sutCpuSeconds > 0 ? m.sutSystemSeconds / m.sutCpuSeconds : null,
    util: m.util,
    limit: limitOf(m.util),
    scrapes: m.scrapes,
  }
}

async function latencyRun(lg, sut, broker) {
  const m = await measured(lg, sut, broker, 'latency', { target: sut.target, ...PLAN.latency })
  const r = m.result
  return {
    ...r,
    cpuUsPerMsg: sut.pid ? (m.sutCpuSeconds * 1e6) / r.delivered : null,
    util: m.util,
  }
}

async function idleRun(lg, sut, clients) {
  // Warm up first (code paths compiled, pools allocated), so the baseline is a running server.
  await lg.request('idle-open', { target: sut.target, clients: 50, concurrency: 10 })
  await lg.request('idle-close', {})
  await sleep(1000)
  const before = rssKiB(sut.pid)
  const opened = await lg.request('idle-open', { target: sut.target, clients, concurrency: 50 })
  await sleep(PLAN.settleMs)
  const settled = rssKiB(sut.pid)
  await sleep(PLAN.flatMs)
  const later = rssKiB(sut.pid)
  await lg.request('idle-close', {})
  const perConn = opened.opened > 0 ? (settled - before) / opened.opened : NaN
  return {
    clients,
    opened: opened.opened,
    failed: opened.failed,
    firstError: opened.firstError,
    connectSeconds: opened.seconds,
    rssBeforeKiB: before,
    rssSettledKiB: settled,
    rssLaterKiB: later,
    kibPerConn: perConn,
    driftKiBPerConn: opened.opened > 0 ? (later - settled) / opened.opened : NaN,
  }
}

async function setupRun(lg, sut, broker, resume) {
  const m = await measured(lg, sut, broker, 'handshake', {
    target: sut.target,
    count: PLAN.setup.count,
    concurrency: PLAN.setup.concurrency,
    maxSeconds: PLAN.setup.maxSeconds,
    resume,
  })
  const r = m.result
  return {
    ok: r.ok,
    failed: r.failed,
    firstError: r.firstError,
    resumed: r.reused,
    seconds: r.seconds,
    perSec: r.ok / r.seconds,
    cpuMsPerSetup: (m.sutCpuSeconds * 1e3) / r.ok,
    util: m.util,
    limit: limitOf(m.util),
  }
}

/**
 * The gateway's refusal counters (every `*_total` series with a `reason` label whose name
 * says refusal or rejection), as `name{labels}` -> value; empty without an admin listener.
 */
async function refusalCounts(sut) {
  if (!sut.adminUrl) return {}
  const text = await fetch(`${sut.adminUrl}/metrics`)
    .then((res) => res.text())
    .catch(() => '')
  const counts = {}
  for (const line of text.split('\n')) {
    const m = /^(\w*(?:refus|reject)\w*_total)\{([^}]*reason="[^"]*"[^}]*)\} (\S+)$/.exec(line)
    if (m) counts[`${m[1]}{${m[2]}}`] = Number(m[3])
  }
  return counts
}

/**
 * A reconnect storm against a running system, warmed up first: PLAN.storm.clients wss clients
 * split over `generators`, all let go at once. The gateway's CPU is sampled when every
 * generator is ready and again when the last client is in; its RSS is polled every 50 ms for
 * the peak. Refusals are the clients' failed attempts by reason, and the gateway's own counts.
 */
async function stormRun(generators, sut, broker, resume) {
  await generators[0].request('idle-open', { target: sut.target, clients: 50, concurrency: 10 })
  await generators[0].request('idle-close', {})
  await sleep(500)
  const refusedBefore = await refusalCounts(sut)
  const rssBefore = rssKiB(sut.pid)
  let rssPeak = rssBefore
  let before
  const arrive = barrier(generators.length)
  const share = Math.ceil(PLAN.storm.clients / generators.length)
  const poll = setInterval(() => {
    rssPeak = Math.max(rssPeak, rssKiB(sut.pid))
  }, 50)
  let results
  try {
    results = await Promise.all(
      generators.map((g, i) =>
        g.request(
          'storm',
          {
            target: sut.target,
            clients: Math.min(share, PLAN.storm.clients - i * share),
            retryMs: PLAN.storm.retryMs,
            attemptTimeoutMs: PLAN.storm.attemptTimeoutMs,
            maxSeconds: PLAN.storm.maxSeconds,
            tag: `${i}-${Date.now().toString(36)}`,
            resume,
          },
          {
            onReady: () =>
              arrive(() => {
                before = sample(sut, broker, generators[0])
              }),
          },
        ),
      ),
    )
  } finally {
    clearInterval(poll)
  }
  const after = sample(sut, broker, generators[0])
  rssPeak = Math.max(rssPeak, rssKiB(sut.pid))
  const refusedAfter = await refusalCounts(sut)
  await Promise.all(generators.map((g) => g.request('storm-close', {})))
  const failures = {}
  for (const r of results)
    for (const [why, n] of Object.entries(r.failures)) failures[why] = (failures[why] ?? 0) + n
  const gatewayRefusals = {}
  for (const [k, v] of Object.entries(refusedAfter)) {
    const d = v - (refusedBefore[k] ?? 0)
    if (d > 0) gatewayRefusals[k] = d
  }
  const connected = results.reduce((n, r) => n + r.connected, 0)
  const wall = (after.t - before.t) / 1000
  return {
    clients: PLAN.storm.clients,
    generators: generators.length,
    connected,
    resume,
    resumed: results.reduce((n, r) => n + r.resumed, 0),
    attempts: results.reduce((n, r) => n + r.attempts, 0),
    // Each generator's clock starts at its own go, within a millisecond of the others'.
    allInSeconds: Math.max(...results.map((r) => r.lastMs)) / 1000,
    p50Seconds: median(results.map((r) => r.p50Ms)) / 1000,
    p99Seconds: Math.max(...results.map((r) => r.p99Ms)) / 1000,
    sutCpuSeconds: sut.pid ? after.sut - before.sut : null,
    cpuMsPerClient: sut.pid && connected > 0 ? ((after.sut - before.sut) * 1e3) / connected : null,
    rssBeforeMiB: rssBefore / 1024,
    rssPeakMiB: rssPeak / 1024,
    failures,
    gatewayRefusals,
    util: {
      sut: sut.pid ? (after.sut - before.sut) / wall : 0,
      broker: (after.broker - before.broker) / wall,
      loadgen: median(results.map((r) => r.loadgenCpuUtil)),
      machine:
        (after.machine[0] - before.machine[0]) / Math.max(1, after.machine[1] - before.machine[1]),
    },
  }
}

/**
 * Memory per idle client after a full GC, the system started with its inspector on
 * `inspectPort`: the baseline after a warm-up wave, then `clients` connected and settled. One
 * DevTools session for the whole run, so what the inspector allocates is in the baseline too.
 */
async function idleMemoryRun(lg, sut, clients, inspectPort, settleMs) {
  const session = await InspectorSession.open(inspectPort)
  try {
    await lg.request('idle-open', { target: sut.target, clients: 50, concurrency: 10 })
    await lg.request('idle-close', {})
    await sleep(1000)
    const before = await session.memoryAfterGc(sut.pid)
    const opened = await lg.request('idle-open', {
      target: sut.target,
      clients,
      concurrency: 50,
      subscribe: true,
    })
    await sleep(settleMs)
    const after = await session.memoryAfterGc(sut.pid)
    // Then some traffic on every connection, headers cut across frames, and idle again.
    const traffic = await lg.request('idle-traffic', { messages: 10, size: 64, maxSeconds: 30 })
    await sleep(settleMs)
    const afterTraffic = await session.memoryAfterGc(sut.pid)
    await lg.request('idle-close', {})
    const per = (m, key) => (opened.opened > 0 ? (m[key] - before[key]) / opened.opened : NaN)
    return {
      clients,
      opened: opened.opened,
      failed: opened.failed,
      firstError: opened.firstError,
      before,
      after,
      afterTraffic,
      traffic,
      rssKiBPerConn: per(after, 'rssKiB'),
      heapKiBPerConn: per(after, 'heapUsedKiB'),
      externalKiBPerConn: per(after, 'externalKiB'),
      trafficRssKiBPerConn: per(afterTraffic, 'rssKiB'),
      trafficHeapKiBPerConn: per(afterTraffic, 'heapUsedKiB'),
    }
  } finally {
    await session.close()
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

/** Runs `fn` PLAN.repeat times and keeps the run with the least CPU per unit of work. */
async function best(fn, key) {
  let kept
  for (let i = 0; i < PLAN.repeat; i++) {
    const r = await fn()
    if (kept === undefined || (r[key] ?? Infinity) < (kept[key] ?? Infinity)) kept = r
  }
  return kept
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const started = Date.now()
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'drawbridge-bench-'))
  const results = []
  const skipped = []
  let broker
  let lg
  const cleanup = async () => {
    await lg?.stop().catch(() => {})
    await broker?.stop().catch(() => {})
    rmSync(tmp, { recursive: true, force: true })
  }
  try {
    progress(
      `${opts.quick ? 'quick' : 'full'} run; node ${process.version}, ${os.cpus().length} cores, load ${os
        .loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
    )
    const certs = await makeCerts(tmp)
    broker = await startBroker(tmp)
    progress(`broker: ${broker.kind} on 127.0.0.1:${broker.port}`)
    lg = new Loadgen()
    const nodeFlags = [...(opts['node-flag'] ?? [])]
    if (opts['cpu-prof']) {
      mkdirSync(opts['cpu-prof'], { recursive: true })
      nodeFlags.push('--cpu-prof', `--cpu-prof-dir=${path.resolve(opts['cpu-prof'])}`)
      if (opts['cpu-prof-interval'] !== undefined) {
        nodeFlags.push(`--cpu-prof-interval=${Number(opts['cpu-prof-interval'])}`)
      }
    }
    const envPairs = (list) =>
      Object.fromEntries(
        (list ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
      )
    const drawbridgeEnv = envPairs(opts['drawbridge-env'])
    const ctx = { broker, certs, cert: certs.ecdsa, nodeFlags, drawbridgeEnv }

    const systems = []
    const all = [
      ...SYSTEMS,
      ...(opts.ab
        ? ['ws', 'wss'].map((transport) =>
            abSystem(path.resolve(opts.ab), envPairs(opts['ab-env']), transport),
          )
        : []),
      ...(opts.workers ?? '')
        .split(',')
        .filter((n) => n !== '')
        .map((n) => workersSystem(Number(n))),
    ]
    for (const s of all) {
      if (wantedSystems && !wantedSystems.has(s.name)) continue
      const why = await s.available(ctx)
      if (why) {
        progress(`${s.name}: ${why}`)
        skipped.push({ system: s.name, reason: why })
      } else systems.push(s)
    }

    const record = (workload, params, system, metrics) => {
      results.push({ workload, params, system: system.name, metrics })
    }
    const withSystem = async (system, cert, fn) => {
      ctx.cert = cert
      const sut = await system.start(ctx)
      try {
        return await fn(sut)
      } finally {
        await sut.stop()
      }
    }

    if (wantedWorkloads.has('throughput') || wantedWorkloads.has('latency')) {
      // All systems run side by side (idle when not under load) and the repeats go round them
      // in turn, so a burst of noise from elsewhere on the machine hits each of them alike.
      const running = []
      try {
        for (const system of systems) {
          ctx.cert = certs.ecdsa
          running.push({ system, sut: await system.start(ctx) })
        }
        if (wantedWorkloads.has('throughput')) {
          for (const t of PLAN.throughput) {
            const kept = new Map()
            for (let rep = 1; rep <= PLAN.repeat; rep++) {
              for (const { system, sut } of running) {
                progress(
                  `throughput ${t.size} B x ${t.count * PLAN.pairs}: ${system.name}${PLAN.repeat > 1 ? ` (${rep}/${PLAN.repeat})` : ''}`,
                )
                const r = await throughputRun(lg, sut, broker, t)
                progress(
                  `  ${Math.round(r.msgPerSec)} msg/s, ${r.cpuUsPerMsg?.toFixed(2) ?? '-'} µs/msg, ${r.syscallsPerMsg?.toFixed(2) ?? '-'} syscalls/msg, ${r.kernelShare === null ? '-' : Math.round(r.kernelShare * 100)}% in kernel, limit: ${r.limit}`,
                )
                // Keep the least disturbed run: least CPU per message (most msg/s for direct).
                const prev = kept.get(system)
                const runs = [...(prev?.runs ?? []), r.cpuUsPerMsg ?? r.msgPerSec]
                const better =
                  !prev ||
                  (r.cpuUsPerMsg !== null
                    ? r.cpuUsPerMsg < prev.cpuUsPerMsg
                    : r.msgPerSec > prev.msgPerSec)
                kept.set(system, { ...(better ? r : prev), runs })
              }
            }
            for (const [system, r] of kept)
              record(`throughput-${t.size}`, { ...t, pairs: PLAN.pairs }, system, r)
          }
        }
        if (wantedWorkloads.has('latency')) {
          // Rounds go round the systems in turn; each figure is the median of its rounds, so
          // one burst of noise from elsewhere on the host moves no system's figure alone.
          const rounds = new Map(running.map(({ system }) => [system, []]))
          for (let round = 1; round <= PLAN.latency.rounds; round++) {
            for (const { system, sut } of running) {
              progress(
                `latency ${PLAN.latency.rate} msg/s for ${PLAN.latency.seconds} s: ${system.name} (${round}/${PLAN.latency.rounds})`,
              )
              const r = await latencyRun(lg, sut, broker)
              progress(
                `  p50 ${r.p50.toFixed(3)} ms, p99 ${r.p99.toFixed(3)} ms, p99.9 ${r.p999.toFixed(3)} ms`,
              )
              rounds.get(system).push(r)
            }
          }
          for (const [system, rs] of rounds) {
            const med = (key) => median(rs.map((r) => r[key]))
            record('latency', PLAN.latency, system, {
              ...rs[0],
              p50: med('p50'),
              p99: med('p99'),
              p999: med('p999'),
              max: Math.max(...rs.map((r) => r.max)),
              cpuUsPerMsg: rs[0].cpuUsPerMsg === null ? null : med('cpuUsPerMsg'),
              rounds: rs.map(({ p50, p99, p999, max }) => ({ p50, p99, p999, max })),
            })
          }
        }
      } finally {
        for (const { sut } of running) await sut.stop()
      }
    }

    if (wantedWorkloads.has('idle')) {
      const fileLimit = effectiveFileLimit()
      for (const system of systems) {
        if (system.name === 'direct-tcp' || system.name.startsWith('websockify')) continue
        for (const requested of PLAN.idle) {
          // Each client costs a bridge two descriptors (client + broker socket).
          const clients = Math.min(requested, Math.floor((fileLimit - 100) / 2))
          const capped =
            clients < requested
              ? ` (capped from ${requested}: ${fileLimit} descriptors per process here)`
              : ''
          progress(`idle ${clients} clients${capped}: ${system.name}`)
          const r = await withSystem(system, certs.ecdsa, (sut) => idleRun(lg, sut, clients))
          r.requested = requested
          progress(
            `  ${r.kibPerConn.toFixed(1)} KiB/conn (${r.opened} open, ${r.failed} failed), drift ${r.driftKiBPerConn.toFixed(2)} KiB/conn`,
          )
          record(`idle-${requested}`, { clients, requested, fileLimit }, system, r)
        }
      }
    }

    if (wantedWorkloads.has('inspect')) {
      // mqtt.inspect on against off: two processes of the same build side by side, the only
      // difference DRAWBRIDGE_MQTT_INSPECT. Each round runs both, the order alternating between
      // rounds (on-off, off-on, ...) so drift in the host's load falls on both alike; the ratio
      // is taken within each round, and its spread over the rounds is the noise.
      for (const transport of inspectTransports) {
        const pair = { on: inspectSystem(transport, true), off: inspectSystem(transport, false) }
        const why = await pair.on.available(ctx)
        if (why) {
          progress(`inspect ${transport}: ${why}`)
          skipped.push({ system: `drawbridge-${transport}-inspect`, reason: why })
          continue
        }
        ctx.cert = certs.ecdsa
        const suts = {}
        try {
          for (const mode of ['on', 'off']) suts[mode] = await pair[mode].start(ctx)
          progress(`inspect ${transport}: on pid ${suts.on.pid}, off pid ${suts.off.pid}`)
          for (const t of PLAN.inspect.throughput) {
            // One unrecorded run each first, so neither is measured while its JIT warms up.
            const warm = { ...t, count: Math.ceil(t.count / 4) }
            // (one after the other: the warm-up is not measured)
            for (const mode of ['on', 'off']) await throughputRun(lg, suts[mode], broker, warm)
            const runs = { on: [], off: [] }
            for (let round = 0; round < PLAN.inspect.rounds; round++) {
              const order = round % 2 === 0 ? ['on', 'off'] : ['off', 'on']
              const done = []
              if (inspectTogether) {
                // Both at once, from one barrier: whatever else the host does in that window,
                // it does to both.
                const arrive = barrier(2)
                const rs = await Promise.all(
                  order.map((mode) => throughputRun(lg, suts[mode], broker, t, arrive)),
                )
                order.forEach((mode, k) => done.push([mode, rs[k]]))
              } else {
                for (const mode of order)
                  done.push([mode, await throughputRun(lg, suts[mode], broker, t)])
              }
              for (const [mode, r] of done) {
                progress(
                  `inspect ${transport} ${t.size} B x ${t.count * PLAN.pairs} (${round + 1}/${PLAN.inspect.rounds}) ${mode}: ${r.cpuUsPerMsg.toFixed(2)} µs/msg (user ${r.userUsPerMsg.toFixed(2)}), ${Math.round(r.msgPerSec)} msg/s, limit: ${r.limit}`,
                )
                runs[mode].push(r)
              }
            }
            const cpu = (mode) => runs[mode].map((r) => r.cpuUsPerMsg)
            const ratios = runs.on.map((r, i) => r.cpuUsPerMsg / runs.off[i].cpuUsPerMsg)
            const user = (mode) => runs[mode].map((r) => r.userUsPerMsg)
            const userRatios = runs.on.map((r, i) => r.userUsPerMsg / runs.off[i].userUsPerMsg)
            const m = {
              transport,
              onCpuUsPerMsg: cpu('on'),
              offCpuUsPerMsg: cpu('off'),
              onMedian: median(cpu('on')),
              offMedian: median(cpu('off')),
              onBest: Math.min(...cpu('on')),
              offBest: Math.min(...cpu('off')),
              ratios,
              medianRatio: median(ratios),
              minRatio: Math.min(...ratios),
              maxRatio: Math.max(...ratios),
              onUserMedian: median(user('on')),
              offUserMedian: median(user('off')),
              userRatios,
              userMedianRatio: median(userRatios),
              onMsgPerSec: median(runs.on.map((r) => r.msgPerSec)),
              offMsgPerSec: median(runs.off.map((r) => r.msgPerSec)),
              lost: [...runs.on, ...runs.off].reduce((n, r) => n + r.lost + r.seqErrors, 0),
              runs,
            }
            progress(
              `  inspect ${transport} ${t.size} B: on/off median ${m.medianRatio.toFixed(3)} (${m.minRatio.toFixed(3)}-${m.maxRatio.toFixed(3)})`,
            )
            results.push({
              workload: `inspect-${t.size}`,
              params: {
                ...t,
                pairs: PLAN.pairs,
                rounds: PLAN.inspect.rounds,
                mode: inspectTogether ? 'together' : 'alternate',
              },
              system: `drawbridge-${transport}`,
              metrics: m,
            })
          }
        } finally {
          for (const sut of Object.values(suts)) await sut.stop()
        }
      }
    }

    if (wantedWorkloads.has('inspect-memory')) {
      const { clients, rounds, settleMs } = PLAN.inspect.memory
      for (const transport of inspectTransports) {
        const why = await inspectSystem(transport, true).available(ctx)
        if (why) {
          progress(`inspect-memory ${transport}: ${why}`)
          continue
        }
        const runs = { on: [], off: [] }
        for (let round = 0; round < rounds; round++) {
          for (const mode of round % 2 === 0 ? ['on', 'off'] : ['off', 'on']) {
            // A fresh process per measurement, its inspector on a loopback port for the GC.
            const inspectPort = await freePort()
            const system = inspectSystem(transport, mode === 'on', [
              `--inspect=127.0.0.1:${inspectPort}`,
            ])
            const r = await withSystem(system, certs.ecdsa, (sut) =>
              idleMemoryRun(lg, sut, clients, inspectPort, settleMs),
            )
            progress(
              `inspect-memory ${transport} ${clients} clients (${round + 1}/${rounds}) ${mode}: ${r.rssKiBPerConn.toFixed(1)} KiB RSS, ${r.heapKiBPerConn.toFixed(2)} KiB heap, ${r.externalKiBPerConn.toFixed(2)} KiB external per conn (${r.opened} open, ${r.failed} failed); after traffic ${r.trafficRssKiBPerConn.toFixed(1)} KiB RSS, ${r.trafficHeapKiBPerConn.toFixed(2)} KiB heap (${r.traffic.received}/${r.traffic.expected} messages back)`,
            )
            runs[mode].push(r)
          }
        }
        const med = (mode, key) => median(runs[mode].map((r) => r[key]))
        results.push({
          workload: 'inspect-memory',
          params: { clients, rounds, settleMs },
          system: `drawbridge-${transport}`,
          metrics: {
            transport,
            clients,
            on: {
              rssKiBPerConn: med('on', 'rssKiBPerConn'),
              heapKiBPerConn: med('on', 'heapKiBPerConn'),
              externalKiBPerConn: med('on', 'externalKiBPerConn'),
              trafficRssKiBPerConn: med('on', 'trafficRssKiBPerConn'),
              trafficHeapKiBPerConn: med('on', 'trafficHeapKiBPerConn'),
            },
            off: {
              rssKiBPerConn: med('off', 'rssKiBPerConn'),
              heapKiBPerConn: med('off', 'heapKiBPerConn'),
              externalKiBPerConn: med('off', 'externalKiBPerConn'),
              trafficRssKiBPerConn: med('off', 'trafficRssKiBPerConn'),
              trafficHeapKiBPerConn: med('off', 'trafficHeapKiBPerConn'),
            },
            failed: [...runs.on, ...runs.off].reduce((n, r) => n + r.failed, 0),
            runs,
          },
        })
      }
    }

    if (wantedWorkloads.has('setup')) {
      const variants = [
        { id: 'setup-ecdsa', cert: certs.ecdsa, resume: false },
        { id: 'setup-ecdsa-resumed', cert: certs.ecdsa, resume: true },
        { id: 'setup-rsa', cert: certs.rsa, resume: false },
      ]
      for (const system of systems) {
        if (system.transport !== 'wss') continue
        for (const v of variants) {
          progress(`${v.id} x ${PLAN.setup.count}: ${system.name}`)
          const m = await withSystem(system, v.cert, (sut) =>
            best(() => setupRun(lg, sut, broker, v.resume), 'cpuMsPerSetup'),
          )
          progress(
            `  ${m.perSec.toFixed(0)}/s, ${m.cpuMsPerSetup.toFixed(3)} ms CPU each, ${m.resumed} resumed, ${m.failed} failed`,
          )
          record(v.id, { cert: v.cert.name, resume: v.resume, ...PLAN.setup }, system, m)
        }
      }
    }

    if (wantedWorkloads.has('storm')) {
      const rate = Number(opts['storm-accept-rate'])
      const stormSystems = [...systems.filter((s) => s.transport === 'wss')]
      if (rate > 0 && (!wantedSystems || wantedSystems.has('drawbridge-wss'))) {
        const limited = acceptRateSystem(rate)
        const why = await limited.available(ctx)
        if (why) {
          progress(`${limited.name}: ${why}`)
          skipped.push({ system: limited.name, reason: why })
        } else stormSystems.push(limited)
      }
      const count =
        opts['storm-generators'] !== undefined
          ? Math.max(1, Number(opts['storm-generators']))
          : Math.max(1, os.cpus().length - 1)
      const generators = [lg]
      try {
        for (let i = 1; i < count; i++) generators.push(new Loadgen())
        for (const resume of [false, true]) {
          for (const system of stormSystems) {
            progress(
              `storm of ${PLAN.storm.clients} wss clients${resume ? ' offering session tickets' : ''}: ${system.name}`,
            )
            const m = await withSystem(system, certs.ecdsa, (sut) =>
              stormRun(generators, sut, broker, resume),
            )
            progress(
              `  ${m.connected}/${m.clients} in ${m.allInSeconds.toFixed(2)} s (${m.resumed} resumed), ${m.cpuMsPerClient?.toFixed(2) ?? '-'} ms CPU each, peak RSS ${m.rssPeakMiB.toFixed(0)} MiB, ${m.attempts - m.connected} failed attempts ${JSON.stringify(m.failures)}`,
            )
            record(resume ? 'storm-resumed' : 'storm', { ...PLAN.storm, resume }, system, m)
          }
        }
      } finally {
        await Promise.all(generators.slice(1).map((g) => g.stop()))
      }
    }

    const doc = {
      meta: {
        date: new Date().toISOString(),
        node: process.version,
        cores: os.cpus().length,
        cpu: os.cpus()[0]?.model,
        loadavgAtEnd: os.loadavg(),
        broker: broker.kind,
        quick: opts.quick,
        durationSeconds: (Date.now() - started) / 1000,
        plan: PLAN,
        drawbridgeEnv,
      },
      skipped,
      results,
    }
    const outDir = path.join(HERE, 'results')
    mkdirSync(outDir, { recursive: true })
    const out =
      opts.out ??
      path.join(outDir, `${doc.meta.date.replace(/[:.]/g, '-')}${opts.quick ? '-quick' : ''}.json`)
    writeFileSync(out, `${JSON.stringify(doc, null, 2)}\n`)
    progress(
      `results: ${path.relative(process.cwd(), out)} (${doc.meta.durationSeconds.toFixed(0)} s)`,
    )
    let md = report(doc)
    if (opts.compare)
      md += `\n${compareReport(JSON.parse(readFileSync(opts.compare, 'utf8')), doc, opts.compare)}`
    process.stdout.write(md)
  } finally {
    await cleanup()
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    progress(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
    process.exit(1)
  },
)

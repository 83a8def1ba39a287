// Markdown for a results document: one table per workload, each figure with its ratio to the
// naive bridge (same transport) and to direct TCP, then the issue's targets, met or not.

const NAIVE_OF = { ws: 'naive-ws', wss: 'naive-wss' }
const LABEL = {
  'direct-tcp': 'direct TCP (floor)',
  'naive-ws': 'naive bridge, ws',
  'naive-wss': 'naive bridge, wss',
  'drawbridge-ws': 'Drawbridge, ws',
  'drawbridge-wss': 'Drawbridge, wss',
  'websockify-ws': 'websockify, ws',
}

const transportOf = (system) =>
  system.endsWith('-wss') ? 'wss' : system.endsWith('-ws') ? 'ws' : 'tcp'
const label = (system) => LABEL[system] ?? system

function num(v, digits = 2) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—'
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US')
  return v.toFixed(digits)
}

function ratio(v, base) {
  if (v === null || v === undefined || base === null || base === undefined) return '—'
  if (!Number.isFinite(v) || !Number.isFinite(base) || base === 0) return '—'
  return `${(v / base).toFixed(2)}×`
}

function table(header, rows) {
  const line = (cells) => `| ${cells.join(' | ')} |`
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n')
}

function byWorkload(doc) {
  const map = new Map()
  for (const r of doc.results) {
    if (!map.has(r.workload)) map.set(r.workload, new Map())
    map.get(r.workload).set(r.system, r)
  }
  return map
}

function pct(util) {
  if (!util) return '—'
  const machine = util.machine === undefined ? '' : ` (host ${Math.round(util.machine * 100)})`
  return `${Math.round(util.sut * 100)}/${Math.round(util.broker * 100)}/${Math.round(util.loadgen * 100)}${machine}`
}

export function report(doc) {
  const { meta } = doc
  const w = byWorkload(doc)
  const out = []
  out.push(
    `## Benchmark ${meta.quick ? '(quick) ' : ''}— ${meta.date.slice(0, 10)}, Node ${meta.node}, ${meta.cores} cores (${meta.cpu ?? 'unknown CPU'}), broker ${meta.broker}`,
    '',
    'Ratios: "vs naive" is against the naive bridge on the same transport, "vs direct" against MQTT straight over TCP to the broker. CPU is the system under test\'s own utime+stime from /proc, per delivered message (each message crosses the system twice: publisher in, subscriber out). "core use" is the percent of one core used by system under test / broker / load generator during the run, and (host) the percent of all cores busy, other work on this shared machine included; "limit" names a process that used nearly a whole core, or "machine busy" when every core was.',
    '',
  )
  for (const s of doc.skipped) out.push(`- ${label(s.system)}: ${s.reason}`)
  if (doc.skipped.length) out.push('')

  for (const [workload, rows] of w) {
    if (!workload.startsWith('throughput-')) continue
    const first = rows.values().next().value
    const size = first.params.size
    out.push(
      `### Throughput, QoS 0, ${size >= 1024 ? `${size / 1024} KiB` : `${size} B`} payloads (${first.params.pairs} publisher/subscriber pairs × ${first.params.count.toLocaleString('en-US')} messages)`,
      '',
    )
    const direct = rows.get('direct-tcp')?.metrics
    out.push(
      table(
        [
          'system',
          'delivered msg/s',
          'vs naive',
          'vs direct',
          'CPU µs/msg',
          'vs naive',
          'core use %',
          'limit',
          'lost',
        ],
        [...rows.values()].map((r) => {
          const m = r.metrics
          const naive = rows.get(NAIVE_OF[transportOf(r.system)])?.metrics
          return [
            label(r.system),
            num(m.msgPerSec),
            ratio(m.msgPerSec, naive?.msgPerSec),
            ratio(m.msgPerSec, direct?.msgPerSec),
            num(m.cpuUsPerMsg),
            ratio(m.cpuUsPerMsg, naive?.cpuUsPerMsg),
            pct(m.util),
            m.limit,
            String(m.lost + m.seqErrors),
          ]
        }),
      ),
      '',
    )
  }

  const lat = w.get('latency')
  if (lat) {
    const p = lat.values().next().value.params
    out.push(
      `### Latency at ${p.rate.toLocaleString('en-US')} msg/s, ${p.size} B, ${p.seconds} s (first ${p.warmup} messages not counted)${p.rounds > 1 ? `, median of ${p.rounds} rounds` : ''}`,
      '',
    )
    const direct = lat.get('direct-tcp')?.metrics
    out.push(
      table(
        [
          'system',
          'p50 ms',
          'p99 ms',
          'p99.9 ms',
          'added p50 ms',
          'added p99 ms',
          'p99 vs naive',
          'p99 vs direct',
          'CPU µs/msg',
        ],
        [...lat.values()].map((r) => {
          const m = r.metrics
          const naive = lat.get(NAIVE_OF[transportOf(r.system)])?.metrics
          return [
            label(r.system),
            num(m.p50, 3),
            num(m.p99, 3),
            num(m.p999, 3),
            direct ? num(m.p50 - direct.p50, 3) : '—',
            direct ? num(m.p99 - direct.p99, 3) : '—',
            ratio(m.p99, naive?.p99),
            ratio(m.p99, direct?.p99),
            num(m.cpuUsPerMsg),
          ]
        }),
      ),
      '',
    )
  }

  const idle = [...w.keys()].filter((k) => k.startsWith('idle-'))
  if (idle.length) {
    out.push(
      '### Idle connections (RSS of the system under test added per connected MQTT client)',
      '',
    )
    const rows = []
    for (const k of idle) {
      for (const r of w.get(k).values()) {
        const m = r.metrics
        const naive = w.get(k).get(NAIVE_OF[transportOf(r.system)])?.metrics
        rows.push([
          label(r.system),
          `${m.clients.toLocaleString('en-US')}${m.requested > m.clients ? ` (of ${m.requested.toLocaleString('en-US')}: fd limit ${r.params.fileLimit})` : ''}`,
          `${m.opened}${m.failed ? ` (${m.failed} failed)` : ''}`,
          num(m.kibPerConn, 1),
          ratio(m.kibPerConn, naive?.kibPerConn),
          num(m.driftKiBPerConn, 2),
        ])
      }
    }
    out.push(
      table(
        ['system', 'clients', 'open', 'KiB/conn', 'vs naive', 'drift KiB/conn after settling'],
        rows,
      ),
      '',
    )
  }

  const setup = [...w.keys()].filter((k) => k.startsWith('setup-'))
  if (setup.length) {
    out.push('### wss connection setup (TLS + upgrade + CONNECT/CONNACK, then close)', '')
    const rows = []
    for (const k of setup) {
      for (const r of w.get(k).values()) {
        const m = r.metrics
        const naive = w.get(k).get('naive-wss')?.metrics
        rows.push([
          label(r.system),
          `${r.params.cert.toUpperCase()}${r.params.resume ? ', resumed' : ''}`,
          num(m.perSec, 0),
          ratio(m.perSec, naive?.perSec),
          num(m.cpuMsPerSetup, 3),
          ratio(m.cpuMsPerSetup, naive?.cpuMsPerSetup),
          `${m.resumed}/${m.ok}`,
          pct(m.util),
          m.limit,
        ])
      }
    }
    out.push(
      table(
        [
          'system',
          'certificate',
          'setups/s',
          'vs naive',
          'CPU ms/setup',
          'vs naive',
          'resumed',
          'core use %',
          'limit',
        ],
        rows,
      ),
      '',
    )
  }

  for (const stormKey of ['storm', 'storm-resumed']) {
    const storm = w.get(stormKey)
    if (!storm) continue
    const p = storm.values().next().value.params
    out.push(
      `### Reconnect storm: ${p.clients.toLocaleString('en-US')} wss clients at once${p.resume ? ', offering session tickets' : ''} (TLS + upgrade + CONNECT/CONNACK, staying connected)`,
      '',
      `${p.resume ? 'Each client first connects once and keeps its TLS session ticket, as clients connected before a broker outage or a network blip have one; then all reconnect at once offering it ("resumed" counts the resumed handshakes). ' : ''}Every client starts connecting at the same moment, as after an outage; a refused or failed attempt is retried after ${p.retryMs} ms (MQTT.js's default reconnectPeriod), up to ${p.maxSeconds} s. "all in" is the time until the last CONNACK; "vs naive" its ratio to the naive bridge's (the goal: at most 2×, nobody refused while capacity is left). CPU is the gateway's own from all generators ready to the last CONNACK, per connected client; peak RSS is polled every 50 ms. "refused" lists the clients' failed attempts by what they saw, and the gateway's refusal counters.`,
      '',
    )
    const naive = storm.get('naive-wss')?.metrics
    const rows = []
    for (const r of storm.values()) {
      const m = r.metrics
      const failed = Object.entries(m.failures)
        .map(([why, n]) => `${n} ${why}`)
        .join(', ')
      const counted = Object.entries(m.gatewayRefusals)
        .map(([series, n]) => `${n} ${series.replace(/^drawbridge_/, '')}`)
        .join(', ')
      rows.push([
        label(r.system),
        `${m.connected}/${m.clients}${m.resume ? ` (${m.resumed} resumed)` : ''}`,
        num(m.allInSeconds),
        ratio(m.allInSeconds, naive?.allInSeconds),
        num(m.p50Seconds),
        num(m.p99Seconds),
        num(m.cpuMsPerClient, 2),
        ratio(m.cpuMsPerClient, naive?.cpuMsPerClient),
        `${num(m.rssBeforeMiB, 0)} → ${num(m.rssPeakMiB, 0)}`,
        [failed || 'none', counted].filter(Boolean).join('; gateway: '),
        pct(m.util),
      ])
    }
    out.push(
      table(
        [
          'system',
          'connected',
          'all in (s)',
          'vs naive',
          'p50 (s)',
          'p99 (s)',
          'CPU ms/client',
          'vs naive',
          'RSS MiB (before → peak)',
          'refused attempts',
          'core use %',
        ],
        rows,
      ),
      '',
    )
  }

  const inspect = [...w.keys()].filter((k) => /^inspect-\d+$/.test(k))
  if (inspect.length) {
    const p = w.get(inspect[0]).values().next().value.params
    out.push(
      `### mqtt.inspect on against off (CPU per delivered message, ${p.rounds} rounds, ${p.pairs} pairs)`,
      '',
      `The same build twice side by side, the only difference \`DRAWBRIDGE_MQTT_INSPECT\`; ${p.mode === 'alternate' ? 'each round runs both, one after the other in alternating order (on-off, off-on, ...)' : 'each round runs both at the same time, started together, from the same load generator (each with its own topics), so what else the host does in that window it does to both'}, and "on/off" is the ratio within each round. The median of the rounds is the figure; the spread (min-max) is the noise of this host. "user CPU" is the user-space part alone (the framer runs there; the kernel's send path, most of the total and of its noise, does not).`,
      '',
    )
    const rows = []
    for (const k of inspect) {
      for (const r of w.get(k).values()) {
        const m = r.metrics
        const size = r.params.size
        rows.push([
          m.transport,
          size >= 1024 ? `${size / 1024} KiB` : `${size} B`,
          `${num(m.onMedian)} (${m.onCpuUsPerMsg.map((v) => num(v)).join(', ')})`,
          `${num(m.offMedian)} (${m.offCpuUsPerMsg.map((v) => num(v)).join(', ')})`,
          m.ratios.map((v) => v.toFixed(2)).join(', '),
          `**${m.medianRatio.toFixed(2)}×**`,
          `${m.minRatio.toFixed(2)}-${m.maxRatio.toFixed(2)}`,
          `${num(m.onUserMedian)} / ${num(m.offUserMedian)} (${m.userMedianRatio.toFixed(2)}×)`,
          `${num(m.onMsgPerSec)} / ${num(m.offMsgPerSec)}`,
          String(m.lost),
        ])
      }
    }
    out.push(
      table(
        [
          'transport',
          'payload',
          'on: CPU µs/msg, median (runs)',
          'off: CPU µs/msg, median (runs)',
          'on/off by round',
          'on/off median',
          'spread',
          'user CPU µs/msg on / off (median ratio)',
          'msg/s on / off',
          'lost',
        ],
        rows,
      ),
      '',
    )
  }

  const memory = w.get('inspect-memory')
  if (memory) {
    out.push(
      '### mqtt.inspect on against off: memory per idle connection, after a full GC',
      '',
      'A fresh process per measurement: a warm-up wave, a full GC (DevTools HeapProfiler.collectGarbage, twice), the baseline; then the clients connect (CONNECT/CONNACK/SUBSCRIBE), settle, another full GC ("idle"). Then each sends 10 PUBLISHes of 64 B to its own topic, each in two WebSocket frames cut after its first byte (a header across two chunks), gets them back, settles, full GC ("after traffic"). Medians over the rounds.',
      '',
    )
    const rows = [...memory.values()].map((r) => {
      const m = r.metrics
      const d = (key) => num(m.on[key] - m.off[key], 2)
      return [
        m.transport,
        m.clients.toLocaleString('en-US'),
        `${num(m.on.rssKiBPerConn, 1)} / ${num(m.off.rssKiBPerConn, 1)}`,
        d('rssKiBPerConn'),
        `${num(m.on.heapKiBPerConn, 2)} / ${num(m.off.heapKiBPerConn, 2)}`,
        d('heapKiBPerConn'),
        `${num(m.on.externalKiBPerConn, 2)} / ${num(m.off.externalKiBPerConn, 2)}`,
        `${num(m.on.trafficRssKiBPerConn, 1)} / ${num(m.off.trafficRssKiBPerConn, 1)}`,
        `${num(m.on.trafficHeapKiBPerConn, 2)} / ${num(m.off.trafficHeapKiBPerConn, 2)}`,
        String(m.failed),
      ]
    })
    out.push(
      table(
        [
          'transport',
          'clients',
          'idle: RSS KiB/conn on / off',
          'RSS on − off',
          'idle: heap KiB/conn on / off',
          'heap on − off',
          'external KiB/conn on / off',
          'after traffic: RSS on / off',
          'after traffic: heap on / off',
          'failed',
        ],
        rows,
      ),
      '',
    )
  }

  out.push(targets(w), '')
  if (inspect.length) out.push(inspectTargets(w, inspect), '')
  return `${out.join('\n')}\n`
}

/** Issue 13: CPU per message with mqtt.inspect within 10% of the blind pipe. */
function inspectTargets(w, keys) {
  const rows = []
  for (const k of keys) {
    for (const r of w.get(k).values()) {
      const m = r.metrics
      const size = r.params.size
      rows.push([
        `CPU/msg ${size >= 1024 ? `${size / 1024} KiB` : `${size} B`} ${m.transport}, inspect on ≤ 1.10 × off`,
        `${m.medianRatio.toFixed(3)}× (median of ${m.ratios.length}; ${m.minRatio.toFixed(2)}-${m.maxRatio.toFixed(2)}), ${m.onMedian.toFixed(2)} vs ${m.offMedian.toFixed(2)} µs`,
        m.medianRatio <= 1.1 ? 'met' : '**not met**',
      ])
    }
  }
  return ['### Targets (issue 13)', '', table(['target', 'measured', 'status'], rows)].join('\n')
}

function metric(w, workload, system, key) {
  return w.get(workload)?.get(system)?.metrics[key]
}

/** The issue's targets, each met, not met (with the figure), or not measured in this run. */
function targets(w) {
  const rows = []
  const check = (what, value, ok, shown) => {
    if (value === undefined || value === null || Number.isNaN(value))
      rows.push([what, 'not measured', '—'])
    else rows.push([what, shown, ok ? 'met' : '**not met**'])
  }
  for (const size of [64, 1024]) {
    for (const t of ['ws', 'wss']) {
      const d = metric(w, `throughput-${size}`, `drawbridge-${t}`, 'cpuUsPerMsg')
      const n = metric(w, `throughput-${size}`, `naive-${t}`, 'cpuUsPerMsg')
      const r = d !== undefined && n !== undefined ? d / n : undefined
      check(
        `CPU/msg ${size} B ${t} ≤ 0.6 × naive`,
        r,
        r <= 0.6,
        r === undefined ? '' : `${d.toFixed(2)} µs = ${r.toFixed(2)}× naive`,
      )
    }
    const d = metric(w, `throughput-${size}`, 'drawbridge-ws', 'cpuUsPerMsg')
    const y = metric(w, `throughput-${size}`, 'websockify-ws', 'cpuUsPerMsg')
    check(
      `CPU/msg ${size} B ws below websockify`,
      y === undefined ? undefined : d,
      d < y,
      y === undefined || d === undefined ? '' : `${d.toFixed(2)} vs ${y.toFixed(2)} µs`,
    )
  }
  for (const t of ['ws', 'wss']) {
    const direct = w.get('latency')?.get('direct-tcp')?.metrics
    const m = w.get('latency')?.get(`drawbridge-${t}`)?.metrics
    const a50 = m && direct ? m.p50 - direct.p50 : undefined
    const a99 = m && direct ? m.p99 - direct.p99 : undefined
    check(
      `added p50 latency ${t} < 0.1 ms`,
      a50,
      a50 < 0.1,
      a50 === undefined ? '' : `${a50.toFixed(3)} ms`,
    )
    check(
      `added p99 latency ${t} < 0.5 ms`,
      a99,
      a99 < 0.5,
      a99 === undefined ? '' : `${a99.toFixed(3)} ms`,
    )
  }
  const idleKeys = [...w.keys()]
    .filter((k) => k.startsWith('idle-'))
    .sort((a, b) => Number(b.slice(5)) - Number(a.slice(5)))
  const idleTop = idleKeys[0]
  for (const [t, limit] of [
    ['ws', 6],
    ['wss', 32],
  ]) {
    const m = idleTop ? w.get(idleTop).get(`drawbridge-${t}`)?.metrics : undefined
    check(
      `idle ≤ ${limit} KiB/conn ${t} (${idleTop?.slice(5) ?? '?'} clients)`,
      m?.kibPerConn,
      m?.kibPerConn <= limit,
      m ? `${m.kibPerConn.toFixed(1)} KiB` : '',
    )
    check(
      `idle memory flat after settling ${t} (drift < 0.5 KiB/conn)`,
      m?.driftKiBPerConn,
      Math.abs(m?.driftKiBPerConn) < 0.5,
      m ? `${m.driftKiBPerConn.toFixed(2)} KiB/conn` : '',
    )
  }
  for (const k of ['setup-ecdsa', 'setup-ecdsa-resumed']) {
    const d = metric(w, k, 'drawbridge-wss', 'cpuMsPerSetup')
    const n = metric(w, k, 'naive-wss', 'cpuMsPerSetup')
    const r = d !== undefined && n !== undefined ? d / n : undefined
    check(
      `CPU/setup ${k.slice(6)} ≤ 0.6 × naive`,
      r,
      r <= 0.6,
      r === undefined ? '' : `${d.toFixed(3)} ms = ${r.toFixed(2)}× naive`,
    )
  }
  const issue6 = rows.splice(0)
  // Issue 17: where users feel it.
  {
    const d = metric(w, 'setup-ecdsa', 'drawbridge-wss', 'cpuMsPerSetup')
    check('CPU/setup wss ECDSA ≤ 1.5 ms', d, d <= 1.5, d === undefined ? '' : `${d.toFixed(3)} ms`)
    const direct = w.get('latency')?.get('direct-tcp')?.metrics
    const m = w.get('latency')?.get('drawbridge-ws')?.metrics
    const added = m && direct ? m.p99 - direct.p99 : undefined
    check(
      'p99 at 2,000 msg/s ws ≤ direct + 0.3 ms',
      added,
      added <= 0.3,
      added === undefined ? '' : `${m.p99.toFixed(3)} ms vs direct ${direct.p99.toFixed(3)} ms`,
    )
    for (const size of [16384, 262144]) {
      const db = metric(w, `throughput-${size}`, 'drawbridge-wss', 'cpuUsPerMsg')
      const n = metric(w, `throughput-${size}`, 'naive-wss', 'cpuUsPerMsg')
      check(
        `CPU/msg ${size / 1024} KiB wss ≤ naive`,
        n === undefined ? undefined : db,
        db <= n,
        db === undefined || n === undefined ? '' : `${db.toFixed(1)} vs ${n.toFixed(1)} µs`,
      )
    }
    const s = w.get('storm')
    const ds = s?.get('drawbridge-wss')?.metrics
    const ns = s?.get('naive-wss')?.metrics
    const r = ds && ns ? ds.allInSeconds / ns.allInSeconds : undefined
    const refused = ds ? ds.attempts - ds.connected : undefined
    check(
      'storm: all back within 2 × naive, none refused',
      r,
      r <= 2 && refused === 0 && ds.connected === ds.clients,
      r === undefined
        ? ''
        : `${ds.allInSeconds.toFixed(2)} s = ${r.toFixed(2)}× naive, ${refused} failed attempts`,
    )
  }
  return [
    '### Targets (issue 6)',
    '',
    table(['target', 'measured', 'status'], issue6),
    '',
    '### Targets (issue 17)',
    '',
    table(['target', 'measured', 'status'], rows),
  ].join('\n')
}

const HEADLINE = {
  throughput: [
    ['msgPerSec', 'msg/s', true],
    ['cpuUsPerMsg', 'CPU µs/msg', false],
  ],
  latency: [
    ['p50', 'p50 ms', false],
    ['p99', 'p99 ms', false],
    ['p999', 'p99.9 ms', false],
  ],
  idle: [['kibPerConn', 'KiB/conn', false]],
  setup: [
    ['perSec', 'setups/s', true],
    ['cpuMsPerSetup', 'CPU ms/setup', false],
  ],
}

/** The change of each headline figure against an earlier results document. */
export function compareReport(before, after, file) {
  const old = byWorkload(before)
  const rows = []
  for (const r of after.results) {
    const prev = old.get(r.workload)?.get(r.system)
    if (!prev) continue
    const kind = r.workload.split('-')[0]
    for (const [key, name, higherIsBetter] of HEADLINE[kind] ?? []) {
      const a = prev.metrics[key]
      const b = r.metrics[key]
      if (typeof a !== 'number' || typeof b !== 'number' || a === 0) continue
      const change = (b - a) / a
      const better = higherIsBetter ? change > 0 : change < 0
      rows.push([
        r.workload,
        label(r.system),
        name,
        num(a, 3),
        num(b, 3),
        `${change >= 0 ? '+' : ''}${(change * 100).toFixed(1)}%${Math.abs(change) >= 0.05 ? (better ? ' better' : ' worse') : ''}`,
      ])
    }
  }
  return [
    `### Change against ${file} (${before.meta.date.slice(0, 16)}, ${before.meta.quick ? 'quick' : 'full'} run)`,
    '',
    rows.length
      ? table(['workload', 'system', 'figure', 'before', 'now', 'change'], rows)
      : 'No workload/system in common.',
    '',
  ].join('\n')
}

// The Grafana dashboard and the Prometheus alert rules may only name metrics a live gateway
// exposes; the rules must pass `promtool check rules` and their own unit tests.
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { forEachSchemaKey } from '../src/config/load.js'
import { schema } from '../src/config/schema.js'
import { METRIC, METRIC_PREFIX } from '../src/metrics.js'
import { startBroker } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { scrape } from './helpers/scrape.js'
import { runs, skipWithout } from './helpers/tools.js'

const DASHBOARD = fileURLToPath(new URL('../deploy/grafana/drawbridge.json', import.meta.url))
const ALERTS = fileURLToPath(new URL('../deploy/prometheus/alerts.yml', import.meta.url))
const README = fileURLToPath(new URL('../README.md', import.meta.url))
const ALERT_TESTS = fileURLToPath(new URL('../deploy/prometheus/alerts.test.yml', import.meta.url))

// `up` is written by Prometheus itself for every scrape target, never by the target.
const SYNTHETIC = new Set(['up'])
const KEYWORDS = new Set([
  'and',
  'or',
  'unless',
  'bool',
  'offset',
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'inf',
  'nan',
])

/** Metric names in a PromQL expression (a small lexer, enough for our own expressions). */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, ' ') // string literals
    .replace(/\{[^}]*\}/g, ' ') // label matchers (and Grafana's $variables inside them)
    .replace(/\[[^\]]*\]/g, ' ') // ranges and subqueries
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ') // label lists
  const names = new Set<string>()
  for (const match of stripped.matchAll(/(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const [, name = '', call] = match
    if (call !== undefined || KEYWORDS.has(name.toLowerCase())) continue
    names.add(name)
  }
  return [...names]
}

/** Every `expr` string anywhere in the dashboard, plus the metrics its variables query. */
function dashboardExpressions(node: unknown, into: string[] = []): string[] {
  if (Array.isArray(node)) {
    for (const child of node) dashboardExpressions(child, into)
  } else if (node !== null && typeof node === 'object') {
    for (const [key, child] of Object.entries(node)) {
      if (key === 'expr' && typeof child === 'string') into.push(child)
      else if (key === 'definition' && typeof child === 'string') {
        // label_values(metric{...}, label): only the first argument is a metric.
        const metric = /^label_values\(([^,]+),/.exec(child)?.[1]
        if (metric !== undefined) into.push(metric)
      } else dashboardExpressions(child, into)
    }
  }
  return into
}

/** The `expr:` of every rule: one-line values and `|` blocks (indented continuation lines). */
function ruleExpressions(yaml: string): string[] {
  const exprs: string[] = []
  const lines = yaml.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const match = /^(\s*)expr:\s*(.*)$/.exec(lines[i] ?? '')
    if (!match) continue
    const indent = (match[1] ?? '').length
    if (match[2] !== '|' && match[2] !== '>') {
      exprs.push(match[2] ?? '')
      continue
    }
    const block: string[] = []
    while (i + 1 < lines.length) {
      const next = lines[i + 1] ?? ''
      if (next.trim() !== '' && next.search(/\S/) <= indent) break
      block.push(next)
      i++
    }
    exprs.push(block.join('\n'))
  }
  return exprs
}

/** Series names a family of each type produces (histogram x -> x_bucket, x_sum, x_count). */
function exposedNames(types: Map<string, string>): Set<string> {
  const names = new Set<string>()
  for (const [family, type] of types) {
    if (type === 'histogram') {
      for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${family}${suffix}`)
    } else if (type === 'summary') {
      for (const suffix of ['', '_sum', '_count']) names.add(`${family}${suffix}`)
    } else {
      names.add(family)
    }
  }
  return names
}

t.test('the PromQL name extractor', async (t) => {
  t.same(
    metricNames(
      'sum by (le) (rate(a_bucket{job=~"$job"}[$__rate_interval])) > 0.2 * b_total offset 6h and up == 0',
    ).sort(),
    ['a_bucket', 'b_total', 'up'],
  )
  t.same(metricNames('(x{l="a{b}"} - time()) / 86400 < 1e3'), ['x'])
})

t.test('dashboard and alert rules name only metrics the gateway exposes', async (t) => {
  const broker = await startBroker(t, 'aedes')
  // perClient on, so every metric the gateway can expose is in the scrape.
  const gw = await startTestGateway(t, broker.port, { DRAWBRIDGE_METRICS_PER_CLIENT: 'true' })
  const exposed = exposedNames((await scrape(gw.adminUrl)).types)
  t.ok(exposed.has('drawbridge_bytes_total') && exposed.has('process_cpu_seconds_total'))

  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as unknown
  const rules = readFileSync(ALERTS, 'utf8')
  const alertCount = rules.match(/^\s*- alert: /gm)?.length ?? 0
  const ruleExprs = ruleExpressions(rules)
  t.equal(ruleExprs.length, alertCount, 'one expression read per alert rule')
  t.ok(alertCount >= 7)

  const used = new Map<string, string>()
  for (const expr of dashboardExpressions(dashboard)) {
    for (const name of metricNames(expr)) used.set(name, 'deploy/grafana/drawbridge.json')
  }
  const panelExprCount = used.size
  for (const expr of ruleExprs) {
    for (const name of metricNames(expr)) used.set(name, 'deploy/prometheus/alerts.yml')
  }
  t.ok(panelExprCount >= 10, `the dashboard queries ${panelExprCount} metrics`)
  for (const [name, where] of used) {
    t.ok(exposed.has(name) || SYNTHETIC.has(name), `${where}: ${name} is exposed`)
  }

  // What the issue asks the dashboard to show, and the rules to alert on.
  for (const needed of [
    'drawbridge_connections_active',
    'drawbridge_connections_total',
    'drawbridge_bytes_total',
    'drawbridge_handshake_rejections_total',
    'drawbridge_closes_total',
    'drawbridge_upstream_errors_total',
    'drawbridge_upstream_connect_duration_seconds_bucket',
    'drawbridge_tls_certificate_expiry_timestamp_seconds',
    'process_cpu_seconds_total',
    'process_resident_memory_bytes',
    // Issue 13: what the MQTT framers see, and the guards.
    'drawbridge_mqtt_packets_total',
    'drawbridge_mqtt_connects_total',
    'drawbridge_mqtt_connacks_total',
    'drawbridge_mqtt_refusals_total',
    'drawbridge_mqtt_malformed_total',
    'drawbridge_mqtt_subprotocol_mismatch_total',
  ]) {
    t.ok(
      dashboardExpressions(dashboard).some((e) => metricNames(e).includes(needed)),
      `dashboard shows ${needed}`,
    )
  }
  // Every MQTT metric, including any added later, is on the dashboard, as a rate (they are all
  // counters: a raw total says little on a graph).
  const mqttMetrics = Object.values(METRIC)
    .filter((name) => name.startsWith('mqtt_'))
    .map((name) => `${METRIC_PREFIX}${name}`)
  t.equal(mqttMetrics.length, 6)
  for (const metric of mqttMetrics) {
    const exprs = dashboardExpressions(dashboard).filter((e) => metricNames(e).includes(metric))
    t.ok(exprs.length > 0, `dashboard shows ${metric}`)
    t.ok(
      exprs.some((e) => new RegExp(`rate\\(${metric}\\{`).test(e)),
      `${metric}: shown as a rate`,
    )
  }
  for (const alert of [
    'DrawbridgeDown',
    'DrawbridgeNoUpstream',
    'DrawbridgeHandshakeRejectionSpike',
    'DrawbridgeCertificateExpiresIn14Days',
    'DrawbridgeCertificateExpiresIn2Days',
    'DrawbridgeCertificateReloadFailed',
    'DrawbridgeMemoryGrowth',
  ]) {
    t.match(rules, new RegExp(`- alert: ${alert}\\n`), `rule ${alert}`)
  }
})

const PROMTOOL = skipWithout(
  'promtool',
  runs('promtool', ['--version']),
  'Debian package prometheus, .ci/run',
)
t.test(
  'promtool check metrics finds nothing to say about /metrics',
  { skip: PROMTOOL },
  async (t) => {
    const broker = await startBroker(t, 'aedes')
    const gw = await startTestGateway(t, broker.port)
    const { text } = await scrape(gw.adminUrl)
    t.match(text, /nodejs_active_handles\{/, 'the per-type handle gauges are still there')
    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' })
    t.equal(check.status, 0, 'exit status')
    t.equal(`${check.stdout}${check.stderr}`, '', 'no lint findings')
  },
)

t.test('promtool check rules and promtool test rules pass', { skip: PROMTOOL }, async (t) => {
  const check = spawnSync('promtool', ['check', 'rules', ALERTS], { encoding: 'utf8' })
  t.equal(check.status, 0, `promtool check rules\n${check.stdout}${check.stderr}`)
  t.match(check.stdout, /SUCCESS: \d+ rules found/)
  const unit = spawnSync('promtool', ['test', 'rules', ALERT_TESTS], { encoding: 'utf8' })
  t.equal(unit.status, 0, `promtool test rules\n${unit.stdout}${unit.stderr}`)
})

t.test("README's Observability section lists every metric and admin/metrics setting", async (t) => {
  const readme = readFileSync(README, 'utf8')
  // Table cells as prettier pads them: | `name` | or |  `name`   |
  const cell = (text: string): RegExp =>
    new RegExp(`\\|\\s*\`${text.replace(/[.]/g, '\\.')}\`\\s*\\|`)
  for (const name of Object.values(METRIC)) {
    t.match(readme, cell(`${METRIC_PREFIX}${name}`), `${METRIC_PREFIX}${name} documented`)
  }
  forEachSchemaKey(schema, (path, spec) => {
    if (!path.startsWith('admin.') && !path.startsWith('metrics.')) return
    const upperSnake = path
      .replace(/([a-z])([A-Z])/g, '$1_$2')
      .replace(/\./g, '_')
      .toUpperCase()
    t.equal(spec.env, `DRAWBRIDGE_${upperSnake}`, `${path}: env name follows the rule`)
    t.ok('doc' in spec && 'format' in spec && 'default' in spec, `${path}: doc, format, default`)
    t.match(readme, cell(path), `${path} documented`)
    t.match(readme, cell(String(spec.env)), `${String(spec.env)} documented`)
  })
})

// Summarises a V8 .cpuprofile (from `npm run bench -- --cpu-prof DIR`): self time per function
// and per source file, so the hot path can be read without DevTools; with --inclusive, also
// the share of the active (non-idle) samples whose stack passes through code matching each
// pattern (a file or function name), inlined callees and all: what a piece of code costs.
//   node bench/profile-summary.mjs FILE.cpuprofile [TOP] [--inclusive PATTERN ...]
//   node bench/profile-summary.mjs FILE.cpuprofile 20 --inclusive mqtt/framer.js clientData
import { readFileSync } from 'node:fs'
import process from 'node:process'

const args = process.argv.slice(2)
const at = args.indexOf('--inclusive')
const patterns = at === -1 ? [] : args.splice(at).slice(1)
const [file, topArg] = args
if (!file) {
  process.stderr.write(
    'usage: node bench/profile-summary.mjs FILE.cpuprofile [TOP] [--inclusive PATTERN ...]\n',
  )
  process.exit(2)
}
const top = Number(topArg ?? 30)
const profile = JSON.parse(readFileSync(file, 'utf8'))
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const self = new Map()
const deltas = profile.timeDeltas
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i]
  self.set(id, (self.get(id) ?? 0) + (deltas[i] ?? 0))
}
const total = [...self.values()].reduce((a, b) => a + b, 0)
const fnTotals = new Map()
const fileTotals = new Map()
const where = (f) =>
  f.url
    ? f.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/(dist|bench)\//, '$1/')
    : '(native)'
for (const [id, us] of self) {
  const { callFrame: f } = byId.get(id)
  const key = `${f.functionName || '(anonymous)'}  ${where(f)}:${f.lineNumber + 1}`
  fnTotals.set(key, (fnTotals.get(key) ?? 0) + us)
  const fileKey = f.url ? where(f) : f.functionName
  fileTotals.set(fileKey, (fileTotals.get(fileKey) ?? 0) + us)
}
const show = (title, map) => {
  process.stdout.write(`\n${title} (total ${(total / 1000).toFixed(0)} ms sampled)\n`)
  for (const [k, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    process.stdout.write(`${((us / total) * 100).toFixed(1).padStart(5)}%  ${k}\n`)
  }
}
show('self time by function', fnTotals)
show('self time by file', fileTotals)

if (patterns.length > 0) {
  const parent = new Map()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  // Whether each node's stack (it and its callers) passes through each pattern, memoised.
  const memo = new Map()
  const matches = (id) => {
    let m = memo.get(id)
    if (m !== undefined) return m
    const { callFrame: f } = byId.get(id)
    const name = `${f.functionName} ${where(f)}`
    const up = parent.has(id) ? matches(parent.get(id)) : patterns.map(() => false)
    m = patterns.map((p, i) => up[i] || name.includes(p))
    memo.set(id, m)
    return m
  }
  let active = 0
  const inclusive = patterns.map(() => 0)
  for (const [id, us] of self) {
    if (byId.get(id).callFrame.functionName === '(idle)') continue
    active += us
    matches(id).forEach((hit, i) => {
      if (hit) inclusive[i] += us
    })
  }
  process.stdout.write(`\ninclusive time (active, not idle: ${(active / 1000).toFixed(0)} ms)\n`)
  patterns.forEach((p, i) => {
    const us = inclusive[i]
    process.stdout.write(
      `${((us / active) * 100).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${p}\n`,
    )
  })
}

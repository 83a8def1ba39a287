// Summarises a V8 .cpuprofile (from `npm run bench -- --cpu-prof DIR`): self time per function
// and per source file, so the hot path can be read without DevTools.
//   node bench/profile-summary.mjs FILE.cpuprofile [TOP]
import { readFileSync } from 'node:fs'
import process from 'node:process'

const [file, topArg] = process.argv.slice(2)
if (!file) {
  process.stderr.write('usage: node bench/profile-summary.mjs FILE.cpuprofile [TOP]\n')
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
for (const [id, us] of self) {
  const { callFrame: f } = byId.get(id)
  const where = f.url
    ? f.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/(dist|bench)\//, '$1/')
    : '(native)'
  const key = `${f.functionName || '(anonymous)'}  ${where}:${f.lineNumber + 1}`
  fnTotals.set(key, (fnTotals.get(key) ?? 0) + us)
  const fileKey = f.url ? where : f.functionName
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

// Where a connection set-up's CPU goes: the active samples of a .cpuprofile (from `npm run
// bench -- --workloads setup --cpu-prof DIR`, which profiles Drawbridge and the naive bridge)
// put into phases by the frames on their stack, the first rule that matches winning, then
// divided by the number of set-ups. Samples are wall time while the process ran, so read the
// shares, not the absolute figures, on a busy host; start-up (module loading) is listed apart.
//   node bench/profile-phases.mjs FILE.cpuprofile [SETUPS]
import { readFileSync } from 'node:fs'
import process from 'node:process'

const [file, setupsArg] = process.argv.slice(2)
if (!file) {
  process.stderr.write('usage: node bench/profile-phases.mjs FILE.cpuprofile [SETUPS]\n')
  process.exit(2)
}
const setups = Number(setupsArg ?? 1000)
const profile = JSON.parse(readFileSync(file, 'utf8'))
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const parent = new Map()
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)

const any = (stack, test) => stack.some(test)
const inFile = (part) => (f) => f.url.includes(part)
const named =
  (...names) =>
  (f) =>
    names.includes(f.functionName)

/** [phase, test(stack)]: the first that matches takes the sample. */
const PHASES = [
  ['start-up (module loading)', (s) => any(s, (f) => /modules\/(cjs|esm)/.test(f.url))],
  ['garbage collector', (s) => s.at(-1).functionName === '(garbage collector)'],
  ['native, unattributed', (s) => s.at(-1).functionName === '(program)'],
  ['ws: upgrade and 101', (s) => any(s, named('handleUpgrade', 'completeUpgrade'))],
  ['ws: sending (CONNACK, close)', (s) => any(s, inFile('ws/lib/sender'))],
  ['ws: receiving (CONNECT, close)', (s) => any(s, inFile('ws/lib/receiver'))],
  [
    'broker connect',
    (s) =>
      any(s, (f) => f.functionName === 'connectUpstream' || f.functionName === 'internalConnect'),
  ],
  [
    'TLS accept and handshake',
    (s) =>
      any(
        s,
        (f) =>
          f.url.includes('_tls_wrap') &&
          /onhandshake|_init|TLSSocket|_wrapHandle|onnewsession|tlsConnectionListener|_finishInit/.test(
            f.functionName,
          ),
      ),
  ],
  ['HTTP parsing', (s) => any(s, (f) => /_http_(server|common|incoming)/.test(f.url))],
  [
    'metrics',
    (s) => any(s, (f) => f.url.includes('prom-client') || f.url.includes('/dist/metrics')),
  ],
  ['logging', (s) => any(s, inFile('pino'))],
  [
    'closing (end, destroy, close events)',
    (s) => any(s, (f) => /destroy|_final|close|Close|^end$/.test(f.functionName)),
  ],
  ['other (timers, events, streams, our checks)', () => true],
]

const totals = new Map(PHASES.map(([name]) => [name, 0]))
let active = 0
for (let i = 0; i < profile.samples.length; i++) {
  let id = profile.samples[i]
  if (byId.get(id).callFrame.functionName === '(idle)') continue
  const stack = []
  while (id !== undefined) {
    stack.push(byId.get(id).callFrame)
    id = parent.get(id)
  }
  stack.reverse()
  const us = profile.timeDeltas[i] ?? 0
  const [name] = PHASES.find(([, test]) => test(stack))
  totals.set(name, totals.get(name) + us)
  active += us
}
const startup = totals.get(PHASES[0][0])
process.stdout.write(
  `${file}\nactive ${(active / 1000).toFixed(0)} ms; per set-up, start-up excluded: ${((active - startup) / setups).toFixed(0)} µs\n`,
)
for (const [name, us] of [...totals].sort((a, b) => b[1] - a[1])) {
  if (us === 0) continue
  const share =
    name === PHASES[0][0] ? '' : ` ${((100 * us) / (active - startup)).toFixed(1).padStart(5)}%`
  process.stdout.write(`${(us / setups).toFixed(0).padStart(7)} µs${share}  ${name}\n`)
}

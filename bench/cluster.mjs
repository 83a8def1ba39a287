// Drawbridge as N node:cluster workers sharing one listening port (the primary hands out
// connections round-robin), for `npm run bench -- --workers N`: the measurement behind the
// decision whether Drawbridge should have a `workers` setting. Not part of the product: the
// workers' admin listeners are off (they would share one port, each answering for itself).
//   node bench/cluster.mjs N DIST/cli.js   (Drawbridge's settings come from the environment)
import cluster from 'node:cluster'
import process from 'node:process'

const [countArg, cli] = process.argv.slice(2)
const count = Number(countArg)
if (!(count >= 1) || !cli) {
  process.stderr.write('usage: node bench/cluster.mjs N path/to/dist/cli.js\n')
  process.exit(2)
}

if (cluster.isPrimary) {
  cluster.setupPrimary({ exec: cli, args: [] })
  for (let i = 0; i < count; i++) cluster.fork({ DRAWBRIDGE_ADMIN_ENABLED: 'false' })
  let stopping = false
  const stop = () => {
    stopping = true
    for (const worker of Object.values(cluster.workers ?? {})) worker?.kill('SIGTERM')
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  cluster.on('exit', (worker, code) => {
    if (!stopping) process.stderr.write(`worker ${worker.process.pid} exited (${code})\n`)
    if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(stopping ? 0 : 1)
  })
}

// Fallback broker when mosquitto is not on PATH: the project's own embedded Aedes, in its own
// process so its CPU is not mixed with the system under test's.
//   node bench/aedes-broker.mjs PORT
import process from 'node:process'
import { startEmbeddedBroker } from '../dist/dev/broker.js'

const port = Number(process.argv[2])
await startEmbeddedBroker({ host: '127.0.0.1', port })
process.on('SIGTERM', () => process.exit(0))

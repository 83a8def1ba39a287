// The naive baseline: what any Node implementation of an MQTT-over-WebSocket bridge starts
// from. `ws` + `net`, each WebSocket message written to the broker as it comes and each broker
// chunk sent as one frame, no tuning, no backpressure, no accounting. Kept deliberately plain:
// it is the yardstick, not a product.
//
//   node bench/naive-bridge.mjs --port P --broker HOST:PORT [--cert FILE --key FILE]
import { readFileSync } from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import process from 'node:process'
import { parseArgs } from 'node:util'
import { WebSocketServer } from 'ws'

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    broker: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
  },
})
const [brokerHost, brokerPort] = (values.broker ?? '127.0.0.1:1883').split(':')

const server =
  values.cert !== undefined && values.key !== undefined
    ? https.createServer({ cert: readFileSync(values.cert), key: readFileSync(values.key) })
    : http.createServer()

const wss = new WebSocketServer({ server, path: '/mqtt' })

wss.on('connection', (ws) => {
  const upstream = net.connect(Number(brokerPort), brokerHost)
  ws.on('message', (data) => upstream.write(data))
  upstream.on('data', (chunk) => ws.send(chunk))
  ws.on('close', () => upstream.end())
  ws.on('error', () => upstream.destroy())
  upstream.on('close', () => ws.close())
  upstream.on('error', () => ws.terminate())
})

server.listen(Number(values.port ?? 0), values.host)
process.on('SIGTERM', () => process.exit(0))

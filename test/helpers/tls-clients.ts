// Real TLS clients for the tests: MQTT.js over wss:// and mqtts://, python paho-mqtt (the
// system python, which has paho) over both, and a bare TLS handshake to read the served serial.
import { execFile } from 'node:child_process'
import tls from 'node:tls'
import mqtt, { type MqttClient } from 'mqtt'
import { WebSocket } from 'ws'
import type { IssuedCert, Pem } from '../../src/dev/certs.js'

export const PYTHON = '/usr/bin/python3'

/** Serial of the certificate a new handshake on `port` is served (upper-case hex). */
export function servedSerial(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      const serial = socket.getPeerCertificate().serialNumber
      socket.destroy()
      resolve(serial)
    })
    socket.setTimeout(5_000, () => socket.destroy(new Error('handshake timed out')))
    socket.once('error', reject)
  })
}

export interface ClientTls {
  ca: string
  client?: Pem | undefined
}

/**
 * Connects MQTT.js (3.1.1) to `url` (wss:// or mqtts://). Rejects on 'error', on a close before
 * CONNACK (connectAsync alone waits forever when a refused WebSocket closes without an error),
 * and after 5 s.
 */
export function connectMqtt(url: string, { ca, client }: ClientTls): Promise<MqttClient> {
  const connection = mqtt.connect(url, {
    ca,
    ...(client && { cert: client.cert, key: client.key }),
    rejectUnauthorized: true,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: 5_000,
    clientId: `tls-test-${Math.random().toString(16).slice(2, 10)}`,
  })
  return new Promise((resolve, reject) => {
    let lastError: Error | undefined
    const timer = setTimeout(() => fail(new Error('no CONNACK within 5 s')), 5_000)
    const fail = (err: Error): void => {
      clearTimeout(timer)
      connection.removeAllListeners()
      connection.on('error', () => undefined)
      connection.end(true)
      reject(err)
    }
    connection.on('error', (err) => (lastError = err))
    connection.once('close', () => fail(lastError ?? new Error('closed before CONNACK')))
    connection.once('connect', () => {
      clearTimeout(timer)
      connection.removeAllListeners('close')
      resolve(connection)
    })
  })
}

/** Subscribes to `topic`, publishes `payload` (QoS 1) and resolves with what comes back. */
export async function roundTrip(
  client: MqttClient,
  topic: string,
  payload: string,
): Promise<string> {
  await client.subscribeAsync(topic, { qos: 1 })
  const received = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no message on ${topic} within 5 s`)), 5_000)
    const onMessage = (got: string, message: Buffer): void => {
      if (got !== topic) return
      clearTimeout(timer)
      client.removeListener('message', onMessage)
      resolve(message.toString())
    }
    client.on('message', onMessage)
  })
  await client.publishAsync(topic, payload, { qos: 1 })
  return received
}

/** Tries MQTT.js with `client`: 'ok' after a round trip, else the error message. */
export async function tryMqtt(
  url: string,
  ca: string,
  client: IssuedCert | undefined,
): Promise<string> {
  let connection: MqttClient | undefined
  try {
    connection = await connectMqtt(url, { ca, client })
    const echoed = await roundTrip(connection, `tls/${Math.random().toString(16).slice(2)}`, 'ping')
    return echoed === 'ping' ? 'ok' : `wrong payload ${echoed}`
  } catch (err) {
    return (err as Error).message
  } finally {
    await connection?.endAsync(true)
  }
}

export interface PahoCase {
  name: string
  ca: string
  cert?: string
  key?: string
}

/**
 * Runs test/fixtures/paho_tls.py once for several cases (one python start-up): each case
 * connects with paho over `transport`, and on success round-trips a QoS 1 message.
 * Resolves with name -> 'ok' or the error text.
 */
export function runPaho(
  transport: 'websockets' | 'tcp',
  port: number,
  cases: PahoCase[],
): Promise<Record<string, string>> {
  const script = new URL('../fixtures/paho_tls.py', import.meta.url).pathname
  const input = JSON.stringify({ transport, port, path: '/mqtt', cases })
  return new Promise((resolve, reject) => {
    const child = execFile(PYTHON, [script], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`paho script failed: ${err.message}\n${stderr}`))
        return
      }
      resolve(JSON.parse(stdout) as Record<string, string>)
    })
    child.stdin?.end(input)
  })
}

/**
 * Opens a raw `ws` WebSocket: 101 gives { status: 101 }; a refusal gives its status and body
 * (MQTT.js hides both: it reports only a close before CONNACK).
 */
export function wsUpgrade(
  url: string,
  { ca, client }: ClientTls,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ['mqtt'], {
      ca,
      ...(client && { cert: client.cert, key: client.key }),
      handshakeTimeout: 5_000,
    })
    ws.once('open', () => {
      ws.terminate()
      resolve({ status: 101, body: '' })
    })
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (chunk: Buffer) => (body += chunk.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      res.on('error', reject)
    })
    ws.once('error', reject)
  })
}

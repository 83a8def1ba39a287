// Small helpers around MQTT.js for round-trip tests.
import { createHash } from 'node:crypto'
import type { MqttClient } from 'mqtt'

export interface Received {
  topic: string
  payload: Buffer
  retain: boolean
  qos: number
}

/** The next message on `topic`, or a rejection after `timeoutMs`. */
export function nextMessage(
  client: MqttClient,
  topic: string,
  timeoutMs = 10_000,
): Promise<Received> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.removeListener('message', onMessage)
      reject(new Error(`no message on ${topic} within ${timeoutMs} ms`))
    }, timeoutMs)
    function onMessage(
      got: string,
      payload: Buffer,
      packet: { retain: boolean; qos: number },
    ): void {
      if (got !== topic) return
      clearTimeout(timer)
      client.removeListener('message', onMessage)
      resolve({ topic: got, payload, retain: packet.retain, qos: packet.qos })
    }
    client.on('message', onMessage)
  })
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

/** Deterministic bytes of any length (not all zeros, so a shifted copy would not match). */
export function pattern(length: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(length)
  let x = seed * 2654435761
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    out[i] = x >>> 24
  }
  return out
}

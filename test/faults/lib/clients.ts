// Small pieces the fault cases share: a cancellable delay for the stage timing a case is about,
// an MQTT round trip through the gateway with MQTT.js, and the MQTT packets the raw clients send.
import mqtt, { type MqttClient } from 'mqtt'
import type { Teardown } from '../../helpers/broker.js'
import { nextMessage } from '../../helpers/mqtt.js'
import { connectPacket, encode } from '../../helpers/wsmqtt.js'
import { within } from './sockets.js'

/** Every pending delay, so a test that fails midway leaves no timer behind. */
export class Delays {
  readonly #timers = new Set<NodeJS.Timeout>()

  constructor(t: Teardown) {
    t.teardown(() => {
      for (const timer of this.#timers) clearTimeout(timer)
      this.#timers.clear()
    })
  }

  /** Stage timing only (when a client acts), never to wait for something to have happened. */
  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#timers.delete(timer)
        resolve()
      }, ms)
      this.#timers.add(timer)
    })
  }
}

export { connectPacket }

export function publishPacket(topic: string, payload: Buffer): Buffer {
  return encode({ cmd: 'publish', topic, payload, qos: 0, dup: false, retain: false })
}

/** Connects MQTT.js through `url`, subscribes, publishes and reads it back; returns the ms. */
export async function roundTrip(
  t: Teardown,
  url: string,
  topic: string,
  timeoutMs = 10_000,
): Promise<{ ms: number; client: MqttClient }> {
  const started = Date.now()
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: timeoutMs })
  t.teardown(() => client.end(true))
  client.on('error', () => undefined)
  await within(
    new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve())
      client.once('error', reject)
      client.once('close', () => reject(new Error('closed before CONNACK')))
    }),
    timeoutMs,
    `MQTT connect through ${url}`,
  )
  await within(client.subscribeAsync(topic, { qos: 1 }), timeoutMs, 'SUBACK')
  const message = nextMessage(client, topic, timeoutMs)
  await client.publishAsync(topic, 'ping', { qos: 1 })
  const got = await message
  if (got.payload.toString() !== 'ping') throw new Error('round trip: wrong payload')
  return { ms: Date.now() - started, client }
}

/** Ends an MQTT.js client politely (DISCONNECT) and resolves once its socket has closed. */
export function endClient(client: MqttClient): Promise<void> {
  return new Promise((resolve) => client.end(false, {}, () => resolve()))
}

// A raw `ws` client that speaks MQTT bytes built with mqtt-packet, so tests control exactly how
// packets are cut into WebSocket frames.
import { once } from 'node:events'
import mqttPacket, { type Packet } from 'mqtt-packet'
import { WebSocket } from 'ws'
import type { Teardown } from './broker.js'

export interface RawMqttClient {
  ws: WebSocket
  packets: Packet[]
  /** Resolves with the next packet (or one already received) matching `cmd`. */
  next: (cmd: Packet['cmd'], timeoutMs?: number) => Promise<Packet>
  closed: Promise<{ code: number; reason: string }>
}

export function encode(packet: Packet): Buffer {
  return mqttPacket.generate(packet)
}

export function connectPacket(
  clientId: string,
  extra: Partial<mqttPacket.IConnectPacket> = {},
): Buffer {
  return encode({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: true,
    clientId,
    keepalive: 0,
    ...extra,
  })
}

export async function openRawClient(
  t: Teardown,
  url: string,
  protocol = 'mqtt',
): Promise<RawMqttClient> {
  const ws = new WebSocket(url, [protocol])
  t.teardown(() => ws.terminate())
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))
  })
  await once(ws, 'open')
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  const packets: Packet[] = []
  const waiters = new Set<() => void>()
  parser.on('packet', (packet: Packet) => {
    packets.push(packet)
    for (const wake of waiters) wake()
  })
  ws.on('message', (data: Buffer) => parser.parse(data))
  let consumed = 0
  return {
    ws,
    packets,
    closed,
    next: (cmd, timeoutMs = 5_000) =>
      new Promise((resolve, reject) => {
        const check = (): boolean => {
          for (let i = consumed; i < packets.length; i++) {
            const packet = packets[i]
            if (packet?.cmd === cmd) {
              consumed = i + 1
              waiters.delete(check)
              clearTimeout(timer)
              resolve(packet)
              return true
            }
          }
          return false
        }
        const timer = setTimeout(() => {
          waiters.delete(check)
          reject(new Error(`no ${cmd} within ${timeoutMs} ms`))
        }, timeoutMs)
        if (!check()) waiters.add(check)
      }),
  }
}

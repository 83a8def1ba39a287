// A raw `ws` client that speaks MQTT bytes built with mqtt-packet, so tests control exactly how
// packets are cut into WebSocket frames.
import { once } from 'node:events'
import mqttPacket, { type Packet } from 'mqtt-packet'
import { WebSocket } from 'ws'
import type { Teardown } from './broker.js'

export interface RawMqttClient {
  ws: WebSocket
  packets: Packet[]
  /** Every binary message received, as it came. */
  received: Buffer[]
  /** Resolves once `check` holds, checked now and after every message. */
  until: (check: () => boolean, timeoutMs?: number) => Promise<void>
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
  options: {
    protocolVersion?: 3 | 4 | 5
    ca?: string
    cert?: string
    key?: string
    /** Bind the client to this loopback address (another client to the gateway). */
    localAddress?: string
  } = {},
): Promise<RawMqttClient> {
  const { protocolVersion = 4, ...tls } = options
  const ws = new WebSocket(url, [protocol], tls)
  t.teardown(() => ws.terminate())
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))
  })
  await once(ws, 'open')
  const parser = mqttPacket.parser({ protocolVersion })
  const packets: Packet[] = []
  const received: Buffer[] = []
  const waiters = new Set<() => void>()
  parser.on('packet', (packet: Packet) => {
    packets.push(packet)
  })
  ws.on('message', (data: Buffer) => {
    received.push(data)
    parser.parse(data)
    for (const wake of waiters) wake()
  })
  let consumed = 0
  return {
    ws,
    packets,
    received,
    until: (check, timeoutMs = 5_000) =>
      new Promise((resolve, reject) => {
        const wake = (): void => {
          if (!check()) return
          waiters.delete(wake)
          clearTimeout(timer)
          resolve()
        }
        const timer = setTimeout(() => {
          waiters.delete(wake)
          reject(new Error(`not within ${timeoutMs} ms`))
        }, timeoutMs)
        waiters.add(wake)
        wake()
      }),
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

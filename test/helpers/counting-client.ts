// An MQTT.js client over a `ws` WebSocket that counts, on the client side, every byte and frame
// it sends and receives: the ground truth the gateway's counters are compared with.
import { connectAsync, type IClientOptions, type MqttClient } from 'mqtt'
import { WebSocket, type RawData } from 'ws'

export interface Counts {
  bytesSent: number
  bytesReceived: number
  framesSent: number
  framesReceived: number
}

export interface CountingClient {
  client: MqttClient
  counts: Counts
  /** The WebSocket close code and reason the client saw, once it closed. */
  closed: Promise<{ code: number; reason: string }>
}

function rawLength(data: RawData): number {
  if (Array.isArray(data)) return data.reduce((sum, part) => sum + part.length, 0)
  return data instanceof ArrayBuffer ? data.byteLength : data.length
}

export async function connectCounting(
  url: string,
  options: IClientOptions = {},
): Promise<CountingClient> {
  const counts: Counts = { bytesSent: 0, bytesReceived: 0, framesSent: 0, framesReceived: 0 }
  let resolveClosed: (value: { code: number; reason: string }) => void = () => undefined
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    resolveClosed = resolve
  })
  const client = await connectAsync(url, {
    reconnectPeriod: 0,
    connectTimeout: 5_000,
    ...options,
    createWebsocket: (wsUrl: string, protocols: string[]) => {
      const ws = new WebSocket(wsUrl, protocols)
      // MQTT.js's stream writes each chunk with ws.send(): one call is one binary frame.
      const send = ws.send.bind(ws) as (data: Buffer, cb?: (err?: Error) => void) => void
      const counted = (data: Buffer, cb?: (err?: Error) => void): void => {
        counts.framesSent++
        counts.bytesSent += data.length
        send(data, cb)
      }
      ws.send = counted as typeof ws.send
      ws.on('message', (data: RawData) => {
        counts.framesReceived++
        counts.bytesReceived += rawLength(data)
      })
      ws.on('close', (code: number, reason: Buffer) => {
        resolveClosed({ code, reason: reason.toString() })
      })
      return ws
    },
  })
  return { client, counts, closed }
}

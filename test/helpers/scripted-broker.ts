// A stand-in broker the test writes for: it answers each connection's first bytes (the CONNECT)
// with `connack` and hands the socket over, so a test can put a broker packet half on the wire
// and decide when the rest follows. Everything a socket receives is recorded.
import net from 'node:net'
import type { Teardown } from './broker.js'

/** An MQTT 5 CONNACK: acknowledge flags 0, reason code 0x00 Success, no properties. */
export const CONNACK_V5 = Buffer.from([0x20, 0x03, 0x00, 0x00, 0x00])

export interface ScriptedSession {
  socket: net.Socket
  received: Buffer[]
}

export interface ScriptedBroker {
  port: number
  /** Resolves with the next session to have been sent its CONNACK (in connection order). */
  nextSession: () => Promise<ScriptedSession>
}

export async function scriptedBroker(t: Teardown, connack = CONNACK_V5): Promise<ScriptedBroker> {
  const ready: ScriptedSession[] = []
  const waiting: ((session: ScriptedSession) => void)[] = []
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    const session: ScriptedSession = { socket, received: [] }
    socket.on('error', () => undefined)
    socket.on('data', (chunk: Buffer) => session.received.push(chunk))
    socket.once('data', () => {
      socket.write(connack)
      const take = waiting.shift()
      if (take) take(session)
      else ready.push(session)
    })
    socket.on('end', () => socket.end())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  return {
    port: (server.address() as net.AddressInfo).port,
    nextSession: () =>
      new Promise((resolve) => {
        const session = ready.shift()
        if (session) resolve(session)
        else waiting.push(resolve)
      }),
  }
}

// The embedded development broker: Aedes in-process, on a real TCP port, so `npm start` alone
// gives a working endpoint that mosquitto_sub can also reach. Imported dynamically so that a
// production process never loads it.
import net from 'node:net'
import type { HostPort } from '../config/formats.js'
import { EmbeddedBrokerError } from '../errors.js'

export interface EmbeddedBroker {
  address: HostPort
  close: () => Promise<void>
}

export async function startEmbeddedBroker(at: HostPort): Promise<EmbeddedBroker> {
  const { Aedes } = await import('aedes')
  const broker = await Aedes.createBroker()
  const server = net.createServer((socket) => broker.handle(socket))
  const sockets = new Set<net.Socket>()
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      broker.close()
      reject(
        new EmbeddedBrokerError(
          `embedded broker cannot listen on ${at.host}:${at.port}: ${err.code} (is another broker running? set upstream.embedded=false to use it)`,
          { cause: err },
        ),
      )
    })
    server.listen(at.port, at.host, resolve)
  })
  const { port } = server.address() as net.AddressInfo
  return {
    address: { host: at.host, port },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => broker.close(() => resolve()))
      }),
  }
}

// Writes a refusal as a real HTTP response on a raw socket, the way ws's abortHandshake() does:
// the client always gets a status line and a reason it can log, never a bare reset.
import { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Refusal } from './handshake.js'

export function writeRefusal(socket: Duplex, refusal: Refusal): void {
  if (socket.destroyed) return
  const body = `${refusal.message}\n`
  const head = [
    `HTTP/1.1 ${refusal.status} ${STATUS_CODES[refusal.status] ?? 'Error'}`,
    'Connection: close',
    'Content-Type: text/plain; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    ...Object.entries(refusal.headers ?? {}).map(([name, value]) => `${name}: ${value}`),
  ]
  socket.once('finish', () => socket.destroy())
  // A client that resets before reading its answer must not become an uncaught error.
  socket.on('error', () => socket.destroy())
  socket.end(`${head.join('\r\n')}\r\n\r\n${body}`)
}

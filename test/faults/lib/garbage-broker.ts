// A "broker" that answers with garbage: a raw TCP server for the upstream side of a gateway.
// A connection may get random bytes at once (before the gateway has finished the client's
// upgrade), or only after the client's first bytes, or after a valid CONNACK; then it sends FIN,
// RST, or holds the connection open until the other side closes. What it sent is kept, so the
// client side can check that the gateway passed it on unchanged.
//
// One connection in eight is hung up on at accept instead (FIN or RST, not a byte sent).
//
// A client names itself in its first bytes (CONNECT with client id `broker-garbage-<k>`): the
// gateway's readiness check opens connections of its own, so the order of accepts says nothing.
// What connection k does is drawn from its own seeded stream; the bytes sent at accept, before
// k is known, from the accept's index (replayable while the readiness checks are).
import net from 'node:net'
import type { Teardown } from '../../helpers/broker.js'
import { prng, type Prng } from './ws-stream.js'

export type GarbageStart = 'at-accept' | 'after-client-bytes' | 'after-connack'
export type GarbageEnd = 'fin' | 'rst' | 'hold'

export const CONNACK_ACCEPTED = Buffer.from([0x20, 0x02, 0x00, 0x00])

export interface GarbageConnection {
  index: number
  start: GarbageStart
  end: GarbageEnd
  /** Everything this connection writes (the CONNACK included), known before it is written. */
  bytes: Buffer
  /** Bytes the gateway sent to this "broker". */
  bytesIn: number
  /** For 'rst' (once the client has seen every byte): resets the connection. */
  reset: () => void
  /** Resolves when the socket has closed. */
  closed: Promise<void>
}

export interface GarbageBroker {
  port: number
  /** Resolves with the connection of client `broker-garbage-<index>`, at once or later. */
  connection: (index: number) => Promise<GarbageConnection>
  /** Connections accepted, the readiness checks' among them. */
  accepted: () => number
  /** Connections hung up on at accept, with FIN or RST (the readiness check's among them). */
  hangups: { fin: number; rst: number }
  /** Sockets still open. */
  open: () => number
}

export const CLIENT_ID_PREFIX = 'broker-garbage-'
const CLIENT_ID = new RegExp(`${CLIENT_ID_PREFIX}(\\d+)`)

export async function startGarbageBroker(t: Teardown, seed: number): Promise<GarbageBroker> {
  const connections = new Map<number, GarbageConnection>()
  const waiting = new Map<number, (c: GarbageConnection) => void>()
  const sockets = new Set<net.Socket>()
  let acceptedCount = 0
  const hangups = { fin: 0, rst: 0 }
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => undefined)
    const closed = new Promise<void>((resolve) =>
      socket.once('close', () => {
        sockets.delete(socket)
        resolve()
      }),
    )
    const acceptRng = prng((seed + Math.imul(++acceptedCount, 0x85ebca6b)) >>> 0)
    // One in eight hangs up at once, before a byte: the client cannot name itself to those.
    if (acceptRng.next() < 1 / 8) {
      if (acceptRng.next() < 0.5) {
        hangups.fin++
        // Read (and drop) what comes, or the gateway's FIN is never seen and nothing closes.
        socket.resume()
        socket.end()
      } else {
        hangups.rst++
        socket.resetAndDestroy()
      }
      return
    }
    const atAccept = acceptRng.next() < 1 / 3 ? noise(acceptRng) : Buffer.alloc(0)
    if (atAccept.length > 0) writeInPieces(socket, atAccept, acceptRng)
    let head = Buffer.alloc(0)
    let connection: GarbageConnection | undefined
    socket.on('data', (chunk: Buffer) => {
      if (connection !== undefined) {
        connection.bytesIn += chunk.length
        return
      }
      head = Buffer.concat([head, chunk])
      const match = CLIENT_ID.exec(head.toString('latin1'))
      if (match === null) return
      const index = Number(match[1])
      const rng = prng((seed + Math.imul(index + 1, 0x9e3779b1)) >>> 0)
      const start: GarbageStart =
        atAccept.length > 0
          ? 'at-accept'
          : rng.next() < 0.5
            ? 'after-client-bytes'
            : 'after-connack'
      const end = (['fin', 'rst', 'hold'] as const)[rng.int(3)] ?? 'fin'
      const later =
        start === 'at-accept'
          ? Buffer.alloc(0)
          : start === 'after-connack'
            ? Buffer.concat([CONNACK_ACCEPTED, noise(rng)])
            : noise(rng)
      connection = {
        index,
        start,
        end,
        bytes: Buffer.concat([atAccept, later]),
        bytesIn: head.length,
        reset: () => socket.resetAndDestroy(),
        closed,
      }
      connections.set(index, connection)
      writeInPieces(socket, later, rng)
      if (end === 'fin') socket.end()
      waiting.get(index)?.(connection)
      waiting.delete(index)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return {
    port: (server.address() as net.AddressInfo).port,
    connection: (index) => {
      const known = connections.get(index)
      if (known !== undefined) return Promise.resolve(known)
      return new Promise((resolve) => waiting.set(index, resolve))
    },
    accepted: () => acceptedCount,
    hangups,
    open: () => sockets.size,
  }
}

/** Up to 512 bytes half the time, else up to 32 KiB. */
function noise(rng: Prng): Buffer {
  return rng.bytes(1 + rng.int(rng.next() < 0.5 ? 512 : 32 * 1024))
}

/** A few writes of random sizes: the gateway reads them as they come. */
function writeInPieces(socket: net.Socket, bytes: Buffer, rng: Prng): void {
  for (let at = 0; at < bytes.length;) {
    const size = 1 + rng.int(Math.max(1, bytes.length >> 1))
    socket.write(bytes.subarray(at, at + size))
    at += size
  }
}

// listen.proxyProtocol: a listener behind an L4 load balancer (HAProxy send-proxy, AWS NLB,
// a Kubernetes LoadBalancer) reads the PROXY header off the raw TCP socket before anything else
// sees it, before TLS too, and the header's source becomes the client address. Only peers in
// listen.proxyProtocolFrom may connect at all: anyone else could write a header naming any
// address, and a balancer's peer without one would be served as the balancer.
//
// The gate takes the server's own 'connection' listeners (http's parser, tls's handshake, ours)
// and calls them once the header is read, with the bytes after it put back on the socket.
import { BlockList, isIP, type Server, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { Cidr } from '../config/formats.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { peerAddress, unmapIPv4 } from './client-address.js'
import {
  parseProxyHeader,
  type ProxyProtocolIn,
  type ProxyRefusalReason,
} from './proxy-protocol-in.js'

/** The client a PROXY header named. */
export interface ProxiedClient {
  address: string
  port: number
}

export interface ProxyGateOptions {
  mode: Exclude<ProxyProtocolIn, 'off'>
  from: readonly Cidr[]
  /** ws.handshakeTimeout: the header must be complete within it. */
  timeout: number
  listener: 'ws' | 'wss' | 'mqtts'
  log: Logger
  metrics: Metrics
}

type ConnectionListener = (this: Server, socket: Socket) => void

export class ProxyGate {
  readonly #options: ProxyGateOptions
  readonly #allowed = new BlockList()
  readonly #clients = new WeakMap<object, ProxiedClient>()
  /** Sockets still being read: nobody else knows them yet, so close() must end them here. */
  readonly #pending = new Set<Socket>()

  constructor(options: ProxyGateOptions) {
    this.#options = options
    for (const cidr of options.from) this.#allowed.addSubnet(cidr.address, cidr.prefix, cidr.family)
  }

  /**
   * Puts the gate in front of every 'connection' listener `server` has now. `resume`: the
   * listeners read the socket as a stream (http) and it must flow again; a TLS server reads
   * what was put back itself.
   */
  install(server: Server, resume: boolean): void {
    const listeners = server.listeners('connection') as ConnectionListener[]
    server.removeAllListeners('connection')
    server.on('connection', (socket: Socket) => {
      this.#read(socket, () => {
        for (const listener of listeners) listener.call(server, socket)
        if (resume) socket.resume()
      })
    })
  }

  /** The client the header named for this socket (or the TLS socket wrapping it). */
  clientOf(socket: Duplex | undefined): ProxiedClient | undefined {
    if (socket === undefined) return undefined
    const own = this.#clients.get(socket)
    if (own !== undefined) return own
    // A TLSSocket keeps the TCP socket it wraps as _parent (Node has no public name for it).
    const parent: unknown = (socket as { _parent?: unknown })._parent
    return typeof parent === 'object' && parent !== null ? this.#clients.get(parent) : undefined
  }

  /** Ends the connections whose header has not been read yet (the listener is closing). */
  destroyPending(): void {
    for (const socket of this.#pending) socket.destroy()
    this.#pending.clear()
  }

  #read(socket: Socket, serve: () => void): void {
    const remote = peerAddress(socket)
    const peer = unmapIPv4(socket.remoteAddress ?? '')
    const family = isIP(peer)
    if (family === 0 || !this.#allowed.check(peer, family === 4 ? 'ipv4' : 'ipv6')) {
      this.#drop(socket, remote, 'unlisted_peer')
      return
    }
    this.#pending.add(socket)
    let buffered: Buffer = Buffer.alloc(0)
    const finish = (): void => {
      clearTimeout(timer)
      socket.removeListener('data', onData)
      socket.removeListener('close', onClose)
      socket.removeListener('error', onError)
      this.#pending.delete(socket)
    }
    const timer = setTimeout(() => {
      finish()
      this.#drop(socket, remote, 'timeout')
    }, this.#options.timeout)
    timer.unref()
    const onClose = (): void => finish()
    const onData = (chunk: Buffer): void => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk])
      const result = parseProxyHeader(buffered, this.#options.mode)
      if (result.state === 'incomplete') return
      finish()
      if (result.state === 'refused') {
        this.#drop(socket, remote, result.reason)
        return
      }
      socket.pause()
      const rest = buffered.subarray(result.length)
      if (rest.length > 0) socket.unshift(rest)
      const { header } = result
      if (header.command === 'proxy') {
        this.#clients.set(socket, { address: unmapIPv4(header.address), port: header.port })
      }
      this.#options.log.debug(
        {
          remote,
          ...(header.command === 'proxy' && { client: header.address }),
          command: header.command,
        },
        'PROXY header read',
      )
      serve()
    }
    // A reset while we wait: the socket closes, and nobody is there to tell.
    const onError = (): void => {
      socket.destroy()
    }
    socket.on('data', onData)
    socket.on('close', onClose)
    socket.on('error', onError)
  }

  #drop(socket: Socket, remote: string, reason: ProxyRefusalReason): void {
    this.#options.log.warn(
      { remote, reason, listener: this.#options.listener },
      'connection dropped: PROXY protocol',
    )
    this.#options.metrics.proxyProtocolRefused(this.#options.listener, reason)
    socket.destroy()
  }
}

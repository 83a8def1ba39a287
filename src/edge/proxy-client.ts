// What the PROXY header to the broker says about a client (upstream.proxyProtocol): built by
// the listeners, where the client's address, its TLS session and the connection id are known,
// before the broker is dialled (in upgrade mode that is before the Connection exists).
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { ConnectionTls } from '../bridge/connection.js'
import type { ProxyClient } from '../upstream/proxy-header.js'

export interface ProxyClientFacts {
  /** The connection id the Connection will have (PP2_TYPE_UNIQUE_ID). */
  id: string
  /** The client's socket (TCP, or TLS over it): its local end is the gateway address reached. */
  socket: Duplex
  /** The resolved client address (a trusted proxy's header, or the TCP peer). */
  clientAddress: string
  /**
   * True when clientAddress came from a trusted proxy's header: no port came with it, so the
   * TCP peer's port stands in (a port is needed: Mosquitto refuses a v1 header with port 0).
   */
  forwarded: boolean
  /** The client's port when a PROXY header in (listen.proxyProtocol) named it. */
  clientPort?: number | undefined
  tls: ConnectionTls | undefined
}

export function describeProxyClient(facts: ProxyClientFacts): ProxyClient {
  const socket = facts.socket as Partial<Socket>
  return {
    source: { address: facts.clientAddress, port: facts.clientPort ?? socket.remotePort ?? 0 },
    destination: { address: socket.localAddress ?? '', port: socket.localPort ?? 0 },
    tls: facts.tls && {
      version: facts.tls.protocol,
      cipher: facts.tls.cipher,
      // clientCert is set only for a certificate tls.ca verified.
      verifiedCn: facts.tls.clientCert?.subject,
    },
    uniqueId: facts.id,
  }
}

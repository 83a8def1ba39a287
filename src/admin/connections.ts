// The JSON shape of one connection in GET /connections: what an operator needs when a user says
// "I can't connect" (FIELD-NOTES idea 10). Read from the Connection's plain fields; nothing
// here runs on the message path.
import type { ClientCertInfo, Connection } from '../bridge/connection.js'
import type { ReadRateView } from '../bridge/rate.js'

export interface ConnectionView {
  id: string
  listener: string
  /** The TCP peer, host:port (a load balancer or proxy when there is one in front). */
  remoteAddress: string
  /** The client's IP: what logs and per-client metrics use. */
  clientAddress: string
  /** The client address a trusted proxy reported (Forwarded, X-Forwarded-For, X-Real-IP), or null. */
  forwardedFor: string | null
  /** The browser's Origin header, or null (non-browser clients send none). */
  origin: string | null
  /** The negotiated WebSocket subprotocol, or null when none was echoed. */
  subprotocol: string | null
  /** TLS details on a wss listener; null on plain ws. The certificate only when one verified. */
  tls: {
    version: string
    cipher: string
    clientCert: ClientCertInfo | null
  } | null
  /** host:port of the broker; null while it is being dialled (upstream.connectOn=connect). */
  broker: string | null
  openedAt: string
  durationSeconds: number
  lastActivity: string
  idleSeconds: number
  bytes: { clientToBroker: number; brokerToClient: number }
  frames: { clientToBroker: number; brokerToClient: number }
  /** Whether each direction is paused by backpressure right now. */
  paused: { clientToBroker: boolean; brokerToClient: boolean }
  /** How many times each direction has been paused. */
  pauses: { clientToBroker: number; brokerToClient: number }
  /**
   * limits.messageRate/byteRate, client to broker: tokens left, paused for the rate since when,
   * how many times held; null when both are off.
   */
  rate: ReadRateView | null
  /**
   * What the client's CONNECT said (mqtt.inspect), never its password; null before the CONNECT
   * has been read, or without mqtt.inspect.
   */
  mqtt: {
    clientId: string
    username: string | null
    protocolLevel: 3 | 4 | 5
    keepalive: number
  } | null
  /**
   * auth.mode=jwt: what the token that let the client in says of it (never the token); null
   * without auth, or before a CONNECT password token has been verified.
   */
  token: {
    source: string
    sub: string | null
    jti: string | null
    kid: string | null
    expiresAt: string | null
  } | null
}

export function describeConnection(c: Connection, now = Date.now()): ConnectionView {
  return {
    id: c.id,
    listener: c.listener,
    remoteAddress: c.remoteAddress,
    clientAddress: c.clientAddress,
    forwardedFor: c.forwarded ? c.clientAddress : null,
    origin: c.origin ?? null,
    subprotocol: c.protocol === false ? null : c.protocol,
    tls: c.tls
      ? { version: c.tls.protocol, cipher: c.tls.cipher, clientCert: c.tls.clientCert ?? null }
      : null,
    broker: c.broker ?? null,
    openedAt: new Date(c.openedAt).toISOString(),
    durationSeconds: (now - c.openedAt) / 1000,
    lastActivity: new Date(c.lastActivity).toISOString(),
    idleSeconds: (now - c.lastActivity) / 1000,
    bytes: { clientToBroker: c.bytesToBroker, brokerToClient: c.bytesToClient },
    frames: { clientToBroker: c.framesToBroker, brokerToClient: c.framesToClient },
    paused: { clientToBroker: c.pausedToBroker, brokerToClient: c.pausedToClient },
    pauses: { clientToBroker: c.pausesToBroker, brokerToClient: c.pausesToClient },
    rate: c.rate,
    mqtt: c.mqtt ? { ...c.mqtt, username: c.mqtt.username ?? null } : null,
    token: c.token
      ? {
          source: c.token.source,
          sub: c.token.subject ?? null,
          jti: c.token.id ?? null,
          kid: c.token.keyId ?? null,
          expiresAt:
            c.token.expiresAt === undefined ? null : new Date(c.token.expiresAt).toISOString(),
        }
      : null,
  }
}

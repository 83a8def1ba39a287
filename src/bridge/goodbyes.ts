// How the gateway ends a connection for a reason of its own, said twice: the WebSocket close
// (close-codes.ts; on mqtts the TLS close) that every client gets, and the MQTT 5 DISCONNECT
// that goes first to a client speaking MQTT 5 (Connection.goodbye decides when it can). The
// packets are encoded once here, not per connection.
import { DisconnectReasonCode, encodeDisconnect } from '../mqtt/disconnect.js'
import { CloseCode, CloseReason, type CloseCodeValue } from './close-codes.js'

export interface Goodbye {
  /** The WebSocket close code; the log line and closes_total name it on mqtts too. */
  readonly code: CloseCodeValue
  readonly reason: string
  /** The whole DISCONNECT packet for an MQTT 5 client. */
  readonly disconnect: Buffer
}

export const Goodbyes = {
  /** mqtt.maxPacketSize: 0x95 Packet too large, then 1009. */
  packetTooLarge: {
    code: CloseCode.MESSAGE_TOO_BIG,
    reason: CloseReason.packetTooLarge,
    disconnect: encodeDisconnect(DisconnectReasonCode.PACKET_TOO_LARGE),
  },
  /** tls.closeRevoked, the CRL revokes the certificate: 0x87 Not authorized, then 1008. */
  certificateRevoked: {
    code: CloseCode.POLICY_VIOLATION,
    reason: CloseReason.certificateRevoked,
    disconnect: encodeDisconnect(DisconnectReasonCode.NOT_AUTHORIZED, {
      reasonString: 'certificate revoked',
    }),
  },
  /** tls.closeRevoked, the certificate is past its notAfter: 0x87 Not authorized, then 1008. */
  certificateExpired: {
    code: CloseCode.POLICY_VIOLATION,
    reason: CloseReason.certificateExpired,
    disconnect: encodeDisconnect(DisconnectReasonCode.NOT_AUTHORIZED, {
      reasonString: 'certificate expired',
    }),
  },
  /** auth.mode=jwt, the session's token is past its exp: 0x87 Not authorized, then 1008. */
  tokenExpired: {
    code: CloseCode.POLICY_VIOLATION,
    reason: CloseReason.tokenExpired,
    disconnect: encodeDisconnect(DisconnectReasonCode.NOT_AUTHORIZED, {
      reasonString: 'token expired',
    }),
  },
  /**
   * Shutdown, then 1001: 0x8B Server shutting down, or with shutdown.serverReference set, 0x9C
   * Use another server naming it (MQTT 5, 4.11: the client may reconnect there).
   */
  shuttingDown(serverReference: string): Goodbye {
    return {
      code: CloseCode.GOING_AWAY,
      reason: CloseReason.shuttingDown,
      disconnect:
        serverReference === ''
          ? encodeDisconnect(DisconnectReasonCode.SERVER_SHUTTING_DOWN)
          : encodeDisconnect(DisconnectReasonCode.USE_ANOTHER_SERVER, { serverReference }),
    }
  },
} as const satisfies Record<string, Goodbye | ((serverReference: string) => Goodbye)>

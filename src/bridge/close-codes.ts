// Every WebSocket close code Drawbridge sends or logs, with the reason text that goes with it
// (RFC 6455 section 7.4.1). The README's "Close codes" table lists each; a test keeps them in
// step, and Connection.close() takes only these values, so no other code can be sent.

export const CloseCode = {
  /** The broker ended the TCP connection (after an MQTT DISCONNECT or on its own). */
  NORMAL: 1000,
  /** The gateway is shutting down (SIGTERM/SIGINT). */
  GOING_AWAY: 1001,
  /**
   * The client broke the WebSocket protocol (ws's reason names how: bad opcode, unmasked...), or
   * sent a malformed MQTT packet (mqtt.inspect; the framer's message names the rule).
   */
  PROTOCOL_ERROR: 1002,
  /** A text frame arrived: MQTT packets travel in binary frames only [MQTT-6.0.0-1]. */
  UNSUPPORTED_DATA: 1003,
  /** A close frame whose reason is not valid UTF-8 (RFC 6455 7.1.6, 8.1). */
  INVALID_PAYLOAD: 1007,
  /** An operator closed the connection, a policy forbids it, or no CONNECT came in time. */
  POLICY_VIOLATION: 1008,
  /** A message larger than ws.maxPayload arrived, or an MQTT packet over mqtt.maxPacketSize. */
  MESSAGE_TOO_BIG: 1009,
  /** The broker connection failed (reset, error), or the broker sent a malformed MQTT packet. */
  INTERNAL_ERROR: 1011,
  /**
   * upstream.connectOn=connect: no broker accepted the connection dialled after the client's
   * CONNECT; the client was sent a CONNACK "Server unavailable" first.
   */
  TRY_AGAIN_LATER: 1013,
  /**
   * Never sent (RFC 6455 7.4.1 forbids it on the wire): logged and counted when a connection was
   * cut without a close frame (no pong in time, shutdown grace over, the client vanished).
   */
  ABNORMAL: 1006,
} as const

export type CloseCodeValue = (typeof CloseCode)[keyof typeof CloseCode]

export const CloseReason = {
  brokerClosed: 'broker closed the connection',
  /** DELETE /connections/{id} on the admin listener (sent with POLICY_VIOLATION). */
  closedByOperator: 'closed by an operator',
  /** tls.closeRevoked, after a reload whose CRL lists the session's certificate. */
  certificateRevoked: 'client certificate revoked',
  /** tls.closeRevoked, once the session's certificate is past its notAfter. */
  certificateExpired: 'client certificate expired',
  /** auth.mode=jwt: the session's token is past its exp (plus auth.clockTolerance). */
  tokenExpired: 'token expired',
  shuttingDown: 'server shutting down',
  textFrame: 'text frames are not allowed; MQTT needs binary frames',
  /** Logged with 1007; the close frame itself carries no reason. */
  tooBig: 'message larger than the gateway allows',
  upstreamError: (code: string): string => `broker connection failed: ${code}`,
  /**
   * mqtt.inspect: a packet broke the MQTT framing rules (1002 from the client, 1011 from the
   * broker). The framer's message, which names the packet and the rule, never a value.
   */
  /** mqtt.connectTimeout ran out before the client's CONNECT was complete (POLICY_VIOLATION). */
  connectTimeout: 'no MQTT CONNECT within mqtt.connectTimeout',
  /** A client packet over mqtt.maxPacketSize (MESSAGE_TOO_BIG). */
  packetTooLarge: 'MQTT packet larger than mqtt.maxPacketSize',
  /** No broker for the held CONNECT (TRY_AGAIN_LATER), after the CONNACK that says why. */
  tryAgainLater: 'try again later',
  malformed: (message: string): string => fitCloseReason(message),
  /**
   * auth.permissionsClaim: a PUBLISH or SUBSCRIBE outside the token's grants, never forwarded
   * (POLICY_VIOLATION): `publish to "a/b" not permitted`, cut to fit.
   */
  topicDenied: (text: string): string => fitCloseReason(text),
  /** auth.permissionsClaim: the token's claim is not a permissions object (POLICY_VIOLATION). */
  badPermissions: 'token permissions claim is malformed',
} as const

/** RFC 6455 5.5: a control frame's payload is at most 125 bytes, 2 of them the code. */
export const MAX_CLOSE_REASON_BYTES = 123

/** `text` cut to fit a close frame (at a character boundary), with "..." when it was cut. */
export function fitCloseReason(text: string): string {
  if (Buffer.byteLength(text) <= MAX_CLOSE_REASON_BYTES) return text
  let fitted = ''
  let bytes = 3 // the "..."
  for (const char of text) {
    const size = Buffer.byteLength(char)
    if (bytes + size > MAX_CLOSE_REASON_BYTES) break
    fitted += char
    bytes += size
  }
  return `${fitted}...`
}

/** Who ended a connection, for the close log line (and the closes metric later). */
export type Initiator = 'client' | 'broker' | 'gateway'

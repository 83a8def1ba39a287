// auth.mode=jwt at the CONNECT: what the Connection asks of the token it was let in with (or
// the one its CONNECT password carries) before the CONNECT may reach the broker, and what a
// client is answered when it may not. The check itself is the edge's (auth/gate.ts); this
// module only decides from its answer, so the bridge stays free of keys and jose.
import type { TokenSource, VerifiedToken } from '../auth/token.js'
import type { AuthRefusalReason, TokenCheck, TokenFailure } from '../auth/verifier.js'
import { refusalConnack } from '../mqtt/connack.js'
import type { ProtocolLevel } from '../mqtt/packet.js'
import { CloseCode, type CloseCodeValue } from './close-codes.js'

/** What a Connection is given under auth.mode=jwt (the edge's EdgeAuth is one). */
export interface ConnectionAuth {
  readonly auth: { readonly usernameClaim: string; readonly clientIdPrefixClaim: string }
  verifyPassword(password: string): Promise<TokenCheck>
  accepted(token: VerifiedToken): VerifiedToken
  refused(
    failure: Pick<TokenFailure, 'reason' | 'message'>,
    source: TokenSource | 'request',
    token?: VerifiedToken,
  ): void
}

/** The username the broker is to see for `token`, or undefined to leave the CONNECT's. */
export function claimedUsername(auth: ConnectionAuth, token: VerifiedToken): string | undefined {
  const name = auth.auth.usernameClaim
  if (name === '' || token.source === 'certificate') return undefined
  const value = token.claims[name]
  return typeof value === 'string' ? value : undefined
}

/** auth.clientIdPrefixClaim: the refusal for a client id outside the token's prefix. */
export function clientIdRefusal(
  auth: ConnectionAuth,
  token: VerifiedToken,
  clientId: string,
): Pick<TokenFailure, 'reason' | 'message'> | undefined {
  const name = auth.auth.clientIdPrefixClaim
  if (name === '' || token.source === 'certificate') return undefined
  const prefix = token.claims[name]
  if (typeof prefix === 'string' && clientId.startsWith(prefix)) return undefined
  return { reason: 'client_id', message: `client id must start with the token's ${name}` }
}

// MQTT 3.1.1 3.2.2.3 return codes, MQTT 5 3.2.2.2 reason codes.
const IDENTIFIER_REJECTED = 0x02
const SERVER_UNAVAILABLE = 0x03
const NOT_AUTHORIZED_311 = 0x05
const CLIENT_IDENTIFIER_NOT_VALID = 0x85
const BAD_USERNAME_OR_PASSWORD = 0x86
const NOT_AUTHORIZED = 0x87
const SERVER_UNAVAILABLE_5 = 0x88

/**
 * The MQTT 5 reason code for each refusal: 0x86 Bad User Name or Password when the password
 * is no token the gateway can check (none, not a JWT, too large, wrong algorithm or key, a
 * bad signature); 0x87 Not authorized for a sound token that does not let this client in
 * (expired, not yet valid, another issuer or audience, a claim missing); 0x85 for a client id
 * outside the token's prefix; 0x88 Server unavailable when no key can be had at all.
 */
const REASON_CODE_5: Record<AuthRefusalReason, number> = {
  missing: BAD_USERNAME_OR_PASSWORD,
  too_large: BAD_USERNAME_OR_PASSWORD,
  malformed: BAD_USERNAME_OR_PASSWORD,
  algorithm: BAD_USERNAME_OR_PASSWORD,
  signature: BAD_USERNAME_OR_PASSWORD,
  unknown_key: BAD_USERNAME_OR_PASSWORD,
  keys_unavailable: SERVER_UNAVAILABLE_5,
  expired: NOT_AUTHORIZED,
  not_yet_valid: NOT_AUTHORIZED,
  issuer: NOT_AUTHORIZED,
  audience: NOT_AUTHORIZED,
  claim: NOT_AUTHORIZED,
  client_id: CLIENT_IDENTIFIER_NOT_VALID,
}

/** The return code below MQTT 5: 5 Not authorized, 2 for the client id, 3 without keys. */
function returnCode(reason: AuthRefusalReason): number {
  if (reason === 'client_id') return IDENTIFIER_REJECTED
  if (reason === 'keys_unavailable') return SERVER_UNAVAILABLE
  return NOT_AUTHORIZED_311
}

export interface ConnectRefusal {
  connack: Buffer
  /** The code in the CONNACK (for the log line). */
  connackCode: number
  /** 1008, or 1013 when the keys are unavailable (trying again later may work). */
  close: CloseCodeValue
}

export function connectRefusal(
  level: ProtocolLevel,
  failure: Pick<TokenFailure, 'reason' | 'message'>,
): ConnectRefusal {
  const code = level === 5 ? REASON_CODE_5[failure.reason] : returnCode(failure.reason)
  return {
    connack: refusalConnack(
      level,
      returnCode(failure.reason),
      REASON_CODE_5[failure.reason],
      failure.message,
    ),
    connackCode: code,
    close:
      failure.reason === 'keys_unavailable'
        ? CloseCode.TRY_AGAIN_LATER
        : CloseCode.POLICY_VIOLATION,
  }
}

// What a connection knows of the token it was let in with (auth.mode=jwt). The checks that
// produce one live beside this file; the bridge only reads it: its claims name the user (the
// CONNECT username), bound the client id, grant topics, and its expiry ends the session.
//
// The token itself is never kept here: it must not reach a log line or /connections.

/** Where the token was found (auth.tokenFrom), or the client certificate that stood in for one. */
export type TokenSource = 'header' | 'subprotocol' | 'query' | 'cookie' | 'password' | 'certificate'

/** A token that passed every check. */
export interface VerifiedToken {
  readonly source: TokenSource
  /** The payload, as jose verified it. */
  readonly claims: Readonly<Record<string, unknown>>
  /** `sub`, `jti` and the header's `kid`, when present: what log lines name. */
  readonly subject: string | undefined
  readonly id: string | undefined
  readonly keyId: string | undefined
  /** `exp` in milliseconds since the epoch; undefined only for a certificate (source certificate). */
  readonly expiresAt: number | undefined
}

// auth.mode=jwt at the listeners: what an upgrade (or an mqtts client) is let in with, or the
// refusal it gets. A token found in the request is checked here, before the 101; with none,
// and password among auth.tokenFrom, the client is let in to send its CONNECT, whose password
// the Connection has checked (ConnectionAuth) before a byte of it reaches the broker.
//
// Every refusal is counted by reason (drawbridge_auth_refusals_total) and logged with what can
// be told of the token without showing it: its sub, jti and kid, never the token.
import type { IncomingMessage } from 'node:http'
import type { Config } from '../config/schema.js'
import type { ConnectionTls } from '../bridge/connection.js'
import { Refusals, type Refusal } from '../edge/refusals.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { findToken, tooLargeStatus } from './extract.js'
import { KeyStore } from './keys.js'
import type { TokenSource, VerifiedToken } from './token.js'
import { TokenVerifier, type TokenCheck, type TokenFailure } from './verifier.js'

/** How a client is let in: with its token, or to show one in its CONNECT password. */
export type AuthAdmission = { token: VerifiedToken } | { password: true }

export type AuthDecision = AuthAdmission | { refusal: Refusal }

export interface EdgeAuthOptions {
  auth: Config['auth']
  log: Logger
  metrics: Metrics
}

export class EdgeAuth {
  readonly auth: Config['auth']
  readonly keys: KeyStore
  readonly verifier: TokenVerifier
  readonly #log: Logger
  readonly #metrics: Metrics

  constructor({ auth, log, metrics }: EdgeAuthOptions) {
    this.auth = auth
    this.#log = log.child({ component: 'auth' })
    this.#metrics = metrics
    this.keys = new KeyStore({ auth, log })
    this.verifier = new TokenVerifier(auth, this.keys)
  }

  get passwordAllowed(): boolean {
    return this.auth.tokenFrom.includes('password')
  }

  /**
   * A WebSocket upgrade: its token checked, or let in for the CONNECT password, or refused.
   * `connect` false (a routed upgrade: its backend's WebSocket carries no MQTT CONNECT) leaves
   * only the sources read before the 101, and no token there is a 401.
   */
  async upgrade(
    req: IncomingMessage,
    tls: ConnectionTls | undefined,
    { connect = true }: { connect?: boolean } = {},
  ): Promise<AuthDecision> {
    const certified = this.#certificate(tls)
    if (certified !== undefined) return certified
    const found = findToken(req, this.auth.tokenFrom, this.auth.cookie)
    if (found === undefined) {
      if (connect && this.passwordAllowed) return { password: true }
      const message = connect ? 'no token' : 'no token before the 101 (a routed upgrade)'
      this.refused({ ok: false, reason: 'missing', message }, 'request')
      return { refusal: Refusals.tokenMissing() }
    }
    const check = await this.verifier.verify(found.token, found.source)
    if (check.ok) return { token: this.accepted(check.token) }
    this.refused(check, found.source)
    if (check.reason === 'too_large') {
      return {
        refusal: Refusals.tokenTooLarge(tooLargeStatus(found.source), this.auth.maxTokenSize),
      }
    }
    if (check.reason === 'keys_unavailable') {
      return { refusal: Refusals.tokenKeysUnavailable(check.message) }
    }
    return { refusal: Refusals.tokenInvalid(check.message) }
  }

  /** An mqtts client: only a certificate or the CONNECT password can carry who it is. */
  stream(tls: ConnectionTls | undefined): AuthDecision {
    const certified = this.#certificate(tls)
    if (certified !== undefined) return certified
    if (this.passwordAllowed) return { password: true }
    this.refused(
      {
        ok: false,
        reason: 'missing',
        message: 'no certificate, and password is not in auth.tokenFrom',
      },
      'request',
    )
    return { refusal: Refusals.tokenMissing() }
  }

  /** Logs a token let in (its identity, never the token). */
  accepted(token: VerifiedToken): VerifiedToken {
    this.#log.info(
      {
        source: token.source,
        sub: token.subject,
        jti: token.id,
        kid: token.keyId,
        ...(token.expiresAt !== undefined && { exp: new Date(token.expiresAt).toISOString() }),
      },
      'token accepted',
    )
    return token
  }

  /** Counts and logs a refusal; `claims` when the token itself was sound (client_id). */
  refused(
    failure: TokenFailure | Pick<TokenFailure, 'reason' | 'message'>,
    source: TokenSource | 'request',
    token?: VerifiedToken,
  ): void {
    this.#metrics.authRefused(failure.reason)
    this.#log.warn(
      {
        source,
        reason: failure.reason,
        detail: failure.message,
        ...('kid' in failure && failure.kid !== undefined && { kid: failure.kid }),
        ...(token && { sub: token.subject, jti: token.id, kid: token.keyId }),
      },
      'token refused',
    )
  }

  /** Checks a token read from a CONNECT password. */
  verifyPassword(password: string): Promise<TokenCheck> {
    return this.verifier.verify(password, 'password')
  }

  #certificate(tls: ConnectionTls | undefined): { token: VerifiedToken } | undefined {
    const cert = tls?.clientCert
    if (!this.auth.allowClientCert || cert === undefined) return undefined
    return {
      token: this.accepted({
        source: 'certificate',
        claims: { sub: cert.subject },
        subject: cert.subject,
        id: undefined,
        keyId: undefined,
        expiresAt: undefined,
      }),
    }
  }
}

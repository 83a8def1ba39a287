// Checks one token (auth.mode=jwt) with jose: signature against the KeyStore's keys, alg
// against auth.algorithms, iss, aud, exp (required), nbf, and the claims the bridge will use.
// The answer names why a token failed in a few stable words (the `reason` label of
// drawbridge_auth_refusals_total) and a sentence for the client; never the token itself.
import { decodeProtectedHeader, errors, jwtVerify, type JWTVerifyOptions } from 'jose'
import type { Config } from '../config/schema.js'
import { NoKeyError, type KeyStore } from './keys.js'
import type { TokenSource, VerifiedToken } from './token.js'

/** Why a token, or its absence, let no one in: the label of drawbridge_auth_refusals_total. */
export type AuthRefusalReason =
  | 'missing'
  | 'too_large'
  | 'malformed'
  | 'algorithm'
  | 'signature'
  | 'unknown_key'
  | 'keys_unavailable'
  | 'expired'
  | 'not_yet_valid'
  | 'issuer'
  | 'audience'
  | 'claim'
  | 'client_id'

// Every reason, so each has a series from the first scrape (a Record fails the build when a
// reason is added above and not here).
export const AUTH_REFUSAL_REASONS = Object.keys({
  missing: true,
  too_large: true,
  malformed: true,
  algorithm: true,
  signature: true,
  unknown_key: true,
  keys_unavailable: true,
  expired: true,
  not_yet_valid: true,
  issuer: true,
  audience: true,
  claim: true,
  client_id: true,
} satisfies Record<AuthRefusalReason, true>) as AuthRefusalReason[]

export interface TokenFailure {
  ok: false
  reason: AuthRefusalReason
  /** For the client (error_description, Reason String) and the log line. */
  message: string
  /** What could be read of the token without trusting it, for the log line. */
  kid?: string | undefined
}

export type TokenCheck = { ok: true; token: VerifiedToken } | TokenFailure

export class TokenVerifier {
  readonly #auth: Config['auth']
  readonly #keys: KeyStore
  readonly #options: JWTVerifyOptions

  constructor(auth: Config['auth'], keys: KeyStore) {
    this.#auth = auth
    this.#keys = keys
    this.#options = {
      algorithms: auth.algorithms.map((alg) => alg.trim()),
      ...(auth.issuer !== '' && { issuer: auth.issuer }),
      ...(auth.audience !== '' && { audience: auth.audience }),
      clockTolerance: Math.round(auth.clockTolerance / 1000),
      requiredClaims: ['exp'],
    }
  }

  get maxTokenSize(): number {
    return this.#auth.maxTokenSize
  }

  async verify(token: string, source: TokenSource): Promise<TokenCheck> {
    if (Buffer.byteLength(token) > this.#auth.maxTokenSize) {
      return fail('too_large', `token over ${this.#auth.maxTokenSize} bytes (auth.maxTokenSize)`)
    }
    let kid: string | undefined
    try {
      kid = decodeProtectedHeader(token).kid
    } catch {
      return fail('malformed', 'not a JWT (three base64url parts, a JSON header)')
    }
    try {
      const { payload, protectedHeader } = await this.#jwtVerify(token)
      const claims = payload as Record<string, unknown>
      for (const name of [this.#auth.usernameClaim, this.#auth.clientIdPrefixClaim]) {
        if (name !== '' && (typeof claims[name] !== 'string' || claims[name] === '')) {
          return { ...fail('claim', `token has no ${name} claim (a non-empty string)`), kid }
        }
      }
      return {
        ok: true,
        token: {
          source,
          claims,
          subject: typeof payload.sub === 'string' ? payload.sub : undefined,
          id: typeof payload.jti === 'string' ? payload.jti : undefined,
          keyId: protectedHeader.kid,
          expiresAt: (payload.exp as number) * 1000, // requiredClaims: jose checked it is there
        },
      }
    } catch (err) {
      return { ...failureOf(err), kid }
    }
  }

  // Several keys without a kid fit the token's alg: each is tried (jose hands them over in the
  // error it throws).
  async #jwtVerify(token: string): ReturnType<typeof jwtVerify> {
    try {
      return await jwtVerify(token, this.#keys.keyFor, this.#options)
    } catch (err) {
      if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err
      let last: unknown = err
      for await (const key of err) {
        try {
          return await jwtVerify(token, key, this.#options)
        } catch (next) {
          last = next
        }
      }
      throw last
    }
  }

  /** auth.clockTolerance in ms: a session ends at exp plus this. */
  get clockTolerance(): number {
    return this.#auth.clockTolerance
  }
}

function fail(reason: AuthRefusalReason, message: string): TokenFailure {
  return { ok: false, reason, message }
}

/** jose's error classes, in the gateway's words. Anything else is a fault of ours: rethrown. */
function failureOf(err: unknown): TokenFailure {
  if (err instanceof NoKeyError) return fail(err.reason, err.message)
  if (err instanceof errors.JWTExpired) return fail('expired', 'token expired')
  if (err instanceof errors.JWTClaimValidationFailed) {
    switch (err.claim) {
      case 'nbf':
        return fail('not_yet_valid', 'token not yet valid (nbf)')
      case 'iss':
        return fail('issuer', 'token issuer (iss) not accepted')
      case 'aud':
        return fail('audience', 'token audience (aud) not accepted')
      case 'exp':
        return fail('claim', 'token has no exp claim')
      default:
        return fail('claim', `token claim ${err.claim} not accepted: ${err.reason}`)
    }
  }
  if (err instanceof errors.JOSEAlgNotAllowed || err instanceof errors.JOSENotSupported) {
    return fail('algorithm', 'token signature algorithm not allowed (auth.algorithms)')
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) {
    return fail('signature', 'token signature invalid')
  }
  if (err instanceof errors.JWKSMultipleMatchingKeys) {
    return fail('signature', 'token signature invalid')
  }
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid) {
    return fail('malformed', `token malformed: ${err.message}`)
  }
  if (err instanceof errors.JOSEError) return fail('malformed', `token refused: ${err.message}`)
  throw err
}

// The optional admin bearer token (RFC 6750 section 2.1: "Authorization: Bearer <token>").
import { createHash, timingSafeEqual } from 'node:crypto'

const BEARER = /^Bearer[ ]+(\S+)\s*$/i

/**
 * True when `authorization` carries exactly `token`. Both sides are hashed first so the compare
 * runs on equal-length digests: timingSafeEqual needs equal lengths, and comparing lengths
 * directly would tell an attacker the token's length.
 */
export function bearerMatches(authorization: string | undefined, token: string): boolean {
  const given = BEARER.exec(authorization ?? '')?.[1]
  if (given === undefined) return false
  return timingSafeEqual(digest(given), digest(token))
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest()
}

// Browser origins: the one grammar for a ws.allowedOrigins entry and for the Origin header of a
// request. Config validation, the compiled rules and the request-time check all go through it,
// so an entry the config accepts is always one the check can compare against (two grammars let
// `https://*.[::1]` pass validation, then vanish from the rules and leave the list empty, which
// allows every origin).
//
// An origin is serialised as RFC 6454 section 6.2 says browsers send it: lower case,
// scheme://host, and :port only when it is not the scheme's default.
import { isIP } from 'node:net'

export interface OriginParts {
  scheme: string
  /** A DNS name or IPv4 address, or an IPv6 address in brackets. */
  host: string
  /** Absent when the origin uses its scheme's default port (browsers leave it out). */
  port: string | undefined
}

/**
 * An opaque origin ("null": sandboxed frames, file: pages, some redirects), or a tuple. Patterns
 * and requests share this shape; only a pattern may carry `*.`.
 */
export type Origin = 'null' | OriginParts

/** One ws.allowedOrigins entry: `*.` becomes `anySubdomain`, the host keeps its leading dot. */
export type OriginRule = 'null' | (OriginParts & { anySubdomain: boolean })

// A pattern host may start with `*.`; an IPv6 literal takes no wildcard, having no subdomains.
const ORIGIN =
  /^(https?):\/\/((?:\*\.)?[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[([0-9a-f:.]+)\])(?::(\d{1,5}))?$/

interface Split {
  parts: OriginParts
  wildcard: boolean
}

function split(text: string): 'null' | Split | undefined {
  const lower = text.trim().toLowerCase()
  if (lower === 'null') return 'null'
  const match = ORIGIN.exec(lower)
  if (!match) return undefined
  const [, scheme = '', host = '', ipv6, port] = match
  if (ipv6 !== undefined && isIP(ipv6) !== 6) return undefined
  if (port !== undefined && Number(port) > 65535) return undefined
  const wildcard = host.startsWith('*.')
  return { parts: { scheme, host: wildcard ? host.slice(1) : host, port }, wildcard }
}

/** The Origin header of a request, or undefined when it is not an origin. */
export function parseOrigin(header: string): Origin | undefined {
  const origin = split(header)
  if (origin === undefined || origin === 'null') return origin
  // A wildcard is pattern syntax; no browser sends one.
  return origin.wildcard ? undefined : origin.parts
}

/** One ws.allowedOrigins entry as a rule. Throws when it is not an origin pattern. */
export function parseOriginPattern(pattern: string): OriginRule {
  const origin = split(pattern)
  if (origin === undefined) {
    throw new Error(
      `"${pattern}" is not an origin: use scheme://host[:port] with no path, like https://app.example.com`,
    )
  }
  if (origin === 'null') return 'null'
  return { ...origin.parts, anySubdomain: origin.wildcard }
}

/**
 * The rules for ws.allowedOrigins. Throws on the first entry that does not parse: dropping it
 * could leave the list empty, and an empty list allows any origin.
 */
export function compileOrigins(patterns: readonly string[]): OriginRule[] {
  return patterns.map(parseOriginPattern)
}

// Where a WebSocket upgrade carries its token (auth.tokenFrom), looked at in the configured
// order: the first source that has one is the token, the others are not read. The CONNECT
// password is no part of the request: it is read by the Connection, once the CONNECT arrives.
import type { IncomingMessage } from 'node:http'
import type { TokenFromEntry } from '../config/schema.js'
import { parseSubprotocols } from '../edge/handshake.js'

/** The Sec-WebSocket-Protocol entry that carries a token: bearer.<token>. */
export const SUBPROTOCOL_PREFIX = 'bearer.'
/** The query parameter that carries a token (RFC 6750 2.3). */
export const QUERY_PARAMETER = 'access_token'

export interface FoundToken {
  source: Exclude<TokenFromEntry, 'password'>
  token: string
}

const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i

/** The first token the request carries, in `order`; undefined when there is none. */
export function findToken(
  req: IncomingMessage,
  order: readonly TokenFromEntry[],
  cookie: string,
): FoundToken | undefined {
  for (const source of order) {
    if (source === 'password') continue
    const token = READERS[source](req, cookie)
    if (token !== undefined && token !== '') return { source, token }
  }
  return undefined
}

const READERS: Record<
  FoundToken['source'],
  (req: IncomingMessage, cookie: string) => string | undefined
> = {
  // Another scheme (Basic for a proxy on the way) is not a token for us: not read.
  header: (req) => BEARER.exec(req.headers.authorization ?? '')?.[1],
  subprotocol: (req) =>
    parseSubprotocols(req.headers['sec-websocket-protocol'])
      ?.find((entry) => entry.startsWith(SUBPROTOCOL_PREFIX))
      ?.slice(SUBPROTOCOL_PREFIX.length),
  query: (req) => {
    const url = req.url ?? ''
    const at = url.indexOf('?')
    if (at === -1) return undefined
    return new URLSearchParams(url.slice(at + 1)).get(QUERY_PARAMETER) ?? undefined
  },
  cookie: (req, name) => cookieValue(req.headers.cookie, name),
}

/** The value of the cookie `name` in a Cookie header (RFC 6265 5.4), the first if repeated. */
function cookieValue(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=')
    if (eq === -1 || pair.slice(0, eq).trim() !== name) continue
    let value = pair.slice(eq + 1).trim()
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"'))
      value = value.slice(1, -1)
    return value
  }
  return undefined
}

/**
 * Takes the bearer.<token> entries out of the request's Sec-WebSocket-Protocol, in place: a
 * routed upgrade goes on to a backend, which must not see the token the gateway checked (nor
 * answer with it as its subprotocol). The header goes when nothing else is left in it.
 */
export function removeSubprotocolToken(req: IncomingMessage): void {
  const offered = parseSubprotocols(req.headers['sec-websocket-protocol'])
  if (offered === null || !offered.some((entry) => entry.startsWith(SUBPROTOCOL_PREFIX))) return
  const kept = offered.filter((entry) => !entry.startsWith(SUBPROTOCOL_PREFIX))
  if (kept.length === 0) delete req.headers['sec-websocket-protocol']
  else req.headers['sec-websocket-protocol'] = kept.join(', ')
}

/** What an oversized token in `source` is answered with. */
export function tooLargeStatus(source: FoundToken['source']): 401 | 414 | 431 {
  if (source === 'query') return 414
  if (source === 'subprotocol') return 401
  return 431
}

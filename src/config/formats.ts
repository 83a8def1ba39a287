// Custom convict formats. convict runs `coerce` only on strings (env vars, argv); values from a
// JSON file arrive already typed, so every `validate` accepts both the parsed and the raw form.
import { isIP } from 'node:net'
import convict from 'convict'
import { parseOriginPattern } from './origin.js'

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
}

/** `500ms`, `30s`, `2m`, `1h`, or a bare number of milliseconds. */
export function parseDuration(value: unknown): number {
  return parseWithUnits(value, DURATION_UNITS, 'a duration such as 500ms, 30s, 2m')
}

/** `64KiB`, `16MiB`, `1MB`, or a bare number of bytes. */
export function parseSize(value: unknown): number {
  return parseWithUnits(value, SIZE_UNITS, 'a size such as 65536, 64KiB, 16MiB')
}

function parseWithUnits(value: unknown, units: Record<string, number>, expected: string): number {
  if (typeof value === 'number') {
    if (Number.isInteger(value) && value >= 0) return value
    throw new Error(`must be ${expected} (a whole number >= 0)`)
  }
  if (typeof value !== 'string') throw new Error(`must be ${expected}`)
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value)
  const unit = (match?.[2] ?? '').toLowerCase()
  // A bare number is in the base unit (milliseconds, bytes).
  const multiplier = unit === '' ? 1 : units[unit]
  if (!match || multiplier === undefined) throw new Error(`must be ${expected}`)
  return Math.round(Number(match[1]) * multiplier)
}

export interface HostPort {
  host: string
  port: number
}

/** `host:port`, `1.2.3.4:1883`, `[::1]:1883`. */
export function parseHostPort(value: string): HostPort {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(value.trim())
  const port = Number(match?.[3])
  // Port 0 is allowed so the embedded broker can take any free port (load.ts refuses it for a
  // real upstream).
  if (!match || port > 65535) {
    throw new Error(`"${value}" is not host:port (IPv6 as [::1]:1883)`)
  }
  return { host: match[1] ?? match[2] ?? '', port }
}

export function splitList(value: string): string[] {
  return value
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item !== '')
}

/** An IP address or CIDR block: `10.0.0.0/8`, `192.0.2.7`, `fd00::/8`. */
export interface Cidr {
  address: string
  prefix: number
  family: 'ipv4' | 'ipv6'
}

export function parseCidr(value: string): Cidr {
  const [address = '', prefixText, extra] = value.trim().split('/')
  const version = isIP(address)
  if (version === 0 || extra !== undefined) {
    throw new Error(`"${value}" is not an IP address or CIDR block (like 10.0.0.0/8 or fd00::/8)`)
  }
  const max = version === 4 ? 32 : 128
  const prefix = prefixText === undefined ? max : Number(prefixText)
  if (!/^\d+$/.test(prefixText ?? String(max)) || prefix > max) {
    throw new Error(`"${value}": the prefix length must be 0 to ${max}`)
  }
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' }
}

function asList(value: unknown): unknown[] {
  if (typeof value === 'string') return splitList(value)
  if (Array.isArray(value)) return value as unknown[]
  throw new Error('must be a list (a JSON array, or a comma-separated string)')
}

// A coerce that throws escapes convict without the key's name; returning the raw string lets
// `validate` fail instead, with the key named.
function orRaw<T>(parse: (value: string) => T, value: string): T | string {
  try {
    return parse(value)
  } catch {
    return value
  }
}

const TRUE_WORDS = new Set(['true', '1', 'yes', 'on'])
const FALSE_WORDS = new Set(['false', '0', 'no', 'off'])

/** A list format: a JSON array, or a comma-separated string from env; `check` throws on a bad entry. */
function listOf(what: string, check: (item: string) => unknown) {
  return {
    validate(value: unknown) {
      for (const item of asList(value)) {
        if (typeof item !== 'string') throw new Error(`each entry must be ${what}`)
        check(item)
      }
    },
    coerce: (value: string) => splitList(value),
  }
}

/** One entry of http.routes as written in the file or env (timeout still a duration). */
export interface RouteSpec {
  prefix: string
  target: string
  ws?: boolean
  stripPrefix?: boolean
  timeout?: string | number
}

/** One entry of http.routes as the edge uses it. */
export interface Route {
  /** Starts and ends with "/"; a request path that starts with it goes to `target`. */
  readonly prefix: string
  /** The backend's base URL, http: or https:. */
  readonly target: string
  /** Whether the backend's own WebSocket upgrades are proxied too. */
  readonly ws: boolean
  /** Whether the prefix (less its final "/") is removed from the path the backend sees. */
  readonly stripPrefix: boolean
  /** Milliseconds the backend may stay silent before the client is answered 504. */
  readonly timeout: number
}

const ROUTE_FIELDS = new Set(['prefix', 'target', 'ws', 'stripPrefix', 'timeout'])
const ROUTE_DEFAULT_TIMEOUT = '30s'

/** Checks and types the http.routes list; throws naming the entry and field at fault. */
export function parseRoutes(value: unknown): Route[] {
  const list = typeof value === 'string' ? parseJsonList(value) : value
  if (!Array.isArray(list)) throw new Error('must be a JSON array of route objects')
  const seen = new Set<string>()
  return (list as unknown[]).map((entry, index) => {
    const where = `route ${index}`
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
      throw new Error(
        `${where} must be an object like {"prefix": "/app/", "target": "http://web:8080"}`,
      )
    }
    const spec = entry as Record<string, unknown>
    const unknown = Object.keys(spec).find((field) => !ROUTE_FIELDS.has(field))
    if (unknown !== undefined) {
      throw new Error(
        `${where}: unknown field "${unknown}" (known: ${[...ROUTE_FIELDS].join(', ')})`,
      )
    }
    const { prefix, target } = spec
    if (typeof prefix !== 'string' || !/^\/(?:[^\s?#]*\/)?$/.test(prefix)) {
      throw new Error(
        `${where}: prefix must be a path that starts and ends with "/" (like "/app/")`,
      )
    }
    if (seen.has(prefix)) throw new Error(`${where}: prefix ${prefix} is listed twice`)
    seen.add(prefix)
    if (typeof target !== 'string' || !isHttpUrl(target)) {
      throw new Error(
        `${where}: target must be an http:// or https:// URL (like "http://web:8080")`,
      )
    }
    for (const flag of ['ws', 'stripPrefix'] as const) {
      if (spec[flag] !== undefined && typeof spec[flag] !== 'boolean') {
        throw new Error(`${where}: ${flag} must be true or false`)
      }
    }
    let timeout: number
    try {
      timeout = parseDuration(spec.timeout ?? ROUTE_DEFAULT_TIMEOUT)
    } catch (err) {
      throw new Error(`${where}: timeout ${(err as Error).message}`, { cause: err })
    }
    if (timeout === 0) throw new Error(`${where}: timeout must be above 0`)
    return {
      prefix,
      target,
      ws: spec.ws === true,
      stripPrefix: spec.stripPrefix === true,
      timeout,
    }
  })
}

function parseJsonList(text: string): unknown {
  try {
    return JSON.parse(text) as unknown
  } catch {
    throw new Error('must be JSON: an array of route objects')
  }
}

function isHttpUrl(text: string): boolean {
  try {
    const url = new URL(text)
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== ''
  } catch {
    return false
  }
}

let registered = false

/** Registers the formats on convict's global table; safe to call more than once. */
export function registerFormats(): void {
  if (registered) return
  registered = true
  convict.addFormats({
    duration: {
      validate: (value: unknown) => void parseDuration(value),
      coerce: (value: string) => orRaw(parseDuration, value),
    },
    size: {
      validate: (value: unknown) => void parseSize(value),
      coerce: (value: string) => orRaw(parseSize, value),
    },
    // Per second; fractions allowed (0.2: one every five seconds).
    rate: {
      validate(value: unknown) {
        if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
          throw new Error('must be a number of events per second, 0 or more (0 = off)')
        }
      },
      coerce: (value: string) => (/^\s*\d+(\.\d+)?\s*$/.test(value) ? Number(value) : value),
    },
    'host-port-list': listOf('a "host:port" string', parseHostPort),
    'string-list': listOf('a non-empty string', (item) => {
      if (item.trim() === '') throw new Error('each entry must be a non-empty string')
    }),
    'cidr-list': listOf('an IP address or CIDR block', parseCidr),
    'origin-list': listOf('an origin', parseOriginPattern),
    // http.routes: a list of objects, so JSON in env rather than a comma-separated string.
    'route-list': {
      validate: (value: unknown) => void parseRoutes(value),
      coerce(value: string) {
        try {
          return JSON.parse(value) as unknown
        } catch {
          return value
        }
      },
    },
    // convict's own Boolean coercion turns any string but "false" into true ("flase" -> true).
    bool: {
      validate(value: unknown) {
        if (typeof value !== 'boolean') throw new Error('must be true or false')
      },
      coerce(value: string) {
        const word = value.trim().toLowerCase()
        if (TRUE_WORDS.has(word)) return true
        if (FALSE_WORDS.has(word)) return false
        return value
      },
    },
    'non-empty-string': {
      validate(value: unknown) {
        if (typeof value !== 'string' || value.trim() === '') throw new Error('must not be empty')
      },
    },
    // A filesystem path, or "" for "not set". Existence is checked where the file is read (TLS
    // material is validated, and may be generated, at start-up and on every reload).
    'file-path': {
      validate(value: unknown) {
        if (typeof value !== 'string' || /[\0\n]/.test(value)) {
          throw new Error('must be a file path (or empty for none)')
        }
      },
    },
    // Free text that may be empty (empty = the library default).
    'optional-string': {
      validate(value: unknown) {
        if (typeof value !== 'string') throw new Error('must be a string')
      },
    },
    'url-path': {
      validate(value: unknown) {
        if (typeof value !== 'string' || !/^\/[^\s?#]*$/.test(value)) {
          throw new Error('must be a URL path starting with "/" (no query string)')
        }
      },
    },
  })
}

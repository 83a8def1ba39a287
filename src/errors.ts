// Errors with stable codes (the README's "Error codes" table lists each one; a test keeps the
// two in step). Messages are sentences an operator can act on.

export class DrawbridgeError extends Error {
  readonly code: string

  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
    this.code = code
  }
}

/** A configuration value is missing or invalid; `key` is the dotted path. Exit code 2. */
export class ConfigError extends DrawbridgeError {
  readonly key: string
  readonly reason: string

  constructor(key: string, reason: string) {
    super('DRAWBRIDGE_ERR_CONFIG', `${key}: ${reason}`)
    this.key = key
    this.reason = reason
  }
}

/** No broker accepted the TCP connection (refused, unreachable, reset). Answered 502. */
export class UpstreamRefusedError extends DrawbridgeError {
  constructor(message: string, options?: ErrorOptions) {
    super('DRAWBRIDGE_ERR_UPSTREAM_REFUSED', message, options)
  }
}

/** A broker did not accept the TCP connection within upstream.connectTimeout. Answered 504. */
export class UpstreamTimeoutError extends DrawbridgeError {
  constructor(message: string) {
    super('DRAWBRIDGE_ERR_UPSTREAM_TIMEOUT', message)
  }
}

/** The embedded development broker could not start (port taken, aedes not installed). */
export class EmbeddedBrokerError extends DrawbridgeError {
  constructor(message: string, options?: ErrorOptions) {
    super('DRAWBRIDGE_ERR_EMBEDDED_BROKER', message, options)
  }
}

/** The public listener could not bind (port in use, permission denied for ports < 1024). */
export class ListenError extends DrawbridgeError {
  constructor(message: string, options?: ErrorOptions) {
    super('DRAWBRIDGE_ERR_LISTEN', message, options)
  }
}

/**
 * TLS material (certificate, key, CA bundle, CRL) is missing, unreadable or invalid: a key that
 * does not match its certificate, an expired certificate, a CRL that does not parse. Fatal at
 * start-up (exit 1); on a reload the old material stays in use.
 */
export class TlsMaterialError extends DrawbridgeError {
  /** A short label for logs and counters: unreadable, parse, key_mismatch, expired, ... */
  readonly reason: string

  constructor(message: string, options?: ErrorOptions & { reason?: string }) {
    super('DRAWBRIDGE_ERR_TLS_MATERIAL', message, options)
    this.reason = options?.reason ?? 'invalid'
  }
}

export const ERROR_CODES = [
  'DRAWBRIDGE_ERR_CONFIG',
  'DRAWBRIDGE_ERR_UPSTREAM_REFUSED',
  'DRAWBRIDGE_ERR_UPSTREAM_TIMEOUT',
  'DRAWBRIDGE_ERR_EMBEDDED_BROKER',
  'DRAWBRIDGE_ERR_LISTEN',
  'DRAWBRIDGE_ERR_TLS_MATERIAL',
] as const

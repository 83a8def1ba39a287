// Errors with stable codes (the README's "Error codes" table lists each one; a test keeps the
// two in step). Messages are sentences an operator can act on. ERROR_CODES is read off the
// classes below, so a new class is listed (and must be documented) by being declared.
import type { MalformedReason } from './mqtt/errors.js'

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
  static readonly code = 'DRAWBRIDGE_ERR_CONFIG'
  readonly key: string
  readonly reason: string

  constructor(key: string, reason: string) {
    super(ConfigError.code, `${key}: ${reason}`)
    this.key = key
    this.reason = reason
  }
}

/**
 * No broker could be reached for a client. Each subclass carries the HTTP status its upgrade is
 * answered with and the reason label it is counted under.
 */
export abstract class UpstreamError extends DrawbridgeError {
  abstract readonly status: 502 | 504
  abstract readonly reason: 'upstream_refused' | 'upstream_timeout'
}

/** No broker accepted the TCP connection (refused, unreachable, reset). Answered 502. */
export class UpstreamRefusedError extends UpstreamError {
  static readonly code = 'DRAWBRIDGE_ERR_UPSTREAM_REFUSED'
  readonly status = 502
  readonly reason = 'upstream_refused'

  constructor(message: string, options?: ErrorOptions) {
    super(UpstreamRefusedError.code, message, options)
  }
}

/** A broker did not accept the TCP connection within upstream.connectTimeout. Answered 504. */
export class UpstreamTimeoutError extends UpstreamError {
  static readonly code = 'DRAWBRIDGE_ERR_UPSTREAM_TIMEOUT'
  readonly status = 504
  readonly reason = 'upstream_timeout'

  constructor(message: string) {
    super(UpstreamTimeoutError.code, message)
  }
}

/** The embedded development broker could not start (port taken, aedes not installed). */
export class EmbeddedBrokerError extends DrawbridgeError {
  static readonly code = 'DRAWBRIDGE_ERR_EMBEDDED_BROKER'

  constructor(message: string, options?: ErrorOptions) {
    super(EmbeddedBrokerError.code, message, options)
  }
}

/** A listener could not bind (port in use, permission denied for ports < 1024). */
export class ListenError extends DrawbridgeError {
  static readonly code = 'DRAWBRIDGE_ERR_LISTEN'

  constructor(message: string, options?: ErrorOptions) {
    super(ListenError.code, message, options)
  }
}

/**
 * TLS material (certificate, key, CA bundle, CRL) is missing, unreadable or invalid: a key that
 * does not match its certificate, an expired certificate, a CRL that does not parse. Fatal at
 * start-up (exit 1); on a reload the old material stays in use.
 */
export class TlsMaterialError extends DrawbridgeError {
  static readonly code = 'DRAWBRIDGE_ERR_TLS_MATERIAL'
  /** A short label for logs and counters: unreadable, parse, key_mismatch, expired, ... */
  readonly reason: string

  constructor(message: string, options?: ErrorOptions & { reason?: string }) {
    super(TlsMaterialError.code, message, options)
    this.reason = options?.reason ?? 'invalid'
  }
}

/**
 * A packet breaks the MQTT framing rules (src/mqtt/framer.ts); `reason` says which rule. The
 * message names the packet and the field, never a field's value: a CONNECT may hold a password.
 */
export class MqttMalformedError extends DrawbridgeError {
  static readonly code = 'DRAWBRIDGE_ERR_MQTT_MALFORMED'
  readonly reason: MalformedReason
  /** Who sent the packet. */
  readonly sender: 'client' | 'broker'
  /** The packet's type (0-15), from its first byte. */
  readonly packetType: number
  /** Where the packet starts in the stream the framer read, in bytes from its first. */
  readonly offset: number

  constructor(
    reason: MalformedReason,
    detail: string,
    where: { sender: 'client' | 'broker'; packetType: number; offset: number },
  ) {
    super(
      MqttMalformedError.code,
      `malformed MQTT from the ${where.sender}: ${detail} (packet at byte ${where.offset})`,
    )
    this.reason = reason
    this.sender = where.sender
    this.packetType = where.packetType
    this.offset = where.offset
  }
}

/** Every concrete error class, in the README table's order. */
export const ERROR_CLASSES = [
  ConfigError,
  UpstreamRefusedError,
  UpstreamTimeoutError,
  EmbeddedBrokerError,
  ListenError,
  TlsMaterialError,
  MqttMalformedError,
] as const

export const ERROR_CODES: readonly string[] = ERROR_CLASSES.map((error) => error.code)

// Sessions whose client certificate stops being good while they are open (tls.closeRevoked).
// OpenSSL checks a certificate once, at the handshake; a device whose certificate is revoked or
// expires afterwards would otherwise stay connected for as long as its connection lasts.
// Revocations are checked after every successful TLS reload (the new CRL), expiry on a sweep.
// A session is ended with 1008 (mqtts: TLS close), MQTT 5 clients first told DISCONNECT 0x87
// Not authorized with a Reason String that says which (Connection.goodbye).
import type { Connection } from '../bridge/connection.js'
import { Goodbyes } from '../bridge/goodbyes.js'
import type { ConnectionRegistry } from '../bridge/registry.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { isRevoked } from './crl.js'
import type { TlsManager } from './tls.js'

/** Expiry is checked at least this often. */
export const EXPIRY_CHECK_INTERVAL_MS = 60_000

export interface CertificateSessionsOptions {
  connections: ConnectionRegistry
  tls: TlsManager
  log: Logger
  metrics: Metrics
  /** How often expired certificates are looked for; EXPIRY_CHECK_INTERVAL_MS unless a test says. */
  expiryCheckInterval?: number
}

export type SessionCloseReason = 'revoked' | 'expired'

export class CertificateSessions {
  readonly #options: CertificateSessionsOptions
  #timer: NodeJS.Timeout | undefined

  constructor(options: CertificateSessionsOptions) {
    this.#options = options
  }

  start(): void {
    const interval = this.#options.expiryCheckInterval ?? EXPIRY_CHECK_INTERVAL_MS
    this.#timer = setInterval(() => this.closeExpired(Date.now()), interval)
    this.#timer.unref()
  }

  stop(): void {
    clearInterval(this.#timer)
  }

  /** After a successful reload: closes the sessions the CRL now in use revokes. */
  closeRevoked(): number {
    const { revocations } = this.#options.tls
    if (revocations.length === 0) return 0
    return this.#closeWhere('revoked', (cert) => isRevoked(revocations, cert.issuer, cert.serial))
  }

  /** Closes the sessions whose certificate is past its notAfter at `now`. */
  closeExpired(now: number): number {
    return this.#closeWhere('expired', (cert) => Date.parse(cert.validTo) <= now)
  }

  #closeWhere(
    reason: SessionCloseReason,
    matches: (cert: NonNullable<NonNullable<Connection['tls']>['clientCert']>) => boolean,
  ): number {
    if (!this.#options.tls.closeRevoked) return 0
    let closed = 0
    for (const connection of this.#options.connections.values()) {
      const cert = connection.tls?.clientCert
      if (cert === undefined || connection.closing || !matches(cert)) continue
      const goodbye =
        reason === 'revoked' ? Goodbyes.certificateRevoked : Goodbyes.certificateExpired
      this.#options.log.warn(
        {
          conn: connection.id,
          listener: connection.listener,
          subject: cert.subject,
          serial: cert.serial,
          issuer: cert.issuer,
          validTo: cert.validTo,
          reason,
        },
        `${goodbye.reason}; closing its session`,
      )
      this.#options.metrics.tlsSessionClosed(reason)
      connection.goodbye(goodbye)
      closed++
    }
    return closed
  }
}

// auth.mode=jwt: a session lasts as long as its token. One timer for every connection (the
// registry's connections are walked once a second) rather than one per connection; a session
// is ended within about a second of its token's exp plus auth.clockTolerance, the same leeway
// its admission had. MQTT 5 clients first hear DISCONNECT 0x87 "token expired", then 1008.
import { Goodbyes } from '../bridge/goodbyes.js'
import type { ConnectionRegistry } from '../bridge/registry.js'
import type { Logger } from '../log.js'

/** How often expired tokens are looked for. */
export const TOKEN_EXPIRY_CHECK_MS = 1_000

export interface TokenSessionsOptions {
  connections: ConnectionRegistry
  /** auth.clockTolerance. */
  clockTolerance: number
  log: Logger
}

export class TokenSessions {
  readonly #options: TokenSessionsOptions
  #timer: NodeJS.Timeout | undefined

  constructor(options: TokenSessionsOptions) {
    this.#options = options
  }

  start(): void {
    this.#timer = setInterval(() => this.closeExpired(Date.now()), TOKEN_EXPIRY_CHECK_MS)
    this.#timer.unref()
  }

  stop(): void {
    clearInterval(this.#timer)
  }

  /** Ends the sessions whose token is past exp (plus the tolerance) at `now`. */
  closeExpired(now: number): number {
    let closed = 0
    for (const connection of this.#options.connections.values()) {
      const token = connection.token
      if (token?.expiresAt === undefined || connection.closing) continue
      if (token.expiresAt + this.#options.clockTolerance > now) continue
      this.#options.log.info(
        {
          conn: connection.id,
          listener: connection.listener,
          sub: token.subject,
          jti: token.id,
          kid: token.keyId,
          exp: new Date(token.expiresAt).toISOString(),
        },
        'token expired; closing its session',
      )
      connection.goodbye(Goodbyes.tokenExpired)
      closed++
    }
    return closed
  }
}

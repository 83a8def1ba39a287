// Rates the gateway holds its clients to: the token bucket every limit shares, and a
// connection's read rate toward the broker (limits.messageRate, limits.byteRate).
//
// A read rate is enforced by pausing the client side, never by dropping: what is paid for is a
// packet (mqtt.inspect) or a read, as it arrives; a client over its rate is paused until its
// bucket is back above zero, so it is held to the rate on average however fast it writes, and
// its TCP window fills instead of the gateway's memory.
import { performance } from 'node:perf_hooks'

/** A bucket of `size` tokens refilled at `rate` per second; it may be overdrawn (a debt). */
export class TokenBucket {
  readonly rate: number
  readonly size: number
  #tokens: number
  #at: number

  constructor(rate: number, size: number, now = performance.now()) {
    this.rate = rate
    this.size = size
    this.#tokens = size
    this.#at = now
  }

  /** The tokens there are at `now` (negative while in debt). */
  tokens(now = performance.now()): number {
    if (now > this.#at) {
      this.#tokens = Math.min(this.size, this.#tokens + ((now - this.#at) * this.rate) / 1000)
      this.#at = now
    }
    return this.#tokens
  }

  /** Takes one token and returns 0, or takes none and returns the ms until there is one. */
  take(now = performance.now()): number {
    const tokens = this.tokens(now)
    if (tokens >= 1) {
      this.#tokens = tokens - 1
      return 0
    }
    return this.msUntil(1, now)
  }

  /** Takes `cost` tokens, into debt when there are not as many. */
  pay(cost: number, now = performance.now()): void {
    this.#tokens = this.tokens(now) - cost
  }

  /** Ms until the bucket holds `tokens` (0 when it does now). */
  msUntil(tokens: number, now = performance.now()): number {
    const missing = tokens - this.tokens(now)
    return missing <= 0 ? 0 : (missing * 1000) / this.rate
  }
}

/** A bucket of one second of `rate`, at least one token: what the limits without a burst use. */
export function secondBucket(rate: number): TokenBucket {
  return new TokenBucket(rate, Math.max(1, rate))
}

/** limits.messageRate and limits.byteRate (0: off). */
export interface ReadRateLimits {
  messageRate: number
  byteRate: number
}

/** What a read rate does to its connection. */
export interface RateHolder {
  /** Stop reading the client: it is over `limit`. */
  holdForRate(limit: 'message' | 'byte'): void
  /** The client is within its rate again. */
  releaseForRate(): void
}

/** A connection's rate state, as /connections shows it. */
export interface ReadRateView {
  /** Tokens left (negative: the debt a paused client is waiting out); null when that limit is off. */
  messageTokens: number | null
  byteTokens: number | null
  /** When the client was paused for its rate, or null while it reads. */
  pausedSince: string | null
  /** How many times the client has been paused for its rate. */
  holds: number
}

// A paused client is let go once this much of a second's worth is back, rather than at the
// first token: one pause per ~50 ms instead of one per packet, and the average rate unchanged.
const RESUME_FRACTION = 0.05

export class ReadRate {
  readonly #messages: TokenBucket | undefined
  readonly #bytes: TokenBucket | undefined
  readonly #holder: RateHolder
  #pausedSince: number | undefined
  #holds = 0
  /** At most one, and only while paused. */
  #timer: NodeJS.Timeout | undefined

  /** Undefined when both limits are off: an unlimited connection carries nothing. */
  static for(limits: ReadRateLimits, holder: RateHolder): ReadRate | undefined {
    if (limits.messageRate <= 0 && limits.byteRate <= 0) return undefined
    return new ReadRate(limits, holder)
  }

  private constructor(limits: ReadRateLimits, holder: RateHolder) {
    this.#messages = limits.messageRate > 0 ? secondBucket(limits.messageRate) : undefined
    this.#bytes = limits.byteRate > 0 ? secondBucket(limits.byteRate) : undefined
    this.#holder = holder
  }

  get held(): boolean {
    return this.#pausedSince !== undefined
  }

  /** Pays for what the client sent: `packets` whole packets (0 when they are not counted). */
  pay(packets: number, bytes: number): void {
    const now = performance.now()
    if (packets > 0) this.#messages?.pay(packets, now)
    this.#bytes?.pay(bytes, now)
  }

  /** After a read: pauses the client when a bucket is in debt. */
  check(): void {
    if (this.#timer !== undefined) return
    const now = performance.now()
    const over = this.#over(now)
    if (over === undefined) return
    this.#pausedSince ??= Date.now()
    this.#holds++
    this.#holder.holdForRate(over)
    this.#schedule(now)
  }

  /** The connection is closing: no more timer, and no more holding. */
  stop(): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    this.#pausedSince = undefined
  }

  view(): ReadRateView {
    const now = performance.now()
    return {
      messageTokens: this.#messages ? Math.floor(this.#messages.tokens(now)) : null,
      byteTokens: this.#bytes ? Math.floor(this.#bytes.tokens(now)) : null,
      pausedSince:
        this.#pausedSince === undefined ? null : new Date(this.#pausedSince).toISOString(),
      holds: this.#holds,
    }
  }

  #over(now: number): 'message' | 'byte' | undefined {
    if (this.#messages !== undefined && this.#messages.tokens(now) < 0) return 'message'
    if (this.#bytes !== undefined && this.#bytes.tokens(now) < 0) return 'byte'
    return undefined
  }

  #schedule(now: number): void {
    const wait = Math.max(
      this.#messages?.msUntil(this.#messages.rate * RESUME_FRACTION, now) ?? 0,
      this.#bytes?.msUntil(this.#bytes.rate * RESUME_FRACTION, now) ?? 0,
    )
    this.#timer = setTimeout(ReadRate.#wake, Math.max(1, Math.ceil(wait)), this)
    this.#timer.unref()
  }

  // A paused WebSocket still hands over the frames ws had read already, so the debt may have
  // grown since the pause: the client is let go only once it is paid off.
  static #wake(rate: ReadRate): void {
    const now = performance.now()
    if (rate.#over(now) !== undefined) {
      rate.#schedule(now)
      return
    }
    rate.#timer = undefined
    rate.#pausedSince = undefined
    rate.#holder.releaseForRate()
  }
}

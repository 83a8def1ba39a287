// One seeded PRNG for every test that draws at random (mulberry32): the same seed gives the same
// run, so a failure printed with its seed can be replayed. The fault suite, the framer's and
// the identity rewrite's property tests all draw from it.

export interface Prng {
  /** In [0, 1). */
  next: () => number
  /** An integer in [0, n). */
  int: (n: number) => number
  /** An integer in [min, max]. */
  between: (min: number, max: number) => number
  chance: (p: number) => boolean
  pick: <T>(items: readonly T[]) => T
  bytes: (n: number) => Buffer
}

export function prng(seed: number): Prng {
  let state = seed >>> 0
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0
    let x = state
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
  const int = (n: number): number => Math.floor(next() * n)
  return {
    next,
    int,
    between: (min, max) => min + int(max - min + 1),
    chance: (p) => next() < p,
    pick: (items) => items[int(items.length)] as (typeof items)[number], // index < length
    // Four bytes per draw: the fault suite fills megabytes of payload with it.
    bytes: (n) => {
      const out = Buffer.allocUnsafe(n)
      for (let i = 0; i < n; i += 4) {
        const word = (next() * 4294967296) >>> 0
        for (let k = 0; k < 4 && i + k < n; k++) out[i + k] = (word >>> (8 * k)) & 0xff
      }
      return out
    },
  }
}

/** The seed from `variable` when it holds an integer, else `fallback`; printed for a replay. */
export function seedFrom(
  t: { comment: (...message: unknown[]) => void },
  variable: string,
  fallback: number,
): number {
  const fromEnv = Number(process.env[variable])
  const seed = process.env[variable] !== undefined && Number.isInteger(fromEnv) ? fromEnv : fallback
  t.comment(`seed=${seed} (replay with ${variable}=${seed})`)
  return seed
}

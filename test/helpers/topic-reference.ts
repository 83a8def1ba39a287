// The reference implementation of MQTT topic matching the permission tests compare against:
// qlobber (8.0.1), the matcher Aedes's mqemitter and aedes-persistence are built on, set up
// the way mqemitter sets it up for MQTT (`/`, `+`, `#`, and `+` matching an empty level).
// qlobber does not know the `$` rule, which Aedes applies on its own: a topic starting with
// `$` is not matched by a filter whose first level is a wildcard [MQTT-4.7.2-1]. That one
// line is added here.
import { createRequire } from 'node:module'

interface QlobberInstance {
  add(topic: string, value: number): QlobberInstance
  match(topic: string): number[]
}
type QlobberClass = new (options: Record<string, unknown>) => QlobberInstance

const require = createRequire(import.meta.url)
// qlobber ships no types: the two methods used here are declared above.
const { Qlobber } = require('qlobber') as { Qlobber: QlobberClass }

/** The filters, compiled once: which of them match a topic name. */
export class ReferenceMatcher {
  readonly #filters: readonly string[]
  readonly #qlobber: QlobberInstance

  constructor(filters: readonly string[]) {
    this.#filters = filters
    this.#qlobber = new Qlobber({
      separator: '/',
      wildcard_one: '+',
      wildcard_some: '#',
      match_empty_levels: true,
    })
    filters.forEach((filter, index) => this.#qlobber.add(filter, index))
  }

  /** Whether some filter matches `topic`. */
  matchesAny(topic: string): boolean {
    return this.#qlobber.match(topic).some((index) => {
      const filter = this.#filters[index] as string
      return !(topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#')))
    })
  }
}

export function referenceMatches(filter: string, topic: string): boolean {
  return new ReferenceMatcher([filter]).matchesAny(topic)
}

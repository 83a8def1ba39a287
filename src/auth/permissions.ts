// Topic permissions from a token claim (auth.permissionsClaim): which topics a client may
// publish to and which filters it may subscribe to. Pure: the bridge asks, per PUBLISH and per
// SUBSCRIBE the framer reads, and acts on the answer.
//
// The claim holds MQTT topic filters, `{ "publish": [...], "subscribe": [...] }`, where `{sub}`
// stands for the token's subject. A PUBLISH is let through when its topic matches one of the
// publish filters; a SUBSCRIBE filter only when every topic it can match is matched by one of
// the subscribe filters (so `#` only when `#`, or `+/#`, is granted): containment, not overlap,
// since a broker delivers everything a filter matches.
//
// Matching follows MQTT 3.1.1 and 5, section 4.7: levels split at `/` (empty levels count), `+`
// is one whole level, `#` the last level and everything below it, the parent included
// (`a/#` matches `a`), and a topic beginning with `$` is not matched by a filter beginning with
// a wildcard [MQTT-4.7.2-1]. A shared subscription `$share/{group}/{filter}` (MQTT 5, 4.8.2) is
// judged by its filter.
//
// The subject must not widen a grant: substituted into `users/{sub}/#`, a subject `a/b` would
// reach into user `a`'s topics, `+` or `#` would be wildcards, and `$x` at the start of a
// filter a `$` topic. A subject with `/`, `+`, `#` or U+0000, an empty one, or one starting with
// `$`, is refused (the claim is then bad), as is `{sub}` in a token without a subject.

/** What the claim grants, compiled. */
export class TopicPermissions {
  readonly #publish: readonly (readonly string[])[]
  readonly #subscribe: readonly (readonly string[])[]

  constructor(publish: readonly string[], subscribe: readonly string[]) {
    this.#publish = publish.map(levels)
    this.#subscribe = subscribe.map(levels)
  }

  /** A permission set that grants nothing: a token without the claim. */
  static none(): TopicPermissions {
    return new TopicPermissions([], [])
  }

  /** True when `topic` (a PUBLISH's topic name) is a valid topic name some grant matches. */
  mayPublish(topic: string): boolean {
    if (!validTopicName(topic)) return false
    const topicLevels = levels(topic)
    return this.#publish.some((grant) => matches(grant, topicLevels))
  }

  /**
   * True when `filter` (one of a SUBSCRIBE's topic filters) is valid and every topic it can
   * match is matched by some subscribe grant. `$share/{group}/` is judged by what follows it.
   */
  maySubscribe(filter: string): boolean {
    const own = sharedFilter(filter)
    if (own === undefined || problemOfFilter(own) !== undefined) return false
    return covered(levels(own), 0, this.#subscribe)
  }
}

/** Why a claim cannot be used: the connection is refused (reason bad_permissions). */
export interface PermissionsFault {
  readonly fault: string
}

const KEYS = new Set(['publish', 'subscribe'])

/**
 * Reads the claim's value: an object with optional `publish` and `subscribe` arrays of topic
 * filters (a key left out grants nothing), `{sub}` replaced by `subject`. Anything else, an
 * unknown key included, is a fault: a token that does not say clearly what it grants is not
 * guessed at.
 */
export function parsePermissions(
  value: unknown,
  subject: string | undefined,
): TopicPermissions | PermissionsFault {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { fault: 'the permissions claim is not an object' }
  }
  const claim = value as Record<string, unknown>
  for (const key of Object.keys(claim)) {
    if (!KEYS.has(key)) return { fault: `the permissions claim has an unknown key "${key}"` }
  }
  const publish = grants(claim.publish, 'publish', subject)
  if ('fault' in publish) return publish
  const subscribe = grants(claim.subscribe, 'subscribe', subject)
  if ('fault' in subscribe) return subscribe
  return new TopicPermissions(publish.filters, subscribe.filters)
}

/**
 * The permissions a token carries under `claimName`. A token without that claim is granted
 * nothing (every PUBLISH and SUBSCRIBE is refused): an issuer that forgot the claim must not
 * open every topic.
 */
export function permissionsOf(
  claims: Readonly<Record<string, unknown>>,
  claimName: string,
  subject: string | undefined,
): TopicPermissions | PermissionsFault {
  if (!Object.hasOwn(claims, claimName)) return TopicPermissions.none()
  return parsePermissions(claims[claimName], subject)
}

const SUB = '{sub}'

function grants(
  value: unknown,
  key: string,
  subject: string | undefined,
): { filters: string[] } | PermissionsFault {
  if (value === undefined) return { filters: [] }
  if (!Array.isArray(value)) return { fault: `permissions "${key}" is not an array` }
  const filters: string[] = []
  for (const [index, entry] of (value as unknown[]).entries()) {
    const at = `permissions "${key}"[${index}]`
    if (typeof entry !== 'string') return { fault: `${at} is not a string` }
    let filter = entry
    if (filter.includes(SUB)) {
      const problem = problemOfSubject(subject)
      if (problem !== undefined) return { fault: `${at} uses {sub}, but ${problem}` }
      filter = filter.replaceAll(SUB, subject as string) // problemOfSubject checked it is set
    }
    const problem = problemOfFilter(filter)
    if (problem !== undefined) return { fault: `${at} ${problem}` }
    if (filter.startsWith('$share/') || filter === '$share') {
      // A grant names topics; which share group a client joins is not something it limits.
      return { fault: `${at} is a shared subscription; grant its filter instead` }
    }
    filters.push(filter)
  }
  return { filters }
}

function problemOfSubject(subject: string | undefined): string | undefined {
  if (subject === undefined) return 'the token has no subject'
  if (subject === '') return 'the subject is empty'
  if (/[/+#\0]/.test(subject)) return 'the subject holds "/", "+", "#" or U+0000'
  if (subject.startsWith('$')) return 'the subject starts with "$"'
  return undefined
}

/** MQTT strings are at most 65535 bytes of UTF-8 (1.5.3). */
const MAX_STRING_BYTES = 65_535

/**
 * Why `filter` is not a valid topic filter (MQTT 3.1.1 and 5, 4.7.1 and 4.7.3), or undefined:
 * at least one character [MQTT-4.7.3-1], no U+0000 [MQTT-4.7.3-2], `+` a whole level
 * [MQTT-4.7.1-3], `#` a whole level and the last [MQTT-4.7.1-2].
 */
export function problemOfFilter(filter: string): string | undefined {
  if (filter === '') return 'is empty'
  if (Buffer.byteLength(filter) > MAX_STRING_BYTES) return 'is longer than 65535 bytes'
  if (filter.includes('\0')) return 'holds U+0000'
  const parts = levels(filter)
  for (const [index, level] of parts.entries()) {
    if (level.includes('#') && (level !== '#' || index !== parts.length - 1)) {
      return 'has "#" other than as its last level'
    }
    if (level.includes('+') && level !== '+') return 'has "+" inside a level'
  }
  return undefined
}

/** A topic name: non-empty, no wildcard [MQTT-3.3.2-2], no U+0000. */
function validTopicName(topic: string): boolean {
  return topic !== '' && !/[+#\0]/.test(topic) && Buffer.byteLength(topic) <= MAX_STRING_BYTES
}

// `$share/{ShareName}/{filter}`: the filter after the group. The group is at least one
// character with no `/`, `+` or `#` (MQTT 5, 4.8.2); a malformed one gives undefined.
function sharedFilter(filter: string): string | undefined {
  if (!filter.startsWith('$share/')) return filter
  const end = filter.indexOf('/', 7)
  if (end <= 7) return undefined
  const group = filter.slice(7, end)
  if (/[+#]/.test(group)) return undefined
  return filter.slice(end + 1)
}

function levels(filter: string): string[] {
  return filter.split('/')
}

/** Whether `grant` matches the topic name split into `topic`. */
function matches(grant: readonly string[], topic: readonly string[]): boolean {
  // [MQTT-4.7.2-1]: a leading wildcard does not match a topic that starts with `$`.
  if ((topic[0] as string).startsWith('$') && (grant[0] === '+' || grant[0] === '#')) {
    return false
  }
  for (let i = 0; i < grant.length; i++) {
    const level = grant[i]
    if (level === '#') return true // the parent too: `a/#` matches `a`
    if (i >= topic.length) return false
    if (level !== '+' && level !== topic[i]) return false
  }
  return grant.length === topic.length
}

/**
 * Whether every topic that `filter` matches, from level `i` on, is matched by one of `grants`,
 * all of which match every topic `filter[0, i)` matches. Grants and topic advance together (a
 * level each), so the grants left stay aligned at `i`; each step drops the grants that cannot
 * match, and the recursion ends when none is left or one covers the rest with `#`.
 */
function covered(
  filter: readonly string[],
  i: number,
  grants: readonly (readonly string[])[],
): boolean {
  const level = filter[i]
  // A literal `$...` first level: the only topics a leading wildcard grant does not match.
  const dollar =
    i === 0 && level !== undefined && level !== '+' && level !== '#' && level.startsWith('$')
  if (!dollar && grants.some((grant) => grant[i] === '#')) return true
  if (level === undefined) {
    // The topics that end here: matched by a grant that ends here too (`#` is handled above).
    return grants.some((grant) => grant.length === i)
  }
  if (level === '#') {
    // This level and below: the topic that ends at the level above, and every topic with one
    // more level and anything under it, i.e. `+/#` from here. No topic ends above level 0, nor
    // after one empty level: that would be the empty string, no topic name [MQTT-4.7.3-1].
    const parent = i > 1 || (i === 1 && filter[0] !== '')
    if (parent && !grants.some((grant) => grant.length === i)) return false
    const next = grants.filter((grant) => grant[i] === '+')
    return next.length > 0 && covered([...filter.slice(0, i), '+', '#'], i + 1, next)
  }
  if (level === '+') {
    // Any value, most of them named by no literal grant: only `+` grants cover them all.
    const next = grants.filter((grant) => grant[i] === '+')
    return next.length > 0 && covered(filter, i + 1, next)
  }
  const next = grants.filter((grant) => grant[i] === level || (grant[i] === '+' && !dollar))
  return next.length > 0 && covered(filter, i + 1, next)
}

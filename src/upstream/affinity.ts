// upstream.affinity: the order in which a client's brokers are tried, picked from a field of its
// CONNECT by rendezvous (highest-random-weight) hashing, so the same client id (or username)
// keeps reaching the same node of a broker cluster whose nodes do not share sessions, as
// HAProxy's `stick on mqtt_field_value(connect,client_identifier)` or NGINX Plus's
// `hash $mqtt_preread_clientid` do.
//
// Each broker gets a weight hash(broker, key); the brokers are tried from the heaviest down.
// Unlike `hash mod n`, taking a broker out moves only the keys it was the heaviest for: every
// other key keeps its first choice, and the keys of the missing broker spread over the others
// by their own second choice. No state is kept, so every gateway replica computes the same
// order. The hash is SHA-1 cut to 64 bits: stable across versions and platforms (it must not
// change, or every client would move), and mixes well even for keys that differ in one byte.
import { createHash } from 'node:crypto'
import type { HostPort } from '../config/formats.js'
import type { Affinity } from '../config/schema.js'
import { formatHostPort } from './connector.js'

/** The CONNECT fields affinity may be keyed on. */
export interface AffinityFields {
  clientId: string
  /** Undefined when the CONNECT carries no username. */
  username: string | undefined
}

/**
 * The brokers in the order to try for a client: by `affinity`'s field of its CONNECT, or the
 * configured order for `none` and for an empty or missing field (an empty client id is one the
 * broker assigns, so it names nobody to keep together).
 */
export function brokerOrder(
  brokers: readonly HostPort[],
  affinity: Affinity,
  fields: AffinityFields,
): readonly HostPort[] {
  if (affinity === 'none' || brokers.length < 2) return brokers
  const key = affinity === 'clientId' ? fields.clientId : fields.username
  if (key === undefined || key === '') return brokers
  return rendezvousOrder(brokers, key)
}

/** `brokers` from the heaviest for `key` to the lightest; ties keep the configured order. */
export function rendezvousOrder(brokers: readonly HostPort[], key: string): HostPort[] {
  return brokers
    .map((broker, index) => ({ broker, index, weight: weight(broker, key) }))
    .sort((a, b) => (a.weight === b.weight ? a.index - b.index : a.weight > b.weight ? -1 : 1))
    .map(({ broker }) => broker)
}

/**
 * The broker's weight for `key`: the first 64 bits of SHA-1 over "host:port\n" and the key's
 * UTF-8 bytes. host:port holds no newline, so no two (broker, key) pairs hash the same bytes.
 */
export function weight(broker: HostPort, key: string): bigint {
  return createHash('sha1')
    .update(`${formatHostPort(broker)}\n`)
    .update(key, 'utf8')
    .digest()
    .readBigUInt64BE(0)
}

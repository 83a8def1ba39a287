// What the MQTT specifications fix about a packet's fixed header, per protocol level and per
// direction: which types each side may send, the flag bits each type must carry, and the
// remaining lengths each type can have. The framer checks a header against these tables
// with a few array reads, so a packet is judged from its first bytes, before any is forwarded.
//
// Levels: 3 is MQTT 3.1 (protocol name "MQIsdp"), 4 is MQTT 3.1.1 and 5 is MQTT 5.0 (both
// "MQTT"). Level 0 means "not known yet": the client's CONNECT is judged before it names its
// level, and a broker-side framer may not have been told it. Level 0 uses level 5's types and
// lengths (the most permissive) and the fixed flags of 3.1.1 and 5, which a CONNECT carries at
// every level and every broker sends.

export const PacketType = {
  CONNECT: 1,
  CONNACK: 2,
  PUBLISH: 3,
  PUBACK: 4,
  PUBREC: 5,
  PUBREL: 6,
  PUBCOMP: 7,
  SUBSCRIBE: 8,
  SUBACK: 9,
  UNSUBSCRIBE: 10,
  UNSUBACK: 11,
  PINGREQ: 12,
  PINGRESP: 13,
  DISCONNECT: 14,
  /** MQTT 5 only; type 15 is reserved in 3.1 and 3.1.1. */
  AUTH: 15,
} as const

export type PacketTypeValue = (typeof PacketType)[keyof typeof PacketType]

/** Names as the specifications spell them, indexed by type (0 is reserved). */
export const PACKET_NAMES: readonly string[] = [
  'reserved type 0',
  'CONNECT',
  'CONNACK',
  'PUBLISH',
  'PUBACK',
  'PUBREC',
  'PUBREL',
  'PUBCOMP',
  'SUBSCRIBE',
  'SUBACK',
  'UNSUBSCRIBE',
  'UNSUBACK',
  'PINGREQ',
  'PINGRESP',
  'DISCONNECT',
  'AUTH',
]

/** The protocol levels a CONNECT may name. */
export type ProtocolLevel = 3 | 4 | 5

/** Who sends the bytes a framer reads. */
export type Sender = 'client' | 'broker'

/** The largest remaining length a 4-byte Variable Byte Integer can encode (256 MiB - 1). */
export const MAX_REMAINING_LENGTH = 268_435_455

/** Fixed flag values, 3.1.1 table 2.2 and 5.0 table 2-2 (PUBLISH's flags are its own). */
const FIXED_FLAGS: readonly number[] = [0, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0]

export interface LevelRules {
  /** Bit n set: a client may send type n (CONNECT only first, which the framer enforces). */
  readonly fromClient: number
  /** Bit n set: a broker may send type n. */
  readonly fromBroker: number
  /**
   * 3.1 (level 3) puts DUP/QoS/RETAIN on every header: PUBREL, SUBSCRIBE and UNSUBSCRIBE carry
   * QoS 1 and may carry DUP on a retry, and it fixes no other type's flags. So at level 3 only
   * that QoS 1 is checked; a broker may read 3.1 more strictly (mqtt-packet and Mosquitto 2
   * want exactly 0x2), which is its call, not the gateway's. 3.1.1 and 5 fix every type's.
   */
  readonly strictFlags: boolean
  /** Smallest and largest remaining length per type, indexed by type. */
  readonly minLength: Uint32Array
  readonly maxLength: Uint32Array
}

const bits = (...types: number[]): number => types.reduce((mask, type) => mask | (1 << type), 0)

const {
  CONNECT,
  CONNACK,
  PUBLISH,
  PUBACK,
  PUBREC,
  PUBREL,
  PUBCOMP,
  SUBSCRIBE,
  SUBACK,
  UNSUBSCRIBE,
  UNSUBACK,
  PINGREQ,
  PINGRESP,
  DISCONNECT,
  AUTH,
} = PacketType

const CLIENT_TYPES = bits(
  CONNECT,
  PUBLISH,
  PUBACK,
  PUBREC,
  PUBREL,
  PUBCOMP,
  SUBSCRIBE,
  UNSUBSCRIBE,
  PINGREQ,
  DISCONNECT,
)
const BROKER_TYPES = bits(
  CONNACK,
  PUBLISH,
  PUBACK,
  PUBREC,
  PUBREL,
  PUBCOMP,
  SUBACK,
  UNSUBACK,
  PINGRESP,
)

// Remaining-length bounds. They are the smallest packets each type can be, not exact sizes
// where a field is variable: the CONNECT has its own reader, and a PUBLISH with QoS > 0 needs
// 2 more bytes (its packet identifier), which the framer adds. 3.1 and 3.1.1 fix the size of
// the acknowledgements; MQTT 5 appends an optional reason code and properties to them, and a
// 3.1.1 broker answers a level-5 CONNECT with a 2-byte CONNACK (return code 1), so level 5
// allows 2 bytes and more for CONNACK.
function lengths(v5: boolean): { minLength: Uint32Array; maxLength: Uint32Array } {
  const minLength = new Uint32Array(16)
  const maxLength = new Uint32Array(16).fill(MAX_REMAINING_LENGTH)
  const exactly = (type: number, length: number): void => {
    minLength[type] = length
    if (!v5) maxLength[type] = length
  }
  exactly(CONNACK, 2)
  exactly(PUBACK, 2)
  exactly(PUBREC, 2)
  exactly(PUBREL, 2)
  exactly(PUBCOMP, 2)
  exactly(UNSUBACK, 2)
  exactly(DISCONNECT, 0)
  // Topic length (2), then at least the packet identifier or the payload's first field.
  minLength[PUBLISH] = 2
  minLength[SUBSCRIBE] = 5 // packet id, a filter's length, its options byte
  minLength[UNSUBSCRIBE] = 4 // packet id, a filter's length
  minLength[SUBACK] = 3 // packet id, one return code
  maxLength[PINGREQ] = 0
  maxLength[PINGRESP] = 0
  return { minLength, maxLength }
}

const V311 = lengths(false)
const V5 = lengths(true)

const RULES_V3: LevelRules = {
  fromClient: CLIENT_TYPES,
  fromBroker: BROKER_TYPES,
  strictFlags: false,
  ...V311,
}
const RULES_V4: LevelRules = { ...RULES_V3, strictFlags: true }
const RULES_V5: LevelRules = {
  fromClient: CLIENT_TYPES | bits(AUTH),
  fromBroker: BROKER_TYPES | bits(DISCONNECT, AUTH),
  strictFlags: true,
  ...V5,
}

/** Rules by level; 0 (unknown) shares level 5's. */
export function rulesFor(level: ProtocolLevel | 0): LevelRules {
  if (level === 3) return RULES_V3
  if (level === 4) return RULES_V4
  return RULES_V5
}

/**
 * Whether a header's flags are the ones the spec fixes for its type; undefined when they are,
 * else the value they must have (for the error message). PUBLISH: any DUP/RETAIN, QoS 0-2.
 */
export function badFlags(type: number, flags: number, strict: boolean): number | undefined {
  if (type === PUBLISH) return (flags & 0x06) === 0x06 ? -1 : undefined
  const fixed = FIXED_FLAGS[type] ?? 0
  if (strict) return flags === fixed ? undefined : fixed
  // Level 3: only the QoS 1 the acknowledged requests carry is checked.
  if (fixed === 2) return (flags & 0x06) === 0x02 ? undefined : fixed
  return undefined
}

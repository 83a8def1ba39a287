// The one error the framer reports: a packet that breaks the MQTT framing rules. One class
// and one code, like TlsMaterialError, with `reason` the short label that says what was wrong
// (for logs and a counter's label) and a message an operator can read. The message names the
// packet and the field, never a field's value: a CONNECT's bytes may hold a password.

/** What was wrong, one label per rule the framer checks. */
export type MalformedReason =
  /** A Remaining Length whose fourth byte still has the continuation bit set. */
  | 'remaining_length'
  /** Type 0, or type 15 (AUTH) before MQTT 5. */
  | 'reserved_type'
  /** A type this side never sends: SUBACK from a client, PINGREQ from a broker... */
  | 'unexpected_type'
  /** A client's first packet is not a CONNECT [MQTT-3.1.0-1]. */
  | 'expected_connect'
  /** A broker's first packet is not a CONNACK (nor, in MQTT 5, an AUTH). */
  | 'expected_connack'
  /** A client sent CONNECT twice [MQTT-3.1.0-2]. */
  | 'second_connect'
  /** A broker sent CONNACK twice. */
  | 'second_connack'
  /** Header flag bits other than the fixed ones [MQTT-2.2.2-1], or a PUBLISH with QoS 3. */
  | 'header_flags'
  /** A remaining length the packet type cannot have (a PINGREQ with a body, a short PUBACK). */
  | 'packet_length'
  /** A CONNECT larger than the framer reads (maxConnectSize). */
  | 'connect_too_large'
  /** A CONNECT whose protocol name is not "MQTT" (or "MQIsdp" for 3.1). */
  | 'protocol_name'
  /** A protocol level other than 3, 4, 5, or one that does not go with the protocol name. */
  | 'protocol_level'
  /** CONNECT flags the spec forbids: reserved bit, will QoS 3, will QoS without a will... */
  | 'connect_flags'
  /** A length declared inside a CONNECT runs past the CONNECT's remaining length. */
  | 'connect_overrun'
  /** Bytes left in a CONNECT after its last field. */
  | 'connect_trailing'
  /** A CONNECT string (client id, will topic, username) that is not valid UTF-8 or holds U+0000. */
  | 'connect_utf8'
  /** CONNACK acknowledge flags with reserved bits set [MQTT-3.2.2-1]. */
  | 'connack_flags'
  /** Topic reading on: a PUBLISH topic that runs past the packet, or is not valid UTF-8. */
  | 'publish_topic'
  /**
   * Topic reading on: a SUBSCRIBE whose properties or filters run past it, with no filter
   * [MQTT-3.8.3-3], or a filter that is not valid UTF-8.
   */
  | 'subscribe_payload'
  /** Topic reading on: a SUBSCRIBE larger than the framer reads (maxSubscribeSize). */
  | 'subscribe_too_large'

/** Every MalformedReason, for a counter's bounded label set (the type below checks it is all). */
export const MALFORMED_REASONS = [
  'remaining_length',
  'reserved_type',
  'unexpected_type',
  'expected_connect',
  'expected_connack',
  'second_connect',
  'second_connack',
  'header_flags',
  'packet_length',
  'connect_too_large',
  'protocol_name',
  'protocol_level',
  'connect_flags',
  'connect_overrun',
  'connect_trailing',
  'connect_utf8',
  'connack_flags',
  'publish_topic',
  'subscribe_payload',
  'subscribe_too_large',
] as const satisfies readonly MalformedReason[]

type MissingReason = Exclude<MalformedReason, (typeof MALFORMED_REASONS)[number]>
/** Fails to compile (names the reason) when one is added to the type but not to the list. */
export const MALFORMED_REASONS_COMPLETE: [MissingReason] extends [never] ? true : MissingReason =
  true

// The class lives with the other error classes (src/errors.ts lists every code).
export { MqttMalformedError } from '../errors.js'

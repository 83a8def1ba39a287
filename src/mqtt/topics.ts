// The topic names and filters a client sends, for the framer's topic reading (auth
// permissions): a PUBLISH's topic (its first field, MQTT 3.1.1 and 5, 3.3.2.1) and a
// SUBSCRIBE's filters (3.8.3), read from a complete byte range. Values are only decoded, never
// judged: whether a topic is allowed is the owner's call (auth/permissions.ts).
import { isUtf8 } from 'node:buffer'
import type { ReadFault } from './connect.js'
import type { ProtocolLevel } from './packet.js'

/** The topic whose UTF-8 bytes are buf[start, end), or a fault when they are not UTF-8. */
export function decodeTopic(buf: Buffer, start: number, end: number): string | ReadFault {
  if (!isUtf8(buf.subarray(start, end))) {
    return { reason: 'publish_topic', detail: 'a PUBLISH topic that is not valid UTF-8' }
  }
  return buf.toString('utf8', start, end)
}

/**
 * The topic filters of the SUBSCRIBE whose variable header and payload are buf[start, end):
 * the packet identifier, at level 5 the properties (skipped by their length), then one or more
 * filters, each followed by its options byte.
 */
export function readSubscribeFilters(
  buf: Buffer,
  start: number,
  end: number,
  level: ProtocolLevel | 0,
): string[] | ReadFault {
  let i = start + 2 // the packet identifier
  if (level === 5) {
    // Property Length, a Variable Byte Integer (1.5.5), then that many bytes.
    let length = 0
    let weight = 1
    for (let count = 0; ; count++) {
      if (i >= end || count === 4) return overrun('properties')
      const byte = buf[i++] as number // i < end
      length += (byte & 0x7f) * weight
      weight *= 128
      if ((byte & 0x80) === 0) break
    }
    i += length
  }
  const filters: string[] = []
  while (i < end) {
    if (end - i < 2) return overrun('filter length')
    const length = buf.readUInt16BE(i)
    i += 2
    // The filter, then its subscription options byte.
    if (end - i < length + 1) return overrun('filter')
    if (!isUtf8(buf.subarray(i, i + length))) {
      return { reason: 'subscribe_payload', detail: 'a SUBSCRIBE filter that is not valid UTF-8' }
    }
    filters.push(buf.toString('utf8', i, i + length))
    i += length + 1
  }
  if (i > end) return overrun('properties')
  if (filters.length === 0) {
    return {
      reason: 'subscribe_payload',
      detail: 'a SUBSCRIBE with no topic filter [MQTT-3.8.3-3]',
    }
  }
  return filters
}

function overrun(field: string): ReadFault {
  return {
    reason: 'subscribe_payload',
    detail: `a SUBSCRIBE whose ${field} runs past its remaining length`,
  }
}

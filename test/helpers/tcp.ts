// What the kernel knows about this machine's loopback TCP connections (/proc/net/tcp), for tests
// that must know when a pipe has filled up. A process that stops reading lets its receive buffer
// fill; the sender's kernel then holds data that the zero window does not let it send, and arms
// its zero-window probe timer. That timer is the kernel's own word that the receiver has stopped
// reading and nothing more fits, where the sender alone only sees writes that stop completing.
import { readFileSync } from 'node:fs'

/** /proc/net/tcp's "st" for ESTABLISHED, and its "tr" for the zero-window probe timer. */
const ESTABLISHED = '01'
const PROBE0_TIMER = '04'

const portOf = (address: string): number => parseInt(address.split(':')[1] ?? '', 16)

/**
 * Whether the established IPv4 connection from local port `from` to remote port `to` has data
 * waiting on a zero window (its zero-window probe timer is armed).
 */
export function zeroWindow(from: number, to: number): boolean {
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when ...
    const [, local = '', remote = '', state, , timer = ''] = line.trim().split(/\s+/)
    if (state !== ESTABLISHED || portOf(local) !== from || portOf(remote) !== to) continue
    return timer.split(':')[0] === PROBE0_TIMER
  }
  return false
}

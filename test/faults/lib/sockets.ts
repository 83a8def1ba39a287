// What a process holds open, from /proc: its descriptors, and for each TCP socket among them
// the two ends and the TCP state, so a leak names the sockets it is made of (a broker socket
// in CLOSE_WAIT, a client socket in FIN_WAIT2) instead of only a count.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import type { Teardown } from '../../helpers/broker.js'

export interface TcpSocket {
  local: string
  localPort: number
  remote: string
  remotePort: number
  state: string
}

// include/net/tcp_states.h
const STATES: Record<string, string> = {
  '01': 'ESTABLISHED',
  '02': 'SYN_SENT',
  '03': 'SYN_RECV',
  '04': 'FIN_WAIT1',
  '05': 'FIN_WAIT2',
  '06': 'TIME_WAIT',
  '07': 'CLOSE',
  '08': 'CLOSE_WAIT',
  '09': 'LAST_ACK',
  '0A': 'LISTEN',
  '0B': 'CLOSING',
}

function address(hex: string): { text: string; port: number } {
  const [ip = '', port = '0'] = hex.split(':')
  const p = parseInt(port, 16)
  if (ip.length === 8) {
    // IPv4 in host (little-endian) byte order.
    const bytes = [0, 1, 2, 3].map((i) => parseInt(ip.slice(6 - 2 * i, 8 - 2 * i), 16))
    return { text: `${bytes.join('.')}:${p}`, port: p }
  }
  return { text: `[${ip}]:${p}`, port: p }
}

/** Every TCP socket of the network namespace, by inode. */
function tcpTable(pid: number): Map<string, TcpSocket> {
  const table = new Map<string, TcpSocket>()
  for (const file of ['tcp', 'tcp6']) {
    let text: string
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/)
      const [, local = '', remote = '', state = ''] = fields
      const inode = fields[9]
      if (inode === undefined || inode === '0') continue
      const l = address(local)
      const r = address(remote)
      table.set(inode, {
        local: l.text,
        localPort: l.port,
        remote: r.text,
        remotePort: r.port,
        state: STATES[state] ?? state,
      })
    }
  }
  return table
}

/** The TCP sockets among the descriptors of `pid`. */
export function tcpSocketsOf(pid: number): TcpSocket[] {
  const table = tcpTable(pid)
  const sockets: TcpSocket[] = []
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target: string
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`)
    } catch {
      continue // closed between the listing and the readlink
    }
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1]
    const socket = inode === undefined ? undefined : table.get(inode)
    if (socket) sockets.push(socket)
  }
  return sockets
}

/** One line for a failure message: the non-listening TCP sockets, grouped. */
export function describeSockets(pid: number, names: Record<number, string> = {}): string {
  const counts = new Map<string, number>()
  for (const s of tcpSocketsOf(pid)) {
    if (s.state === 'LISTEN') continue
    const local = names[s.localPort] ?? 'local'
    const remote = names[s.remotePort] ?? 'peer'
    const key = `${local}->${remote} ${s.state}`
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  if (counts.size === 0) return 'no TCP socket but the listeners'
  return [...counts].map(([key, n]) => `${n}x ${key}`).join(', ')
}

/** Resolves once `check` holds, polling every `everyMs`; false when `timeoutMs` passed first. */
export async function pollUntil(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  everyMs = 10,
): Promise<boolean> {
  // /proc and the admin listener send no notification when a descriptor closes: polling them
  // against a deadline is the only way to wait for it (the same pattern as eventually()).
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return true
    if (Date.now() >= deadline) return false
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
}

/** A promise that rejects after `ms` with `what`, and its timer cleared when `promise` settles. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, deadline])
  } finally {
    clearTimeout(timer)
  }
}

/** Sends SIGSTOP now and registers a SIGCONT for teardown, so no test leaves a stopped broker. */
export function stopProcess(t: Teardown, pid: number): () => void {
  let stopped = true
  const resume = (): void => {
    if (!stopped) return
    stopped = false
    try {
      process.kill(pid, 'SIGCONT')
    } catch {
      // already gone
    }
  }
  process.kill(pid, 'SIGSTOP')
  t.teardown(resume)
  return resume
}

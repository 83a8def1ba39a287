// What the stream fault cases check on the gateway process from outside: its log lines counted
// as they arrive, /healthz and /connections on the admin listener, its open file descriptors,
// and bounds on every wait.
import type { LogLine } from '../../helpers/gateway.js'
import { adminGet, eventually } from '../../helpers/scrape.js'
import { openFds, type FaultGateway } from './suite.js'

/**
 * Resolves once `n` log lines match (counted from the start of the process), rejects after
 * `timeoutMs` or when the process exits first. Counts incrementally: cheap with 10^4 lines.
 */
export function waitForLogCount(
  gw: FaultGateway,
  match: (line: LogLine) => boolean,
  n: number,
  timeoutMs: number,
): Promise<number> {
  const { logs, child } = gw.process
  let cursor = 0
  let count = 0
  return new Promise((resolve, reject) => {
    const scan = (): boolean => {
      for (; cursor < logs.length; cursor++) {
        const line = logs[cursor]
        if (line !== undefined && match(line)) count++
      }
      return count >= n
    }
    const cleanup = (): void => {
      clearTimeout(timer)
      child.stdout.removeListener('data', onData)
      child.removeListener('exit', onExit)
    }
    // spawnGateway's own 'data' listener was added first, so the lines of a chunk are in `logs`.
    const onData = (): void => {
      if (!scan()) return
      cleanup()
      resolve(count)
    }
    const onExit = (): void => {
      cleanup()
      reject(new Error(`gateway exited after ${count} of ${n} matching log lines`))
    }
    const timer = setTimeout(() => {
      cleanup()
      reject(new Error(`${count} of ${n} matching log lines after ${timeoutMs} ms`))
    }, timeoutMs)
    child.stdout.on('data', onData)
    child.once('exit', onExit)
    onData()
  })
}

export async function healthz(gw: FaultGateway): Promise<number> {
  try {
    return (await adminGet(gw.adminUrl, '/healthz')).status
  } catch {
    return 0
  }
}

export async function openConnections(gw: FaultGateway): Promise<number> {
  const res = await adminGet(gw.adminUrl, '/connections')
  if (res.status !== 200) throw new Error(`/connections answered ${res.status}`)
  return (JSON.parse(res.body) as unknown[]).length
}

export function alive(gw: FaultGateway): boolean {
  return gw.process.child.exitCode === null && gw.process.child.signalCode === null
}

export interface Settled {
  /** 'connection closed' lines logged (the wait gives up at the timeout, without throwing). */
  closesLogged: number
  /** /connections after the last close was logged. */
  connections: number
  fds: number
  baselineFds: number
}

/**
 * After a case's clients are gone: waits for `closes` 'connection closed' lines (events), then
 * for the closed sockets' descriptors to be released (the kernel gives no event for that: a
 * short bounded poll), and reads /connections.
 */
export async function settle(
  gw: FaultGateway,
  closes: number,
  baselineFds: number,
  timeoutMs = 10_000,
): Promise<Settled> {
  const isClose = (l: LogLine): boolean => l.msg === 'connection closed'
  await waitForLogCount(gw, isClose, closes, timeoutMs).catch(() => undefined)
  const closesLogged = gw.process.logs.filter(isClose).length
  let fds = openFds(gw.pid)
  await eventually(
    async () => {
      fds = openFds(gw.pid)
      return fds <= baselineFds
    },
    3_000,
    50,
  )
  return { closesLogged, connections: await openConnections(gw), fds, baselineFds }
}

/** `promise`, or a rejection naming `what` after `ms`; the timer never outlives the race. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, expired])
  } finally {
    clearTimeout(timer)
  }
}

// The gateway as a child process (dist/cli.js, as users run it), with its JSON log lines parsed.
import { spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { Teardown } from './broker.js'
import type { LogLine } from './gateway.js'

export const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url))

export interface GatewayProcess {
  child: ChildProcessWithoutNullStreams
  logs: LogLine[]
  stderr: () => string
  waitForLog: (match: (line: LogLine) => boolean, timeoutMs?: number) => Promise<LogLine>
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** Resident memory of the process in bytes, from /proc. */
  rss: () => number
  /** Bytes the process has read so far, from any file or socket (rchar in /proc/PID/io). */
  bytesRead: () => number
}

/** Only DRAWBRIDGE_* from `env` reach the child: the test machine's own must not leak in. */
export function spawnGateway(
  t: Teardown,
  env: Record<string, string>,
  args: string[] = [],
): GatewayProcess {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('DRAWBRIDGE_') && k !== 'NODE_ENV'),
  )
  // Both profiles serve wss (tls.enabled); these tests speak plain ws unless they opt in. The
  // admin listener takes an ephemeral port unless a test picks one: 9464 may be taken.
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...clean, DRAWBRIDGE_TLS_ENABLED: 'false', DRAWBRIDGE_ADMIN_PORT: '0', ...env },
  })
  t.teardown(() => child.kill('SIGKILL'))
  const logs: LogLine[] = []
  let stderr = ''
  let partial = ''
  const waiters = new Set<() => void>()
  child.stdout.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n')
    partial = lines.pop() ?? ''
    for (const line of lines) if (line.trim() !== '') logs.push(JSON.parse(line) as LogLine)
    for (const wake of waiters) wake()
  })
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      for (const wake of waiters) wake()
      resolve({ code, signal })
    })
  })
  return {
    child,
    logs,
    stderr: () => stderr,
    exited,
    rss: () => {
      const status = readFileSync(`/proc/${child.pid ?? 0}/status`, 'utf8')
      return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024
    },
    bytesRead: () => {
      const io = readFileSync(`/proc/${child.pid ?? 0}/io`, 'utf8')
      return Number(/^rchar: (\d+)$/m.exec(io)?.[1] ?? 0)
    },
    waitForLog: (match, timeoutMs = 10_000) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check)
          reject(new Error(`no matching log line within ${timeoutMs} ms; stderr: ${stderr}`))
        }, timeoutMs)
        function check(): void {
          const found = logs.find(match)
          if (found === undefined) return
          waiters.delete(check)
          clearTimeout(timer)
          resolve(found)
        }
        waiters.add(check)
        check()
      }),
  }
}

/** The public port, from the 'gateway listening' line ("127.0.0.1:PORT"). */
export async function listeningPort(gw: GatewayProcess): Promise<number> {
  const line = await gw.waitForLog((l) => l.msg.startsWith('gateway listening'))
  return Number(String(line.listen).split(':').pop())
}

/** Ends a peer process the way its service would be: SIGTERM, SIGKILL if it lingers 3 s. */
export async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 3_000)
  await exited
  clearTimeout(timer)
}

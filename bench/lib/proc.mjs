// Child processes for the benchmark: spawning with a raised file limit, reading a process's own
// CPU and memory accounting from /proc, and making sure nothing outlives the run.
import { execFileSync, spawn } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import net from 'node:net'
import process from 'node:process'
import { setTimeout as sleep } from 'node:timers/promises'

/** Enough for 10,000 clients: each costs the gateway two descriptors (client + broker). */
export const FILE_LIMIT = 65536
const CLK_TCK = 100 // sysconf(_SC_CLK_TCK) on Linux
const PAGE_KIB = 4

const children = new Set()

/**
 * The descriptor limit a child really gets: FILE_LIMIT, or the hard limit when this host does
 * not let us raise it (a container without CAP_SYS_RESOURCE).
 */
export function effectiveFileLimit() {
  try {
    const out = execFileSync(
      'sh',
      ['-c', `ulimit -n ${FILE_LIMIT} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; ulimit -n`],
      {
        encoding: 'utf8',
      },
    )
    return Number(out.trim()) || FILE_LIMIT
  } catch {
    return FILE_LIMIT
  }
}

/**
 * Spawns `cmd args` in its own process group under `ulimit -n FILE_LIMIT` (root may raise the
 * hard limit; otherwise the soft limit goes up to the hard one). `exec` keeps the pid, so the
 * pid we hold is the one doing the work and the one /proc accounts.
 */
export function spawnChild(name, cmd, args, options = {}) {
  const script = `ulimit -n ${FILE_LIMIT} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`
  const child = spawn('sh', ['-c', script, 'sh', cmd, ...args], {
    detached: true,
    stdio: options.stdio ?? ['ignore', process.env.BENCH_DEBUG ? 'inherit' : 'ignore', 'pipe'],
    env: options.env ?? process.env,
  })
  let stderr = ''
  child.stderr?.on('data', (d) => {
    stderr = (stderr + d.toString()).slice(-4000)
    if (process.env.BENCH_DEBUG) process.stderr.write(`${name}: ${d}`)
  })
  const entry = { name, child, stderr: () => stderr }
  children.add(entry)
  child.once('exit', () => children.delete(entry))
  return entry
}

export async function stopChild(entry, timeoutMs = 5_000) {
  const { child } = entry
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((r) => child.once('exit', r))
  killGroup(child.pid, 'SIGTERM')
  const timedOut = await Promise.race([exited.then(() => false), sleep(timeoutMs).then(() => true)])
  if (timedOut) {
    killGroup(child.pid, 'SIGKILL')
    await Promise.race([exited, sleep(2_000)])
  }
}

function killGroup(pid, signal) {
  try {
    process.kill(-pid, signal)
  } catch {
    try {
      process.kill(pid, signal)
    } catch {
      // already gone
    }
  }
}

/** Synchronous last resort for 'exit' and fatal paths: SIGKILL every group we started. */
export function killAllChildren() {
  for (const { child } of children) killGroup(child.pid, 'SIGKILL')
  children.clear()
}

/** A free loopback port (ephemeral; the tiny race until the child binds it is acceptable). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

/** Resolves once something accepts TCP on host:port; bounded by `timeoutMs`. */
export async function waitForPort(port, entry, timeoutMs = 15_000) {
  const start = Date.now()
  while (Date.now() - start < timeoutMs) {
    if (entry && entry.child.exitCode !== null) {
      throw new Error(`${entry.name} exited (${entry.child.exitCode}): ${entry.stderr().trim()}`)
    }
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1')
      s.once('connect', () => {
        s.destroy()
        resolve(true)
      })
      s.once('error', () => resolve(false))
    })
    if (ok) return
    await sleep(100)
  }
  throw new Error(`${entry?.name ?? 'process'} did not listen on ${port} within ${timeoutMs} ms`)
}

function statFields(pid) {
  const raw = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // Fields after the command name, which is in parentheses and may contain spaces.
  return raw.slice(raw.lastIndexOf(')') + 2).split(' ')
}

/**
 * CPU seconds used by `pid` and everything below it: utime+stime of each live process in the
 * tree, plus cutime+cstime of the root (children it has already reaped, e.g. websockify's
 * per-connection workers). From the kernel's own accounting, not wall time.
 */
export function treeCpuSeconds(pid) {
  const { user, system } = treeCpu(pid)
  return user + system
}

/** treeCpuSeconds split into user and system (kernel) seconds. */
export function treeCpu(pid) {
  const pids = treePids(pid)
  let user = 0
  let system = 0
  for (const p of pids) {
    try {
      const f = statFields(p)
      // After the ')' : state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
      user += Number(f[11])
      system += Number(f[12])
      if (p === pid) {
        user += Number(f[13])
        system += Number(f[14])
      }
    } catch {
      // exited between listing and reading
    }
  }
  return { user: user / CLK_TCK, system: system / CLK_TCK }
}

function treePids(root) {
  const parentOf = new Map()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      parentOf.set(Number(name), Number(statFields(name)[1]))
    } catch {
      // gone
    }
  }
  const out = [root]
  for (let i = 0; i < out.length; i++) {
    for (const [p, pp] of parentOf) if (pp === out[i]) out.push(p)
  }
  return out
}

/**
 * read and write syscalls made so far by `pid` and its live descendants (from /proc/<pid>/io,
 * which counts every thread; 0 for a process that cannot be read).
 */
export function syscalls(pid) {
  let n = 0
  for (const p of treePids(pid)) {
    try {
      const io = readFileSync(`/proc/${p}/io`, 'utf8')
      const get = (k) => Number(new RegExp(`^${k}: (\\d+)`, 'm').exec(io)?.[1] ?? 0)
      n += get('syscr') + get('syscw')
    } catch {
      // gone
    }
  }
  return n
}

/** Resident set size of one process in KiB (from /proc/<pid>/statm). */
export function rssKiB(pid) {
  const f = readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')
  return Number(f[1]) * PAGE_KIB
}

process.on('exit', killAllChildren)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAllChildren()
    process.exit(130)
  })
}

// Squid (Debian's /usr/sbin/squid) as the corporate HTTP proxy of the browser tests: our own
// instance on an ephemeral loopback port, with a generated config, pid file and logs in a
// temporary directory, in the foreground (-N), never the system service.
import { spawn, spawnSync } from 'node:child_process'
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  watch,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, waitForOutput, type Teardown } from './broker.js'
import { stopProcess } from './process.js'

function findSquid(): string | undefined {
  for (const candidate of ['/usr/sbin/squid', '/usr/bin/squid']) {
    if (existsSync(candidate) && spawnSync(candidate, ['-v'], { stdio: 'ignore' }).status === 0) {
      return candidate
    }
  }
  if (process.env.CI === 'true') throw new Error('CI must have squid installed (.ci/run)')
  return undefined
}

export const SQUID = findSquid()

export interface SquidOptions {
  /**
   * Ports CONNECT may tunnel to. Stock squid.conf has `http_access deny CONNECT !SSL_ports` with
   * only 443 in SSL_ports (FIELD-NOTES 56); this config keeps that rule and adds these ports.
   */
  connectPorts: readonly number[]
  /**
   * squid's read_timeout, in seconds: a CONNECT tunnel in which neither side has sent anything
   * for this long is closed (tunnel.cc re-arms it on both connections on any activity either
   * way). Verified by test/browser-proxy.test.ts. The deadline is computed from squid's
   * whole-second clock and checked about once a second, so N seconds cuts after N-1 to N+1 s.
   */
  idleTimeoutSeconds?: number
}

export interface Squid {
  port: number
  /** http://127.0.0.1:PORT, for --proxy-server. */
  url: string
  /** The access log so far: one line per finished request; a tunnel is logged when it closes. */
  accessLog: () => string
  /** Resolves with the first access.log line matching, waiting up to `timeoutMs`. */
  waitForAccess: (match: RegExp, timeoutMs?: number) => Promise<string>
}

export async function startSquid(t: Teardown, options: SquidOptions): Promise<Squid> {
  if (SQUID === undefined) throw new Error('squid is not installed')
  const port = await freePort()
  // Run as root (CI), squid drops to its own user ("proxy") before it opens its logs.
  const dir = mkdtempSync(join(tmpdir(), 'drawbridge-squid-'))
  chmodSync(dir, 0o777)
  const accessLog = join(dir, 'access.log')
  const conf = join(dir, 'squid.conf')
  writeFileSync(
    conf,
    [
      `http_port 127.0.0.1:${port}`,
      `pid_filename ${join(dir, 'squid.pid')}`,
      `access_log stdio:${accessLog} squid`,
      `cache_log ${join(dir, 'cache.log')}`,
      `coredump_dir ${dir}`,
      'cache deny all',
      'cache_mem 8 MB',
      'netdb_filename none',
      'icp_port 0',
      'htcp_port 0',
      'snmp_port 0',
      'shutdown_lifetime 0 seconds',
      `acl SSL_ports port 443 ${options.connectPorts.join(' ')}`,
      'acl CONNECT method CONNECT',
      'http_access deny CONNECT !SSL_ports',
      'http_access allow localhost',
      'http_access deny all',
      ...(options.idleTimeoutSeconds === undefined
        ? []
        : [`read_timeout ${options.idleTimeoutSeconds} seconds`]),
      '',
    ].join('\n'),
  )
  // -d1: cache.log's level-1 lines on stderr too, among them the one saying squid listens.
  const child = spawn(SQUID, ['-N', '-d1', '-f', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
  t.teardown(async () => {
    await stopProcess(child)
    rmSync(dir, { recursive: true, force: true })
  })
  const accepting = new RegExp(
    `Accepting HTTP Socket connections at .*local=127\\.0\\.0\\.1:${port} `,
  )
  await waitForOutput(child, accepting, 10_000).catch((err: unknown) => {
    throw new Error(`squid did not start: ${String(err)}`)
  })
  const read = (): string => (existsSync(accessLog) ? readFileSync(accessLog, 'utf8') : '')
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    accessLog: read,
    waitForAccess: (match, timeoutMs = 5_000) =>
      new Promise((resolve, reject) => {
        const find = (): string | undefined =>
          read()
            .split('\n')
            .find((l) => match.test(l))
        const found = (line: string): void => {
          clearTimeout(deadline)
          watcher.close()
          resolve(line)
        }
        // Every write to access.log (or its creation) wakes this; the timer is only the deadline.
        const watcher = watch(dir, () => {
          const line = find()
          if (line !== undefined) found(line)
        })
        const deadline = setTimeout(() => {
          watcher.close()
          reject(new Error(`no access.log line matching ${String(match)}:\n${read()}`))
        }, timeoutMs)
        // Written before the watch began: already there.
        const line = find()
        if (line !== undefined) found(line)
      }),
  }
}

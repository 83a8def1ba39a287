// Mosquitto 2.1 (../shared/mosquitto-2.1/, beside the repository: see its README), the real
// reader of the PROXY header the gateway sends. Debian's Mosquitto is 2.0 and has no PROXY
// support. The folder is read-only: the broker runs from there with its config and log in a
// temporary directory. It needs libcjson1, which .ci/run installs.
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort, waitForOutput, type Teardown } from './broker.js'
import { tempDir } from './pki.js'
import { skipWithout } from './tools.js'

export const MOSQUITTO_21 = fileURLToPath(
  new URL('../../../shared/mosquitto-2.1/bin/mosquitto', import.meta.url),
)

/** Why it cannot run here ('' when it can): missing, or its libraries (libcjson1) are. */
function unavailable(): string {
  if (!existsSync(MOSQUITTO_21)) return `${MOSQUITTO_21} is missing`
  const probe = spawnSync(MOSQUITTO_21, ['-h'], { encoding: 'utf8', timeout: 10_000 })
  const output = `${probe.stdout}${probe.stderr}`
  if (/mosquitto version 2\.1/.test(output)) return ''
  return `${MOSQUITTO_21} does not run: ${output.trim().split('\n')[0] ?? String(probe.error)}`
}

const why = unavailable()

/** t.test's `skip` option for tests that need Mosquitto 2.1 (a failure under CI=true). */
export const skipWithoutMosquitto21 = (): false | string =>
  skipWithout(
    why === '' ? 'mosquitto 2.1' : `mosquitto 2.1 (${why})`,
    why === '',
    '../shared/mosquitto-2.1, with libcjson1 from .ci/run',
  )

export interface Mosquitto21 {
  /** The port of each listener, by the name given to startMosquitto21. */
  ports: Record<string, number>
  /** The broker's log file so far (log_type all). */
  log: () => string
  /** Lines of the log matching `pattern`. */
  lines: (pattern: RegExp) => string[]
  /** Resolves with the first `count` lines matching `pattern`, within `timeoutMs`. */
  waitForLines: (pattern: RegExp, count?: number, timeoutMs?: number) => Promise<string[]>
}

/**
 * Starts Mosquitto 2.1 with one loopback listener per entry of `listeners` (its name, and the
 * lines that follow its `listener` line), `global` lines before them (an acl_file, ...) and
 * every log type written to a file the test reads. Files it names (an acl_file) must be
 * readable by the user mosquitto: see writeForBroker.
 */
export async function startMosquitto21(
  t: Teardown,
  listeners: Record<string, readonly string[]>,
  global: readonly string[] = [],
): Promise<Mosquitto21> {
  const dir = tempDir(t, 'drawbridge-mosquitto21-')
  // Started as root (CI), Mosquitto drops to the user mosquitto before it opens its log file.
  chmodSync(dir, 0o755)
  const logFile = join(dir, 'mosquitto.log')
  writeFileSync(logFile, '', { mode: 0o666 })
  chmodSync(logFile, 0o666)
  const ports: Record<string, number> = {}
  const lines = ['persistence false', 'log_type all', `log_dest file ${logFile}`, 'log_dest stderr']
  lines.push('log_timestamp_format %H:%M:%S', ...global)
  for (const [name, settings] of Object.entries(listeners)) {
    const port = await freePort()
    ports[name] = port
    lines.push('', `listener ${port} 127.0.0.1`, ...settings)
  }
  const conf = join(dir, 'mosquitto.conf')
  writeFileSync(conf, lines.join('\n') + '\n')
  const child = spawn(MOSQUITTO_21, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    await exited
  })
  await waitForOutput(child, /mosquitto version \S+ running/, 5_000)
  const log = (): string => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '')
  const matching = (pattern: RegExp): string[] =>
    log()
      .split('\n')
      .filter((line) => pattern.test(line))
  return {
    ports,
    log,
    lines: matching,
    waitForLines: async (pattern, count = 1, timeoutMs = 5_000) => {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const found = matching(pattern)
        if (found.length >= count) return found.slice(0, count)
        if (Date.now() > deadline) {
          throw new Error(`${found.length} of ${count} log lines ${String(pattern)}:\n${log()}`)
        }
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    },
  }
}

/** Writes `text` to `path` in a directory Mosquitto can read after it dropped root. */
export function writeForBroker(dir: string, name: string, text: string): string {
  chmodSync(dir, 0o755)
  const path = join(dir, name)
  writeFileSync(path, text, { mode: 0o644 })
  return path
}

// Programs the tests drive as real peers (promtool, kubectl, systemd-analyze; mosquitto, squid and
// Chromium have their own helpers, which follow the same rule). .ci/run installs each one, so in
// CI (CI=true) a missing one is a broken set-up and fails the test file at once, as broker.ts does
// for mosquitto. On a developer's machine the tests that need it are reported as skipped, with the
// reason, so a missing tool never shows up as a pass.
import { spawnSync } from 'node:child_process'

/** Whether `command` runs here: spawnSync's error is set when it is not on PATH. */
export function runs(command: string, args: readonly string[]): boolean {
  return spawnSync(command, args, { stdio: 'ignore', timeout: 30_000 }).error === undefined
}

/**
 * t.test's `skip` option for a test that needs `tool`: false when it is installed, else the
 * reason. `installedBy` says where CI gets it, for the reason and for the CI failure.
 */
export function skipWithout(tool: string, installed: boolean, installedBy: string): false | string {
  if (installed) return false
  if (process.env.CI === 'true') throw new Error(`CI must have ${tool} installed (${installedBy})`)
  return `${tool} not installed here; CI has it (${installedBy})`
}

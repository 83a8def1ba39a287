// Real Chromium for the browser tests: Debian's /usr/bin/chromium driven by playwright-core
// (which never downloads a browser of its own). Present here -> the browser tests run; absent
// with CI=true -> this module throws (CI installs it, .ci/run); absent locally -> CHROMIUM is
// undefined and each browser test file reports itself skipped with NO_CHROMIUM as the reason
// (t.plan(0, reason)), never passed.
//
// The test CA is trusted the way a deployment trusts a private CA: imported into the NSS
// database Chromium reads on Linux ($HOME/.pki/nssdb), under a HOME made for this browser. No
// flag that ignores certificate errors is ever passed, so a certificate the CA did not sign is
// refused exactly as a user's browser would refuse it.
import { spawnSync } from 'node:child_process'
import { accessSync, constants, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { chromium, type BrowserContext, type Page } from 'playwright-core'
import type { Teardown } from './broker.js'

/** The absolute path of `name` on PATH (playwright wants an absolute executablePath). */
function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue
    const candidate = join(dir, name)
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {
      // not in this directory
    }
  }
  return undefined
}

function findChromium(): string | undefined {
  const browser = which('chromium')
  const certutil = which('certutil')
  if (browser !== undefined && certutil !== undefined) return browser
  if (process.env.CI === 'true') {
    throw new Error('CI must have chromium and libnss3-tools (certutil) installed (.ci/run)')
  }
  return undefined
}

/** Path of the Chromium binary, or undefined when it (or certutil) is not installed here. */
export const CHROMIUM = findChromium()

/** Why a browser test file skips itself when there is no Chromium to drive. */
export const NO_CHROMIUM = 'chromium or certutil not installed here; CI installs both (.ci/run)'

// Flags for a quiet, reproducible browser: no GPU, no QUIC (everything over TCP, so a proxy sees
// it), no first-run UI, no background traffic to Google services, no component updates.
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
] as const

export interface LaunchOptions {
  /** PEM CA certificates to trust for TLS servers (imported into the browser's NSS database). */
  trust?: readonly string[]
  /** http://127.0.0.1:PORT: every request, loopback included, goes through this proxy. */
  proxy?: string
}

/**
 * Starts Chromium with a fresh profile and a fresh NSS database under a temporary HOME, and
 * registers its shutdown (and the removal of both directories) with `t`.
 */
export async function launchChromium(t: Teardown, options: LaunchOptions = {}): Promise<Browser> {
  if (CHROMIUM === undefined) throw new Error(NO_CHROMIUM)
  const root = mkdtempSync(join(tmpdir(), 'drawbridge-chromium-'))
  const home = join(root, 'home')
  const nssdb = join(home, '.pki', 'nssdb')
  mkdirSync(nssdb, { recursive: true })
  certutil(['-d', `sql:${nssdb}`, '-N', '--empty-password'])
  for (const [i, pem] of (options.trust ?? []).entries()) {
    const file = join(root, `trust-${i}.crt`)
    writeFileSync(file, pem)
    // "C,,": a CA trusted to issue TLS server certificates, nothing else.
    certutil(['-d', `sql:${nssdb}`, '-A', '-t', 'C,,', '-n', `drawbridge-test-${i}`, '-i', file])
  }
  const args: string[] = [...CHROMIUM_FLAGS]
  if (options.proxy !== undefined) {
    // Chromium never sends loopback through a proxy unless told so: "<-loopback>" removes the
    // implicit bypass rule.
    args.push(`--proxy-server=${options.proxy}`, '--proxy-bypass-list=<-loopback>')
  }
  const context = await chromium
    .launchPersistentContext(join(root, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args,
      env: { ...process.env, HOME: home },
      timeout: 30_000,
      viewport: { width: 900, height: 900 },
    })
    .catch((err: unknown) => {
      rmSync(root, { recursive: true, force: true })
      throw err
    })
  t.teardown(async () => {
    await context.close()
    rmSync(root, { recursive: true, force: true })
  })
  return new Browser(context)
}

function certutil(args: string[]): void {
  const result = spawnSync('certutil', args, { encoding: 'utf8' })
  if (result.status !== 0) {
    throw new Error(`certutil ${args.join(' ')} failed: ${result.stderr || String(result.error)}`)
  }
}

/** One browser per test file; a fresh page per test, closed by its teardown. */
export class Browser {
  readonly context: BrowserContext

  constructor(context: BrowserContext) {
    this.context = context
  }

  async page(t: Teardown): Promise<Page> {
    const page = await this.context.newPage()
    page.setDefaultTimeout(15_000)
    t.teardown(() => page.close())
    return page
  }
}

/** Collects what `page` prints to its console (where Chromium explains a failed WebSocket). */
export function consoleOf(page: Page): string[] {
  const lines: string[] = []
  page.on('console', (message) => lines.push(message.text()))
  return lines
}

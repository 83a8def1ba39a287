#!/usr/bin/env node
// The only module that touches the process: argv, env, signals, exit codes. Exit codes:
// 0 ok, 1 could not start (port in use, broker not startable), 2 invalid configuration or usage.
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { loadConfig, type LoadedConfig } from './config/load.js'
import { ConfigError, DrawbridgeError } from './errors.js'
import { createLogger } from './log.js'

const USAGE = `Usage:
  drawbridge [--config FILE] [--profile development|production]
      Run the gateway.
  drawbridge check-config [--config FILE] [--profile NAME]
      Validate the configuration, print it resolved (secrets redacted), exit 0; or exit 2 naming
      the bad key.
  drawbridge --help | --version

Configuration: defaults < config/<profile>.json < --config FILE < DRAWBRIDGE_* env vars.
The profile is development unless --profile, DRAWBRIDGE_PROFILE or NODE_ENV=production says
otherwise. Every setting is listed in the README's configuration reference.
`

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string
  }
  return pkg.version
}

function fail(code: number, message: string): never {
  process.stderr.write(`drawbridge: ${message}\n`)
  process.exit(code)
}

function parseCommandLine(): { command: string; configFile?: string; profile?: string } {
  try {
    const { values, positionals } = parseArgs({
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        profile: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
    })
    if (values.help === true) {
      process.stdout.write(USAGE)
      process.exit(0)
    }
    if (values.version === true) {
      process.stdout.write(`${version()}\n`)
      process.exit(0)
    }
    if (positionals.length > 1) throw new Error(`unexpected argument: ${positionals[1] ?? ''}`)
    const command = positionals[0] ?? 'run'
    if (command !== 'run' && command !== 'check-config') {
      throw new Error(`unknown command: ${command}`)
    }
    return {
      command,
      ...(values.config !== undefined && { configFile: values.config }),
      ...(values.profile !== undefined && { profile: values.profile }),
    }
  } catch (err) {
    return fail(2, `${(err as Error).message}\n\n${USAGE}`)
  }
}

function load(configFile?: string, profile?: string): LoadedConfig {
  try {
    return loadConfig({ env: process.env, configFile, profile })
  } catch (err) {
    if (err instanceof ConfigError) return fail(2, `invalid config: ${err.message}`)
    throw err
  }
}

async function run(loaded: LoadedConfig): Promise<void> {
  const { config } = loaded
  const log = createLogger(config.log.level)
  for (const warning of loaded.warnings) log.warn(warning)
  log.info({ version: version(), node: process.version, profile: config.profile }, 'starting')

  // Loaded here, not at the top: check-config, --help and --version need neither the gateway
  // nor prom-client (which takes a noticeable part of start-up).
  const { startGateway } = await import('./gateway.js')
  let gateway
  try {
    gateway = await startGateway(config, { log })
  } catch (err) {
    if (err instanceof DrawbridgeError) {
      log.fatal({ code: err.code }, err.message)
      return fail(1, err.message)
    }
    throw err
  }

  let signals = 0
  const shutdown = (signal: NodeJS.Signals): void => {
    // Readiness first, before anything else: load balancers stop sending new clients while the
    // open ones are still being served.
    gateway.drain()
    signals++
    if (signals > 1) {
      log.warn({ signal }, 'second signal: exiting without waiting for connections')
      process.exit(1)
    }
    log.info({ signal, graceMs: config.shutdown.grace }, 'shutting down')
    void gateway.close().then(() => process.exit(0))
  }
  process.on('SIGTERM', shutdown)
  process.on('SIGINT', shutdown)
}

const { command, configFile, profile } = parseCommandLine()
const loaded = load(configFile, profile)
if (command === 'check-config') {
  process.stdout.write(`${JSON.stringify(loaded.redacted(), null, 2)}\n`)
  for (const warning of loaded.warnings) process.stderr.write(`drawbridge: warning: ${warning}\n`)
} else {
  await run(loaded)
}

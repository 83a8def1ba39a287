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
  drawbridge certs init [--dir certs] [--host NAME]...
      Development certificates: a CA (kept if DIR has one), a server certificate for localhost,
      127.0.0.1, ::1 and each --host, and a client certificate (PEM + client.p12).
  drawbridge certs client NAME [--dir certs] [--password P12PASS]
      Another client certificate signed by the development CA: NAME.crt, NAME.key, NAME.p12.
  drawbridge certs show FILE
      Subject, SANs, issuer, serial, validity and SHA-256 fingerprint of each certificate in FILE.
  drawbridge --help | --version

Signals: SIGTERM/SIGINT stop gracefully; SIGHUP reloads the TLS material and re-reads --config
(changed tls.* paths take effect; other changes need a restart).

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

interface CommandLine {
  command: string
  configFile?: string
  profile?: string
  /** certs: subcommand and its argument (NAME or FILE). */
  args: string[]
  dir: string
  hosts: string[]
  password: string
}

function parseCommandLine(): CommandLine {
  try {
    const { values, positionals } = parseArgs({
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        profile: { type: 'string' },
        dir: { type: 'string' },
        host: { type: 'string', multiple: true },
        password: { type: 'string' },
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
    const command = positionals[0] ?? 'run'
    const args = positionals.slice(1)
    if (command === 'certs') checkCertsArgs(args)
    else if (command !== 'run' && command !== 'check-config') {
      throw new Error(`unknown command: ${command}`)
    } else if (args.length > 0) throw new Error(`unexpected argument: ${args[0] ?? ''}`)
    return {
      command,
      args,
      dir: values.dir ?? 'certs',
      hosts: values.host ?? [],
      password: values.password ?? '',
      ...(values.config !== undefined && { configFile: values.config }),
      ...(values.profile !== undefined && { profile: values.profile }),
    }
  } catch (err) {
    return fail(2, `${(err as Error).message}\n\n${USAGE}`)
  }
}

function checkCertsArgs(args: string[]): void {
  const [sub, ...rest] = args
  const arity: Record<string, number> = { init: 0, client: 1, show: 1 }
  const wanted = sub === undefined ? undefined : arity[sub]
  if (wanted === undefined) throw new Error(`certs needs init, client NAME or show FILE`)
  if (rest.length !== wanted) {
    throw new Error(`certs ${sub ?? ''} takes ${wanted === 0 ? 'no argument' : 'one argument'}`)
  }
}

async function certs(cl: CommandLine): Promise<void> {
  const { addClientCert, initDevCerts, showCertFile } = await import('./dev/certs.js')
  const [sub, arg = ''] = cl.args
  try {
    if (sub === 'show') {
      process.stdout.write(`${showCertFile(arg)}\n`)
      return
    }
    const written =
      sub === 'init'
        ? initDevCerts(cl.dir, cl.hosts).written
        : addClientCert(cl.dir, arg, cl.password).written
    process.stdout.write(`${written.map((file) => `wrote ${file}`).join('\n')}\n`)
    if (sub === 'init') {
      process.stdout.write(
        `Trust ${cl.dir}/ca.crt as a CA in your browser or OS keychain; import client.p12 (empty password) for client certificates.\n`,
      )
    }
  } catch (err) {
    if (err instanceof DrawbridgeError) fail(1, err.message)
    throw err
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

async function run(loaded: LoadedConfig, configFile?: string, profile?: string): Promise<void> {
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
    log.info(
      { signal, graceMs: config.shutdown.grace, spreadMs: config.shutdown.spread },
      'shutting down',
    )
    void gateway.close().then(() => process.exit(0))
  }
  process.on('SIGTERM', shutdown)
  process.on('SIGINT', shutdown)
  // SIGHUP: read the configuration again (env and files as at start) and reload TLS material.
  // A configuration that no longer validates is reported and the running one kept.
  process.on('SIGHUP', () => {
    log.info({ configFile }, 'SIGHUP: reloading')
    let next
    try {
      next = loadConfig({ env: process.env, configFile, profile }).config
    } catch (err) {
      log.error({ err: (err as Error).message }, 'SIGHUP: configuration invalid; nothing reloaded')
      return
    }
    gateway.reload(next)
  })
}

const commandLine = parseCommandLine()
const { command, configFile, profile } = commandLine
if (command === 'certs') {
  await certs(commandLine)
  process.exit(0)
}
const loaded = load(configFile, profile)
if (command === 'check-config') {
  process.stdout.write(`${JSON.stringify(loaded.redacted(), null, 2)}\n`)
  for (const warning of loaded.warnings) process.stderr.write(`drawbridge: warning: ${warning}\n`)
} else {
  await run(loaded, configFile, profile)
}

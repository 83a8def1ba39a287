// Resolves the configuration: schema defaults < profile file (config/<profile>.json) <
// --config file < DRAWBRIDGE_* env vars. Env and file are injected so tests never touch
// process.env.
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import convict from 'convict'
import { ConfigError } from '../errors.js'
import { mqttStringProblem } from '../mqtt/encode.js'
import { parseCidr, parseHostPort, parseRoutes } from './formats.js'
import { compileOrigins } from './origin.js'
import {
  schema,
  TOKEN_ALGORITHMS,
  TOKEN_FROM_ENTRIES,
  type Config,
  type RawConfig,
  type TokenFromEntry,
} from './schema.js'

/** config/ at the package root, from src/config or dist/config alike. */
export const PROFILE_DIR = fileURLToPath(new URL('../../config/', import.meta.url))

export interface LoadOptions {
  env?: NodeJS.ProcessEnv
  /** A JSON file given with --config. */
  configFile?: string | undefined
  /** Overrides DRAWBRIDGE_PROFILE and NODE_ENV. */
  profile?: string | undefined
}

export interface LoadedConfig {
  config: Config
  /** JSON of the resolved config with secrets redacted, for check-config and the start log. */
  redacted: () => Record<string, unknown>
  /** Things worth a warning log line that do not stop start-up. */
  warnings: string[]
}

export function loadConfig(options: LoadOptions = {}): LoadedConfig {
  const env = options.env ?? {}
  const profile =
    options.profile ??
    env.DRAWBRIDGE_PROFILE ??
    (env.NODE_ENV === 'production' ? 'production' : 'development')

  let conf: convict.Config<RawConfig>
  try {
    // The resolved profile goes in as its env var: convict re-applies env over set().
    conf = convict<RawConfig>(schema, {
      env: { ...env, DRAWBRIDGE_PROFILE: profile },
      args: [],
    })
    const profileFile = `${PROFILE_DIR}${profile}.json`
    if (existsSync(profileFile)) conf.loadFile(profileFile)
    if (options.configFile !== undefined) {
      if (!existsSync(options.configFile)) {
        throw new ConfigError('--config', `file not found: ${options.configFile}`)
      }
      conf.loadFile(options.configFile)
    }
    conf.validate({ allowed: 'strict' })
  } catch (err) {
    throw toConfigError(err)
  }

  const config = parseConfig(conf.getProperties())
  checkCrossKeyRules(config)
  return {
    config: deepFreeze(config),
    redacted: () => JSON.parse(conf.toString()) as Record<string, unknown>,
    warnings: unknownEnvWarnings(env),
  }
}

/** The typed Config from the strings convict validated (redacted() keeps showing those). */
function parseConfig(raw: RawConfig): Config {
  return {
    ...raw,
    listen: {
      ...raw.listen,
      proxyProtocolFrom: parsed('listen.proxyProtocolFrom', () =>
        raw.listen.proxyProtocolFrom.map(parseCidr),
      ),
    },
    ws: {
      ...raw.ws,
      allowedOrigins: parsed('ws.allowedOrigins', () => compileOrigins(raw.ws.allowedOrigins)),
    },
    upstream: {
      ...raw.upstream,
      brokers: parsed('upstream.brokers', () => raw.upstream.brokers.map(parseHostPort)),
    },
    http: {
      ...raw.http,
      trustedProxies: parsed('http.trustedProxies', () => raw.http.trustedProxies.map(parseCidr)),
      routes: parsed('http.routes', () => parseRoutes(raw.http.routes)),
    },
    auth: {
      ...raw.auth,
      tokenFrom: parsed('auth.tokenFrom', () => raw.auth.tokenFrom.map(tokenFromEntry)),
    },
  }
}

function tokenFromEntry(entry: string): TokenFromEntry {
  const found = TOKEN_FROM_ENTRIES.find((known) => known === entry.trim())
  if (found === undefined) {
    throw new Error(`"${entry}" is not one of ${TOKEN_FROM_ENTRIES.join(', ')}`)
  }
  return found
}

// The formats ran the same parsers on every entry already, so this throws only if the two ever
// disagree; the value is then refused with its key, never dropped.
function parsed<T>(key: string, parse: () => T): T {
  try {
    return parse()
  } catch (err) {
    throw new ConfigError(key, err instanceof Error ? err.message : String(err))
  }
}

function checkCrossKeyRules(config: Config): void {
  if (config.upstream.brokers.length === 0) {
    throw new ConfigError(
      'upstream.brokers',
      'at least one broker is required (e.g. DRAWBRIDGE_UPSTREAM_BROKERS=broker:1883)',
    )
  }
  const zeroPort = config.upstream.brokers.findIndex((b) => b.port === 0)
  if (zeroPort > 0 || (zeroPort === 0 && !config.upstream.embedded)) {
    throw new ConfigError('upstream.brokers', 'port 0 is only allowed for the embedded broker')
  }
  if (config.profile === 'production' && config.upstream.embedded) {
    throw new ConfigError('upstream.embedded', 'must be false in the production profile')
  }
  if (config.ws.requireSubprotocol && config.ws.subprotocols.length === 0) {
    throw new ConfigError('ws.subprotocols', 'is empty while ws.requireSubprotocol is true')
  }
  if (config.ws.pingInterval > 0 && config.ws.pongTimeout === 0) {
    throw new ConfigError('ws.pongTimeout', 'must be above 0 while ws.pingInterval is on')
  }
  if (config.listen.proxyProtocol !== 'off' && config.listen.proxyProtocolFrom.length === 0) {
    throw new ConfigError(
      'listen.proxyProtocolFrom',
      `is empty while listen.proxyProtocol is ${config.listen.proxyProtocol}: list the load balancers allowed to send the PROXY header`,
    )
  }
  checkUpstreamModeRules(config)
  checkRouteRules(config)
  checkTlsRules(config)
  checkIdentityRules(config)
  checkAuthRules(config)
  checkPermissionsRules(config)
  checkShutdownRules(config)
  checkLimitRules(config)
}

// Packets are counted by the framer: without it there are only bytes.
function checkLimitRules({ limits, mqtt }: Config): void {
  if (limits.messageRate > 0 && !mqtt.inspect) {
    throw new ConfigError(
      'limits.messageRate',
      'needs mqtt.inspect=true (packets are counted by the MQTT framer; limits.byteRate works without it)',
    )
  }
  if (limits.ipv6Prefix < 1 || limits.ipv6Prefix > 128) {
    throw new ConfigError('limits.ipv6Prefix', `must be 1 to 128 (got ${limits.ipv6Prefix})`)
  }
  if (limits.trackedClients === 0) {
    throw new ConfigError('limits.trackedClients', 'must be at least 1')
  }
}

// auth.mode=jwt: a key to check against, algorithms that can be checked (never none), and the
// framer for whatever is read from the CONNECT (the password, the username and client id).
function checkAuthRules({ auth, mqtt, tls }: Config): void {
  for (const alg of auth.algorithms) {
    if (alg.trim().toLowerCase() === 'none') {
      throw new ConfigError('auth.algorithms', 'must not list none (unsigned tokens)')
    }
    if (!TOKEN_ALGORITHMS.includes(alg.trim())) {
      throw new ConfigError(
        'auth.algorithms',
        `"${alg}" is not one of ${TOKEN_ALGORITHMS.join(', ')}`,
      )
    }
  }
  if (auth.mode === 'none') return
  if (auth.tokenFrom.length === 0) {
    throw new ConfigError('auth.tokenFrom', 'is empty while auth.mode is jwt')
  }
  if (auth.algorithms.length === 0) {
    throw new ConfigError('auth.algorithms', 'is empty while auth.mode is jwt')
  }
  if (auth.jwksUrl === '' && auth.keys.length === 0 && auth.secretFile === '') {
    throw new ConfigError(
      'auth.jwksUrl',
      'auth.mode=jwt needs a key: auth.jwksUrl, auth.keys or auth.secretFile',
    )
  }
  if (auth.jwksUrl !== '' && !/^https:\/\/[^/\s]+/i.test(auth.jwksUrl)) {
    throw new ConfigError('auth.jwksUrl', 'must be an https:// URL')
  }
  if (auth.secretFile !== '' && !auth.algorithms.some((alg) => alg.startsWith('HS'))) {
    throw new ConfigError(
      'auth.algorithms',
      'lists no HS256/HS384/HS512 while auth.secretFile is set',
    )
  }
  if (!mqtt.inspect) {
    if (auth.tokenFrom.includes('password')) {
      throw new ConfigError(
        'auth.tokenFrom',
        'password needs mqtt.inspect=true (the token is read from the CONNECT)',
      )
    }
    for (const key of ['usernameClaim', 'clientIdPrefixClaim'] as const) {
      if (auth[key] !== '') {
        throw new ConfigError(
          `auth.${key}`,
          'needs mqtt.inspect=true (the CONNECT is read and changed), or set it empty',
        )
      }
    }
  }
  if (auth.allowClientCert && (!tls.enabled || tls.clientAuth === 'none')) {
    throw new ConfigError(
      'auth.allowClientCert',
      'needs tls.enabled and tls.clientAuth=optional or required (no certificate is asked for)',
    )
  }
}

function checkShutdownRules({ shutdown }: Config): void {
  // The grace counts from the start of the shutdown: a spread as long as it would leave the
  // last clients no time to close before they are cut.
  if (shutdown.spread > 0 && shutdown.spread >= shutdown.grace) {
    throw new ConfigError(
      'shutdown.spread',
      `(${shutdown.spread} ms) must be less than shutdown.grace (${shutdown.grace} ms): the grace counts from the start of the shutdown, spread included`,
    )
  }
  const problem = mqttStringProblem(shutdown.serverReference)
  if (problem !== undefined) {
    throw new ConfigError(
      'shutdown.serverReference',
      `${problem}; it is sent as an MQTT UTF-8 string`,
    )
  }
}

/** What the diagnostics page serves (src/edge/diagnostics.ts) when http.diagnostics is on. */
const DIAGNOSTICS_PATHS = ['/', '/diagnostics.js', '/diagnostics.json']

// Every request path has one owner: a route may not cover the MQTT endpoint or the diagnostics
// page (they would win anyway, but a route that can never see some of its paths is a mistake).
function checkRouteRules({ http, ws }: Config): void {
  for (const { prefix } of http.routes) {
    // The page first: "/", the one prefix that covers it, covers every ws.path too.
    const page = http.diagnostics
      ? DIAGNOSTICS_PATHS.find((path) => path.startsWith(prefix))
      : undefined
    if (page !== undefined) {
      throw new ConfigError(
        'http.routes',
        `prefix ${prefix} covers the diagnostics page (${page}, http.diagnostics); give the route a prefix of its own, like /app/`,
      )
    }
    if (ws.path.startsWith(prefix)) {
      throw new ConfigError(
        'http.routes',
        `prefix ${prefix} covers the MQTT endpoint ws.path (${ws.path}); give the route a prefix of its own, like /app/`,
      )
    }
  }
}

// connect mode holds the CONNECT, so it needs the framer that reads it; affinity orders the
// brokers from that CONNECT, so it needs connect mode.
function checkUpstreamModeRules({ upstream, mqtt }: Config): void {
  if (upstream.connectOn === 'connect' && !mqtt.inspect) {
    throw new ConfigError(
      'upstream.connectOn',
      'connect needs mqtt.inspect=true (the CONNECT is read before the broker is dialled)',
    )
  }
  if (upstream.affinity !== 'none' && upstream.connectOn !== 'connect') {
    throw new ConfigError(
      'upstream.affinity',
      `${upstream.affinity} needs upstream.connectOn=connect (the broker is picked from the CONNECT)`,
    )
  }
}

function checkTlsRules({ tls, tcp, profile }: Config): void {
  if (tcp.enabled && !tls.enabled) {
    throw new ConfigError('tcp.enabled', 'needs tls.enabled (the mqtts listener is TLS only)')
  }
  if (profile === 'production' && tls.generateDevCerts) {
    throw new ConfigError('tls.generateDevCerts', 'must be false in the production profile')
  }
  if (!tls.enabled) return
  for (const key of ['cert', 'key'] as const) {
    if (tls[key] === '') {
      throw new ConfigError(
        `tls.${key}`,
        `is required while tls.enabled is true (DRAWBRIDGE_TLS_${key.toUpperCase()}=/path/to/file.pem)`,
      )
    }
  }
  if (tls.clientAuth !== 'none' && tls.ca === '') {
    throw new ConfigError('tls.ca', `is required while tls.clientAuth is ${tls.clientAuth}`)
  }
}

// The username is rewritten inside the CONNECT the framer reads, from the certificate TLS
// verified: without the framer there is no CONNECT to rewrite, and without TLS and client
// certificates every client would lose its username (a setting that can only be a mistake).
function checkIdentityRules({ tls, mqtt }: Config): void {
  if (tls.identityAs === 'none') return
  if (!mqtt.inspect) {
    throw new ConfigError(
      'tls.identityAs',
      'username needs mqtt.inspect=true (the username is rewritten in the CONNECT the framer reads)',
    )
  }
  if (!tls.enabled) {
    throw new ConfigError(
      'tls.identityAs',
      'username needs tls.enabled=true (on plain ws:// there is no client certificate)',
    )
  }
  if (tls.clientAuth === 'none') {
    throw new ConfigError(
      'tls.identityAs',
      'username needs tls.clientAuth=optional or required (with none no certificate is asked for)',
    )
  }
}

// The grants are applied to the topics the framer reads: without it nothing could be judged.
function checkPermissionsRules({ auth, mqtt }: Config): void {
  if (auth.permissionsClaim !== '' && auth.mode !== 'jwt') {
    throw new ConfigError(
      'auth.permissionsClaim',
      'needs auth.mode=jwt (the grants come from the token; without one nothing is granted)',
    )
  }
  if (auth.permissionsClaim !== '' && !mqtt.inspect) {
    throw new ConfigError(
      'auth.permissionsClaim',
      'needs mqtt.inspect=true (PUBLISH topics and SUBSCRIBE filters are read by the framer)',
    )
  }
}

// Names Kubernetes injects for a Service called "drawbridge"; they are not typos.
const KUBERNETES_SERVICE_ENV = /^DRAWBRIDGE_(PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?|SERVICE_\w+)$/

function unknownEnvWarnings(env: NodeJS.ProcessEnv): string[] {
  const known = new Set<string>()
  collectEnvNames(schema, known)
  return Object.keys(env)
    .filter((name) => name.startsWith('DRAWBRIDGE_') && !known.has(name))
    .filter((name) => !KUBERNETES_SERVICE_ENV.test(name))
    .map((name) => `${name} is set but is not a Drawbridge setting (ignored; typo?)`)
}

/** Walks the schema tree, calling `visit` for every leaf key with its dotted path. */
export function forEachSchemaKey(
  node: Record<string, unknown>,
  visit: (path: string, spec: Record<string, unknown>) => void,
  prefix = '',
): void {
  for (const [name, child] of Object.entries(node)) {
    const path = prefix === '' ? name : `${prefix}.${name}`
    const spec = child as Record<string, unknown>
    if ('doc' in spec && 'default' in spec) visit(path, spec)
    else forEachSchemaKey(spec, visit, path)
  }
}

function collectEnvNames(node: Record<string, unknown>, into: Set<string>): void {
  forEachSchemaKey(node, (_path, spec) => {
    if (typeof spec.env === 'string') into.add(spec.env)
  })
}

// convict reports every problem in one Error, one per line:
//   upstream.brokers: "b" is not host:port (IPv6 as [::1]:1883): value was ["a:1","b"]
// Start-up wants the first one, with the key it names.
function toConfigError(err: unknown): ConfigError {
  if (err instanceof ConfigError) return err
  const message = err instanceof Error ? err.message : String(err)
  const firstLine = message.split('\n').find((line) => line.trim() !== '') ?? message
  const undeclared = /configuration param '([\w.]+)' not declared/.exec(firstLine)
  if (undeclared) return new ConfigError(undeclared[1] ?? '', 'is not a Drawbridge setting')
  const match = /^\s*([\w.]+): (.*)$/.exec(firstLine)
  if (match) return new ConfigError(match[1] ?? '', match[2] ?? '')
  return new ConfigError('config', firstLine.trim())
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const child of Object.values(value)) deepFreeze(child)
    Object.freeze(value)
  }
  return value
}

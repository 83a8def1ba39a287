// The keys token signatures are checked against: files (auth.keys, auth.secretFile), read at
// start and again on SIGHUP or a change in their directories, and a remote JWK Set
// (auth.jwksUrl) fetched over HTTPS and cached. A read that fails keeps what was loaded before,
// as a failed TLS reload keeps the served certificate.
//
// The remote set is fetched by hand (node:https) rather than with jose's createRemoteJWKSet:
// that one cannot be given a CA file, and its cache has no notion of "the endpoint is down,
// go on with what we have", which is what an edge gateway needs.
import { createPublicKey } from 'node:crypto'
import { readFileSync, watch, type FSWatcher } from 'node:fs'
import https from 'node:https'
import { dirname } from 'node:path'
import {
  createLocalJWKSet,
  errors,
  type JSONWebKeySet,
  type JWK,
  type JWSHeaderParameters,
} from 'jose'
import type { Config } from '../config/schema.js'
import { ConfigError } from '../errors.js'
import type { Logger } from '../log.js'

/** How long one fetch of auth.jwksUrl may take. */
export const JWKS_FETCH_TIMEOUT_MS = 5_000
/** Largest JWK Set accepted from auth.jwksUrl. */
const MAX_JWKS_BYTES = 1024 * 1024
/** Quiet time after a change to a key file before the files are read again. */
const RELOAD_DEBOUNCE_MS = 200

/** No key can check the token: the reason for the refusal. */
export class NoKeyError extends Error {
  /** unknown_key: keys are there, none with that kid/type; keys_unavailable: none at all. */
  readonly reason: 'unknown_key' | 'keys_unavailable'

  constructor(reason: 'unknown_key' | 'keys_unavailable', message: string) {
    super(message)
    this.reason = reason
  }
}

type KeySet = ReturnType<typeof createLocalJWKSet>
/** What jose's key lookups hand back: a key for the signature check. */
export type VerificationKey = Awaited<ReturnType<KeySet>> | Uint8Array

export interface KeyStoreOptions {
  auth: Config['auth']
  log: Logger
}

export class KeyStore {
  readonly #auth: Config['auth']
  readonly #log: Logger
  /** From auth.keys; undefined when none are configured or none could be read yet. */
  #fileKeys: KeySet | undefined
  /** The auth.keys without a kid (PEM files): tried for any token whose alg they fit. */
  #kidlessKeys: KeySet | undefined
  #fileKeyCount = 0
  #secret: Uint8Array | undefined
  /** The last JWK Set fetched from auth.jwksUrl. */
  #remote: KeySet | undefined
  #remoteKids: string[] = []
  #lastFetch = -Infinity
  #fetching: Promise<void> | undefined
  #watchers: FSWatcher[] = []
  #debounce: NodeJS.Timeout | undefined
  readonly #ca: Buffer | undefined

  constructor({ auth, log }: KeyStoreOptions) {
    this.#auth = auth
    this.#log = log.child({ component: 'auth' })
    this.#ca = auth.jwksCa === '' ? undefined : readFileSync(auth.jwksCa)
    this.#load('start', true)
    this.#watch()
  }

  /** Fetches the JWK Set once at start; the gateway starts whether or not the endpoint answers. */
  async start(): Promise<void> {
    if (this.#auth.jwksUrl !== '') await this.#refetch()
  }

  /** SIGHUP or a file change: auth.keys and auth.secretFile read again. */
  reload(cause: string): void {
    this.#load(cause, false)
  }

  // At start a file that cannot be read fails start-up; later, the keys loaded before stay.
  #load(cause: string, strict: boolean): void {
    const { keys, secretFile } = this.#auth
    if (keys.length > 0) {
      try {
        const set: JSONWebKeySet = { keys: keys.flatMap(readKeyFile) }
        this.#fileKeys = createLocalJWKSet(set)
        this.#kidlessKeys = createLocalJWKSet({
          keys: set.keys.filter((key) => key.kid === undefined),
        })
        this.#fileKeyCount = set.keys.length
        this.#log.info({ cause, keys: set.keys.length, kids: kidsOf(set) }, 'token keys loaded')
      } catch (err) {
        if (strict) throw new ConfigError('auth.keys', messageOf(err))
        this.#log.error(
          { cause, err: messageOf(err) },
          'token keys not reloaded; keeping the keys loaded before',
        )
      }
    }
    if (secretFile !== '') {
      try {
        const text = readFileSync(secretFile)
          .toString('utf8')
          .replace(/\r?\n$/, '')
        if (text === '') throw new Error(`${secretFile} is empty`)
        this.#secret = new TextEncoder().encode(text)
        this.#log.info({ cause }, 'token secret loaded')
      } catch (err) {
        if (strict) throw new ConfigError('auth.secretFile', messageOf(err))
        this.#log.error(
          { cause, err: messageOf(err) },
          'token secret not reloaded; keeping the one loaded before',
        )
      }
    }
  }

  close(): void {
    clearTimeout(this.#debounce)
    for (const watcher of this.#watchers) watcher.close()
    this.#watchers = []
  }

  /**
   * The key for a token with `header`, for jose's jwtVerify. Throws NoKeyError when there is
   * none; fetches the JWK Set again for a kid it does not know (at most every
   * auth.jwksRefetchInterval).
   */
  readonly keyFor = async (header: JWSHeaderParameters): Promise<VerificationKey> => {
    const alg = header.alg ?? ''
    if (alg.startsWith('HS')) {
      if (this.#secret === undefined) {
        throw new NoKeyError('unknown_key', 'no shared secret is configured for HS tokens')
      }
      return this.#secret
    }
    const fromFile =
      (await tryKeySet(this.#fileKeys, header)) ??
      (header.alg === undefined
        ? undefined
        : await tryKeySet(this.#kidlessKeys, { alg: header.alg }))
    if (fromFile !== undefined) return fromFile
    if (this.#auth.jwksUrl === '') throw this.#noKey(header)
    const cached = await tryKeySet(this.#remote, header)
    if (cached !== undefined) return cached
    if (performance.now() - this.#lastFetch >= this.#auth.jwksRefetchInterval) {
      await this.#refetch()
      const fetched = await tryKeySet(this.#remote, header)
      if (fetched !== undefined) return fetched
    }
    throw this.#noKey(header)
  }

  #noKey(header: JWSHeaderParameters): NoKeyError {
    if (this.#remote === undefined && this.#fileKeyCount === 0) {
      return new NoKeyError(
        'keys_unavailable',
        this.#auth.jwksUrl === ''
          ? 'no token keys could be loaded'
          : 'the token keys (auth.jwksUrl) could not be fetched yet',
      )
    }
    const kid = header.kid === undefined ? '' : ` with kid ${header.kid}`
    return new NoKeyError('unknown_key', `no key${kid} for ${header.alg ?? 'its alg'}`)
  }

  // One fetch at a time: concurrent clients with a new kid wait for the same one.
  #refetch(): Promise<void> {
    this.#fetching ??= this.#fetch().finally(() => {
      this.#fetching = undefined
    })
    return this.#fetching
  }

  async #fetch(): Promise<void> {
    this.#lastFetch = performance.now()
    const url = this.#auth.jwksUrl
    try {
      const set = parseKeySet(await getJson(url, this.#ca))
      this.#remote = createLocalJWKSet(set)
      const kids = kidsOf(set)
      if (kids.join() !== this.#remoteKids.join()) {
        this.#log.info({ url, keys: set.keys.length, kids }, 'token key set fetched')
      }
      this.#remoteKids = kids
    } catch (err) {
      this.#log.warn(
        { url, err: messageOf(err), cached: this.#remote !== undefined },
        this.#remote === undefined
          ? 'token key set fetch failed; no keys yet'
          : 'token key set fetch failed; using the cached keys',
      )
    }
  }

  // Like TLS material: the directories are watched, since Secret updates and editors replace
  // files by rename.
  #watch(): void {
    const files = [...this.#auth.keys, this.#auth.secretFile].filter((file) => file !== '')
    for (const dir of new Set(files.map((file) => dirname(file)))) {
      try {
        const watcher = watch(dir, { persistent: false }, () => this.#schedule())
        watcher.on('error', (err) => {
          this.#log.warn({ dir, err: err.message }, 'key file watch failed; SIGHUP still reloads')
        })
        this.#watchers.push(watcher)
      } catch (err) {
        this.#log.warn(
          { dir, err: messageOf(err) },
          'cannot watch key directory; SIGHUP still reloads',
        )
      }
    }
  }

  #schedule(): void {
    clearTimeout(this.#debounce)
    this.#debounce = setTimeout(() => this.reload('file change'), RELOAD_DEBOUNCE_MS)
    this.#debounce.unref()
  }
}

/** A match from `set`, or undefined when it has no key for the header (other faults throw). */
async function tryKeySet(
  set: KeySet | undefined,
  header: JWSHeaderParameters,
): Promise<VerificationKey | undefined> {
  if (set === undefined) return undefined
  try {
    return await set(header, { payload: '', signature: '' })
  } catch (err) {
    if (err instanceof errors.JWKSNoMatchingKey) return undefined
    throw err
  }
}

/** The public keys of one auth.keys file: PEM (one or more), a JWK, or a JWK Set. */
function readKeyFile(file: string): JWK[] {
  const text = readFileSync(file, 'utf8')
  if (text.trimStart().startsWith('{')) {
    const json = JSON.parse(text) as unknown
    const keys = isRecord(json) && Array.isArray(json.keys) ? (json.keys as unknown[]) : [json]
    return keys.map((key) => publicJwk(key, file))
  }
  const blocks = text.match(/-----BEGIN [^-]+-----[\s\S]+?-----END [^-]+-----/g) ?? []
  if (blocks.length === 0) throw new Error(`${file}: no PEM block and not JSON`)
  return blocks.map((pem) => createPublicKey(pem).export({ format: 'jwk' }) as JWK)
}

function publicJwk(key: unknown, where: string): JWK {
  if (!isRecord(key) || typeof key.kty !== 'string') throw new Error(`${where}: not a JWK`)
  // A private JWK is accepted for its public part only; jose would refuse it as is.
  const pub = Object.fromEntries(
    Object.entries(key).filter(([member]) => !PRIVATE_MEMBERS.includes(member)),
  )
  return pub
}

/** The members of a private JWK (RFC 7518 6.2.2, 6.3.2, 6.2.2, 6.4). */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']

function parseKeySet(json: unknown): JSONWebKeySet {
  if (!isRecord(json) || !Array.isArray(json.keys)) throw new Error('not a JWK Set (no keys)')
  return { keys: (json.keys as unknown[]).map((key) => publicJwk(key, 'JWK Set')) }
}

function kidsOf(set: JSONWebKeySet): string[] {
  return set.keys.map((key) => key.kid ?? '').filter((kid) => kid !== '')
}

function getJson(url: string, ca: Buffer | undefined): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = https.get(
      url,
      {
        ...(ca && { ca }),
        // No kept-alive socket to the key server between fetches (minutes apart at least).
        agent: false,
        timeout: JWKS_FETCH_TIMEOUT_MS,
        headers: { accept: 'application/json' },
      },
      (res) => {
        if (res.statusCode !== 200) {
          res.resume()
          reject(new Error(`HTTP ${res.statusCode ?? '?'}`))
          return
        }
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (chunk: Buffer) => {
          size += chunk.length
          if (size > MAX_JWKS_BYTES) req.destroy(new Error('JWK Set over 1 MiB'))
          else chunks.push(chunk)
        })
        res.on('end', () => {
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')))
          } catch (err) {
            reject(err instanceof Error ? err : new Error(String(err)))
          }
        })
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error(`no answer within ${JWKS_FETCH_TIMEOUT_MS} ms`)))
    req.on('error', reject)
  })
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

// TLS for the public listeners: material from files (validated before it is ever served), the
// client-certificate policy, and hot reload with server.setSecureContext() so new handshakes
// see new material while open connections keep theirs (FIELD-NOTES 36-38: brokers that served
// an expired certificate until restart, or dropped every connection to reload).
//
// Client certificates are requested with rejectUnauthorized=false and judged here, in
// 'secureConnection', so every refusal has a reason (no_cert, unknown_ca, expired, revoked...)
// that is logged and counted, and an untrusted certificate in `optional` mode is refused rather
// than silently treated as "no certificate" (FIELD-NOTES 33).
import { createHash, createPrivateKey, randomBytes, type X509Certificate } from 'node:crypto'
import { readFileSync, realpathSync, watch, type FSWatcher } from 'node:fs'
import { dirname, resolve } from 'node:path'
import tls from 'node:tls'
import type { ClientCertInfo, ConnectionTls } from '../bridge/connection.js'
import type { ClientAuth, TlsConfig } from '../config/schema.js'
import { TlsMaterialError } from '../errors.js'
import { parseRevocations, type Revocations } from './crl.js'
import type { Logger } from '../log.js'
import { peerAddress } from './client-address.js'
import { parsePemCerts } from './pem.js'

const DAY_MS = 86_400_000

export type TlsListener = 'wss' | 'mqtts'

/** Why a client certificate was refused; a closed set, so it can label a counter. */
export type ClientRefusalReason =
  'no_cert' | 'unknown_ca' | 'expired' | 'not_yet_valid' | 'revoked' | 'untrusted'

/**
 * What the TLS layer reports for counting. Metrics are wired to this hook by the gateway's
 * embedder; every event is also logged here with its detail.
 */
export type TlsEvent =
  | { type: 'handshake_failed'; listener: TlsListener; reason: string }
  | { type: 'client_refused'; listener: TlsListener; reason: ClientRefusalReason }
  | { type: 'reload'; result: 'ok' | 'failed' | 'unchanged'; cause: string; reason?: string }

export type TlsEventHook = (event: TlsEvent) => void

/** The served certificate, as logged at start and on every reload. */
export interface ServedCert {
  subject: string
  issuer: string
  serial: string
  fingerprint256: string
  validTo: string
  daysLeft: number
}

export interface TlsMaterial {
  /** What createSecureContext()/setSecureContext() get. */
  context: tls.SecureContextOptions
  served: ServedCert
  /** What tls.crl revokes, to check sessions opened before a reload (empty without a CRL). */
  revocations: Revocations[]
  /** The keys from tls.ticketKeys; undefined when it is empty (the manager's random ones). */
  ticketKeys: Buffer | undefined
  /** Hash of every input, to skip reloads that change nothing (watchers fire several times). */
  digest: string
}

export type TlsFiles = Pick<
  TlsConfig,
  'cert' | 'key' | 'passphrase' | 'ca' | 'crl' | 'minVersion' | 'ciphers'
> &
  Partial<Pick<TlsConfig, 'ticketKeys'>>

/** Node's session ticket keys: 16 bytes of name, 16 of HMAC secret, 16 of AES key. */
const TICKET_KEYS_BYTES = 48

function fail(reason: string, message: string, cause?: unknown): never {
  throw new TlsMaterialError(message, { reason, ...(cause !== undefined && { cause }) })
}

function readPem(setting: string, path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    return fail(
      'unreadable',
      `${setting} (${path}) cannot be read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      err,
    )
  }
}

function parseCerts(setting: string, path: string, pem: string): X509Certificate[] {
  let certs: X509Certificate[]
  try {
    certs = parsePemCerts(pem)
  } catch (err) {
    return fail('parse', `${setting} (${path}) does not parse: ${(err as Error).message}`, err)
  }
  if (certs.length === 0) fail('parse', `${setting} (${path}) holds no PEM certificate`)
  return certs
}

/**
 * Reads and checks TLS material: the certificate chain parses and is in order (leaf first, each
 * issued by the next), the leaf is inside its validity period, the key opens (with the
 * passphrase) and matches the leaf, the CA bundle and CRL parse, and OpenSSL accepts the lot.
 * Throws TlsMaterialError naming the setting, the file and what is wrong.
 */
export function loadTlsMaterial(files: TlsFiles, now = Date.now()): TlsMaterial {
  const hash = createHash('sha256')
  const certPem = readPem('tls.cert', files.cert)
  const keyPem = readPem('tls.key', files.key)
  hash.update(certPem).update('\0').update(keyPem).update('\0').update(files.passphrase)

  const chain = parseCerts('tls.cert', files.cert, certPem)
  const leaf = chain[0] as X509Certificate
  const notBefore = Date.parse(leaf.validFrom)
  const notAfter = Date.parse(leaf.validTo)
  if (now < notBefore) {
    fail('not_yet_valid', `tls.cert (${files.cert}) is not valid before ${leaf.validFrom}`)
  }
  if (now > notAfter) {
    fail(
      'expired',
      `tls.cert (${files.cert}) expired on ${leaf.validTo} (serial ${leaf.serialNumber})`,
    )
  }
  for (let i = 1; i < chain.length; i++) {
    const child = chain[i - 1] as X509Certificate
    const parent = chain[i] as X509Certificate
    if (!child.checkIssued(parent)) {
      fail(
        'chain_order',
        `tls.cert (${files.cert}): certificate ${i} is not issued by certificate ${i + 1}; put the server certificate first, then each issuer`,
      )
    }
  }

  let key
  try {
    key = createPrivateKey({
      key: keyPem,
      ...(files.passphrase !== '' && { passphrase: files.passphrase }),
    })
  } catch (err) {
    return fail(
      'parse',
      `tls.key (${files.key}) cannot be read: ${(err as Error).message}${files.passphrase === '' ? '' : ' (wrong tls.passphrase?)'}`,
      err,
    )
  }
  if (!leaf.checkPrivateKey(key)) {
    fail(
      'key_mismatch',
      `tls.key (${files.key}) does not match the certificate in tls.cert (${files.cert}, serial ${leaf.serialNumber})`,
    )
  }

  const context: tls.SecureContextOptions = {
    cert: certPem,
    key: keyPem,
    minVersion: files.minVersion,
    ...(files.passphrase !== '' && { passphrase: files.passphrase }),
    ...(files.ciphers !== '' && { ciphers: files.ciphers }),
  }
  if (files.ca !== '') {
    const caPem = readPem('tls.ca', files.ca)
    parseCerts('tls.ca', files.ca, caPem)
    context.ca = caPem
    hash.update('\0ca\0').update(caPem)
  }
  let revocations: Revocations[] = []
  if (files.crl !== '') {
    const crlPem = readPem('tls.crl', files.crl)
    if (!crlPem.includes('-----BEGIN X509 CRL-----')) {
      fail('parse', `tls.crl (${files.crl}) holds no PEM CRL (-----BEGIN X509 CRL-----)`)
    }
    context.crl = crlPem
    hash.update('\0crl\0').update(crlPem)
  }
  const ticketKeys =
    files.ticketKeys === undefined || files.ticketKeys === ''
      ? undefined
      : readTicketKeys(files.ticketKeys)
  if (ticketKeys !== undefined) hash.update('\0tickets\0').update(ticketKeys)
  hash.update(`\0${files.minVersion}\0${files.ciphers}`)
  try {
    tls.createSecureContext(context)
  } catch (err) {
    fail('parse', `OpenSSL refused the TLS material: ${(err as Error).message}`, err)
  }
  // After OpenSSL has accepted the CRL, so its verdict on a broken file is the one reported.
  if (context.crl !== undefined) {
    try {
      revocations = parseRevocations(String(context.crl))
    } catch (err) {
      fail('parse', `tls.crl (${files.crl}) does not parse: ${(err as Error).message}`, err)
    }
  }
  return {
    context,
    revocations,
    ticketKeys,
    digest: hash.digest('hex'),
    served: {
      subject: leaf.subject.replace(/\n/g, ', '),
      issuer: leaf.issuer.replace(/\n/g, ', '),
      serial: leaf.serialNumber,
      fingerprint256: leaf.fingerprint256,
      validTo: new Date(notAfter).toISOString(),
      daysLeft: Math.floor((notAfter - now) / DAY_MS),
    },
  }
}

/** tls.ticketKeys: exactly 48 bytes, as written (`openssl rand 48`) or in base64. */
function readTicketKeys(path: string): Buffer {
  let raw: Buffer
  try {
    raw = readFileSync(path)
  } catch (err) {
    return fail(
      'unreadable',
      `tls.ticketKeys (${path}) cannot be read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      err,
    )
  }
  if (raw.length === TICKET_KEYS_BYTES) return raw
  const text = raw.toString('latin1').trim()
  const decoded = /^[A-Za-z0-9+/]+={0,2}$/.test(text) ? Buffer.from(text, 'base64') : undefined
  if (decoded?.length === TICKET_KEYS_BYTES) return decoded
  return fail(
    'parse',
    `tls.ticketKeys (${path}) must hold ${TICKET_KEYS_BYTES} bytes, raw or in base64 (openssl rand ${TICKET_KEYS_BYTES} > file); it holds ${raw.length} bytes`,
  )
}

// ---- client certificates -----------------------------------------------------------------

export type ClientVerdict =
  | { ok: true; tls: ConnectionTls }
  | { ok: false; reason: ClientRefusalReason; detail: string; tls: ConnectionTls }

// OpenSSL verify results (X509_V_ERR_*, as Node names them in socket.authorizationError).
const UNKNOWN_CA_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
])

function refusalReason(code: string): ClientRefusalReason {
  if (code === 'CERT_HAS_EXPIRED') return 'expired'
  if (code === 'CERT_NOT_YET_VALID') return 'not_yet_valid'
  if (code === 'CERT_REVOKED') return 'revoked'
  if (UNKNOWN_CA_CODES.has(code)) return 'unknown_ca'
  return 'untrusted'
}

function describePeer(cert: tls.PeerCertificate): ClientCertInfo {
  const cn = (name: tls.Certificate): string => {
    const value: string | string[] | undefined = name.CN
    return Array.isArray(value) ? value.join(', ') : (value ?? '')
  }
  return {
    subject: cn(cert.subject),
    sans: cert.subjectaltname === undefined ? [] : cert.subjectaltname.split(', '),
    serial: cert.serialNumber,
    fingerprint256: cert.fingerprint256,
    issuer: cn(cert.issuer),
    validTo: new Date(cert.valid_to).toISOString(),
  }
}

/** Decides whether a freshly handshaken client may go on, and what its TLS identity is. */
export function judgeClient(socket: tls.TLSSocket, clientAuth: ClientAuth): ClientVerdict {
  const details: ConnectionTls = {
    protocol: socket.getProtocol() ?? 'unknown',
    cipher: socket.getCipher().name,
  }
  if (clientAuth === 'none') return { ok: true, tls: details }
  const peer = socket.getPeerCertificate()
  // No certificate: Node returns an empty object.
  const hasCert = Object.keys(peer).length > 0
  if (!hasCert) {
    if (clientAuth === 'optional') return { ok: true, tls: details }
    return { ok: false, reason: 'no_cert', detail: 'no client certificate sent', tls: details }
  }
  const cert = describePeer(peer)
  if (socket.authorized) return { ok: true, tls: { ...details, clientCert: cert } }
  const code = String(socket.authorizationError)
  return {
    ok: false,
    reason: refusalReason(code),
    detail: code,
    tls: { ...details, clientCert: cert },
  }
}

/** A short label for a failed handshake (tlsClientError), from Node's/OpenSSL's error code. */
export function handshakeFailureReason(err: NodeJS.ErrnoException): string {
  const code = err.code ?? ''
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return 'timeout'
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'reset'
  if (code === 'ERR_SSL_HTTP_REQUEST' || code === 'ERR_SSL_WRONG_VERSION_NUMBER') return 'not_tls'
  if (/UNSUPPORTED_PROTOCOL|PROTOCOL_VERSION|VERSION_TOO_LOW/.test(code)) return 'protocol_version'
  if (/NO_SHARED_CIPHER/.test(code)) return 'no_shared_cipher'
  // The client did not trust our certificate (its alert: unknown CA, bad/unknown certificate).
  if (/ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|CERTIFICATE_EXPIRED)/.test(code)) {
    return 'client_rejected_server_cert'
  }
  return 'other'
}

// ---- the manager -------------------------------------------------------------------------

export interface TlsManagerOptions {
  settings: TlsConfig
  /** Handshake timeout for the TLS handshake itself (the HTTP upgrade has its own timer). */
  handshakeTimeout: number
  log: Logger
  onTlsEvent?: TlsEventHook | undefined
}

export interface ReloadResult {
  ok: boolean
  /** False when the files were read but nothing had changed. */
  changed: boolean
  served: ServedCert
  error?: string
}

/** Settings that live in the server, not the secure context: changing them needs a restart. */
const RESTART_KEYS = ['enabled', 'clientAuth'] as const

/**
 * Owns the TLS material of every TLS listener of one gateway: builds the server options, judges
 * clients, reloads (SIGHUP, file watch) and swaps contexts with setSecureContext.
 */
export class TlsManager {
  readonly #log: Logger
  readonly #onTlsEvent: TlsEventHook | undefined
  readonly #handshakeTimeout: number
  readonly #servers = new Set<tls.Server>()
  readonly #verdicts = new WeakMap<object, ClientVerdict>()
  #settings: TlsConfig
  #material: TlsMaterial
  /**
   * Made once and given to the server at creation: a server created without ticket keys gets
   * new random ones with every SecureContext, so every certificate reload ended resumption and
   * each client paid a full handshake after each rotation.
   */
  readonly #randomTicketKeys = randomBytes(TICKET_KEYS_BYTES)
  #watchers: FSWatcher[] = []
  #watchedDirs = ''
  #debounce: NodeJS.Timeout | undefined
  #closed = false

  /** Throws TlsMaterialError when the configured material is unusable (start-up fails). */
  constructor(options: TlsManagerOptions) {
    this.#log = options.log
    this.#onTlsEvent = options.onTlsEvent
    this.#handshakeTimeout = options.handshakeTimeout
    this.#settings = options.settings
    this.#material = loadTlsMaterial(options.settings)
    this.#logServed('serving TLS certificate')
    if (options.settings.watch) this.#watch()
  }

  get served(): ServedCert {
    return this.#material.served
  }

  /** What the CRL in use revokes. */
  get revocations(): readonly Revocations[] {
    return this.#material.revocations
  }

  /** tls.closeRevoked as the last reload left it. */
  get closeRevoked(): boolean {
    return this.#settings.closeRevoked
  }

  get clientAuth(): ClientAuth {
    return this.#settings.clientAuth
  }

  /** Options for tls.createServer / https.createServer. */
  serverOptions(): tls.TlsOptions {
    return {
      ...this.#material.context,
      // Judged in judgeClient() so that each refusal gets a reason; see the module comment.
      requestCert: this.#settings.clientAuth !== 'none',
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
      handshakeTimeout: this.#handshakeTimeout,
      ticketKeys: this.#ticketKeys(),
    }
  }

  #ticketKeys(): Buffer {
    return this.#material.ticketKeys ?? this.#randomTicketKeys
  }

  /**
   * Starts judging the clients of `server` and keeps its context current on reloads. Call after
   * the server's own 'secureConnection' listener is registered (https registers it at creation),
   * so the verdict exists before any request on the socket is parsed.
   */
  attach(server: tls.Server, listener: TlsListener): void {
    this.#servers.add(server)
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      const verdict = judgeClient(socket, this.#settings.clientAuth)
      this.#verdicts.set(socket, verdict)
      if (!verdict.ok) {
        this.#log.warn(
          {
            listener,
            remote: peerAddress(socket),
            reason: verdict.reason,
            detail: verdict.detail,
            clientAuth: this.#settings.clientAuth,
            ...(verdict.tls.clientCert && { clientCert: verdict.tls.clientCert }),
          },
          'client certificate refused',
        )
        this.#emit({ type: 'client_refused', listener, reason: verdict.reason })
      }
    })
    server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
      const reason = handshakeFailureReason(err)
      this.#log.warn(
        { listener, remote: peerAddress(socket), reason, detail: err.code ?? err.message },
        'TLS handshake failed',
      )
      this.#emit({ type: 'handshake_failed', listener, reason })
    })
    server.once('close', () => this.#servers.delete(server))
  }

  /** The verdict made for `socket` at the end of its handshake (undefined for other sockets). */
  verdict(socket: object): ClientVerdict | undefined {
    return this.#verdicts.get(socket)
  }

  /**
   * Reads the material again (from `next` when the configuration changed) and, when it is
   * valid, serves it to new handshakes. Invalid material is refused and the current one kept.
   */
  reload(cause: string, next?: TlsConfig): ReloadResult {
    const settings = next === undefined ? this.#settings : this.#keepRestartKeys(next)
    let material: TlsMaterial
    try {
      material = loadTlsMaterial(settings)
    } catch (err) {
      const reason = err instanceof TlsMaterialError ? err.reason : 'invalid'
      const message = err instanceof Error ? err.message : String(err)
      this.#log.error(
        { cause, reason, err: message, servingSerial: this.#material.served.serial },
        'TLS reload refused; still serving the previous certificate',
      )
      this.#emit({ type: 'reload', result: 'failed', cause, reason })
      return { ok: false, changed: false, served: this.#material.served, error: message }
    }
    this.#settings = settings
    // New paths (SIGHUP), or a symlink now pointing into another directory (Kubernetes).
    if (settings.watch && watchedDirs(settings).join('\n') !== this.#watchedDirs) this.#watch()
    if (material.digest === this.#material.digest) {
      this.#log.debug({ cause, serial: material.served.serial }, 'TLS material unchanged')
      this.#emit({ type: 'reload', result: 'unchanged', cause })
      return { ok: true, changed: false, served: material.served }
    }
    const previous = this.#material.served.serial
    this.#material = material
    for (const server of this.#servers) {
      server.setSecureContext(material.context)
      // Node keeps the keys given at creation across setSecureContext; a new tls.ticketKeys
      // file is applied here.
      server.setTicketKeys(this.#ticketKeys())
    }
    this.#logServed('TLS material reloaded', { cause, previousSerial: previous })
    this.#emit({ type: 'reload', result: 'ok', cause })
    return { ok: true, changed: true, served: material.served }
  }

  close(): void {
    this.#closed = true
    clearTimeout(this.#debounce)
    for (const watcher of this.#watchers) watcher.close()
    this.#watchers = []
  }

  #keepRestartKeys(next: TlsConfig): TlsConfig {
    const changed = RESTART_KEYS.filter((key) => next[key] !== this.#settings[key])
    if (changed.length > 0) {
      this.#log.warn(
        { keys: changed.map((key) => `tls.${key}`) },
        'these settings take effect only after a restart; keeping the current values',
      )
    }
    return { ...next, enabled: this.#settings.enabled, clientAuth: this.#settings.clientAuth }
  }

  #logServed(message: string, extra: Record<string, unknown> = {}): void {
    const served = this.#material.served
    this.#log.info({ ...extra, cert: served, clientAuth: this.#settings.clientAuth }, message)
    if (served.daysLeft < this.#settings.expiryWarningDays) {
      this.#log.warn(
        {
          serial: served.serial,
          validTo: served.validTo,
          daysLeft: served.daysLeft,
          expiryWarningDays: this.#settings.expiryWarningDays,
        },
        `TLS certificate expires in ${served.daysLeft} days`,
      )
    }
  }

  // Directories, not files: Kubernetes updates a Secret volume by swapping a `..data` symlink
  // and editors replace files by rename, and a watch on the old file would miss both. The real
  // directory behind a symlinked file is watched too (certbot's live/ -> archive/).
  #watch(): void {
    for (const watcher of this.#watchers) watcher.close()
    this.#watchers = []
    const dirs = watchedDirs(this.#settings)
    this.#watchedDirs = dirs.join('\n')
    for (const dir of dirs) {
      try {
        const watcher = watch(dir, { persistent: false }, () => this.#schedule())
        watcher.on('error', (err) => {
          this.#log.warn({ dir, err: err.message }, 'TLS file watch failed; SIGHUP still reloads')
        })
        this.#watchers.push(watcher)
      } catch (err) {
        this.#log.warn(
          { dir, err: (err as Error).message },
          'cannot watch TLS directory; SIGHUP still reloads',
        )
      }
    }
  }

  #schedule(): void {
    if (this.#closed) return
    clearTimeout(this.#debounce)
    this.#debounce = setTimeout(() => this.reload('file change'), this.#settings.reloadDebounce)
    this.#debounce.unref()
  }

  #emit(event: TlsEvent): void {
    try {
      this.#onTlsEvent?.(event)
    } catch (err) {
      this.#log.error({ err: (err as Error).message }, 'onTlsEvent hook threw')
    }
  }
}

function watchedDirs(settings: TlsConfig): string[] {
  const dirs = new Set<string>()
  for (const file of [
    settings.cert,
    settings.key,
    settings.ca,
    settings.crl,
    settings.ticketKeys,
  ]) {
    if (file === '') continue
    dirs.add(dirname(resolve(file)))
    try {
      dirs.add(dirname(realpathSync(file)))
    } catch {
      // A missing file fails validation with its own message; its directory is still watched.
    }
  }
  return [...dirs].sort()
}

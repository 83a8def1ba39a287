// Development certificates with node-forge: a private CA, server certificates for the local
// names, client certificates (PEM + PKCS#12 for browsers and OS keychains) and CRLs. Used by
// `drawbridge certs ...`, by the development profile on first start, and by the tests.
//
// Keys are RSA 2048 (forge hands generation to node:crypto when it can, so this is fast);
// signatures SHA-256. Certificates carry the extensions strict verifiers ask for (RFC 5280:
// basicConstraints, keyUsage, extKeyUsage, subject/authority key identifiers, SANs).
import {
  X509Certificate,
  constants,
  createPublicKey,
  generateKeyPairSync,
  privateEncrypt,
  randomBytes,
} from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { join, resolve } from 'node:path'
import forge from 'node-forge'
import { parsePemCerts } from '../edge/pem.js'
import { TlsMaterialError } from '../errors.js'
import type { Logger } from '../log.js'

const { pki, asn1, md, pkcs12, util } = forge

const DAY_MS = 86_400_000

export interface Pem {
  cert: string
  key: string
}

export interface IssuedCert extends Pem {
  /** Serial number, lower-case hex without leading zeros (as Node's X509Certificate prints it, upper-cased). */
  serial: string
}

export interface CertOptions {
  commonName: string
  /** DNS names and IP addresses; each goes into subjectAltName with the right type. */
  altNames?: readonly string[]
  /** Defaults: now - 1 hour (clock skew), and notBefore + `days`. */
  notBefore?: Date
  notAfter?: Date
  days?: number
  /** Hex serial; a random positive 64-bit one when absent. */
  serial?: string
  /** Reuse a key instead of generating one (tests: mismatched-key cases, speed). */
  key?: string
}

// DER prefix of a SHA-256 DigestInfo (RFC 8017 section 9.2, note 1).
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex')

/**
 * What forge's cert.sign() needs of a key: it only calls sign(md). forge's JavaScript bignum
 * code takes about half a second per signature; node:crypto well under a millisecond
 * (RSASSA-PKCS1-v1_5, RFC 8017 section 8.2, the same bytes forge would produce).
 */
interface Signer {
  sign: (digest: forge.md.MessageDigest) => string
}

function nodeSigner(privateKeyPem: string): Signer {
  return {
    sign(digest) {
      const hash = Buffer.from(digest.digest().getBytes(), 'binary')
      return privateEncrypt(
        { key: privateKeyPem, padding: constants.RSA_PKCS1_PADDING },
        Buffer.concat([SHA256_DIGEST_INFO, hash]),
      ).toString('binary')
    },
  }
}

function randomSerial(): string {
  // Top bit cleared so the DER INTEGER stays positive (RFC 5280 4.1.2.2: positive, <= 20 bytes).
  const bytes = randomBytes(8)
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x10
  return bytes.toString('hex')
}

function validity(options: CertOptions, defaultDays: number): { from: Date; to: Date } {
  const from = options.notBefore ?? new Date(Date.now() - 3_600_000)
  const to = options.notAfter ?? new Date(from.getTime() + (options.days ?? defaultDays) * DAY_MS)
  return { from, to }
}

/** An RSA 2048 key (PKCS#8 PEM) made by node:crypto, or `existing`, with forge's public key. */
function keyPair(existing?: string): { pem: string; publicKey: forge.pki.rsa.PublicKey } {
  const pem =
    existing ??
    generateKeyPairSync('rsa', {
      modulusLength: 2048,
      publicExponent: 0x10001,
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
      publicKeyEncoding: { type: 'spki', format: 'pem' },
    }).privateKey
  const spki = createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString()
  return { pem, publicKey: pki.publicKeyFromPem(spki) }
}

function altNameEntries(names: readonly string[]): { type: number; value?: string; ip?: string }[] {
  // GeneralName tags (RFC 5280 4.2.1.6): 2 = dNSName, 7 = iPAddress.
  return names.map((name) => (isIP(name) === 0 ? { type: 2, value: name } : { type: 7, ip: name }))
}

function build(
  options: CertOptions,
  defaultDays: number,
  issuer: { cert: forge.pki.Certificate; signer: Signer } | undefined,
  extensions: object[],
): IssuedCert {
  const keys = keyPair(options.key)
  const cert = pki.createCertificate()
  cert.publicKey = keys.publicKey
  cert.serialNumber = options.serial ?? randomSerial()
  const { from, to } = validity(options, defaultDays)
  cert.validity.notBefore = from
  cert.validity.notAfter = to
  cert.setSubject([{ name: 'commonName', value: options.commonName }])
  cert.setIssuer(issuer ? issuer.cert.subject.attributes : cert.subject.attributes)
  const authorityKey = issuer ? issuer.cert.publicKey : keys.publicKey
  cert.setExtensions([
    ...extensions,
    { name: 'subjectKeyIdentifier' },
    {
      name: 'authorityKeyIdentifier',
      keyIdentifier: pki.getPublicKeyFingerprint(authorityKey, { type: 'RSAPublicKey' }).getBytes(),
    },
  ])
  const signer = issuer ? issuer.signer : nodeSigner(keys.pem)
  // forge's types want a PrivateKey; sign() is the only member cert.sign() uses.
  cert.sign(signer as unknown as forge.pki.rsa.PrivateKey, md.sha256.create())
  return {
    cert: pki.certificateToPem(cert),
    key: keys.pem,
    serial: cert.serialNumber.replace(/^0+/, ''),
  }
}

/** A self-signed CA that signs server and client certificates (default 10 years). */
export function createCa(options: CertOptions): IssuedCert {
  return build(options, 3650, undefined, [
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
  ])
}

function issuerOf(ca: Pem): { cert: forge.pki.Certificate; signer: Signer } {
  return { cert: pki.certificateFromPem(ca.cert), signer: nodeSigner(ca.key) }
}

/** A TLS server certificate for `altNames` (default 1 year; browsers cap at 398 days). */
export function issueServerCert(ca: Pem, options: CertOptions): IssuedCert {
  return build(options, 365, issuerOf(ca), [
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: altNameEntries(options.altNames ?? [options.commonName]) },
  ])
}

/** A TLS client certificate (default 1 year). */
export function issueClientCert(ca: Pem, options: CertOptions): IssuedCert {
  return build(options, 365, issuerOf(ca), [
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', clientAuth: true },
    ...(options.altNames
      ? [{ name: 'subjectAltName', altNames: altNameEntries(options.altNames) }]
      : []),
  ])
}

/**
 * A PKCS#12 bundle (key, certificate, CA) for browsers and OS keychains. 3DES rather than AES:
 * older macOS keychains and Windows import only that.
 */
export function toPkcs12(issued: Pem, ca: Pem, password: string, friendlyName: string): Buffer {
  const p12 = pkcs12.toPkcs12Asn1(
    pki.privateKeyFromPem(issued.key),
    [pki.certificateFromPem(issued.cert), pki.certificateFromPem(ca.cert)],
    password,
    { algorithm: '3des', friendlyName },
  )
  return Buffer.from(asn1.toDer(p12).getBytes(), 'binary')
}

export interface Revocation {
  /** Hex serial of the revoked certificate. */
  serial: string
  date?: Date
}

/**
 * A CRL signed by `ca` (RFC 5280 section 5; v2, no extensions). forge has no CRL writer, so the
 * TBSCertList is assembled from its ASN.1 helpers.
 */
export function createCrl(ca: Pem, revoked: readonly Revocation[], days = 30): string {
  const issuer = issuerOf(ca)
  const { Class, Type } = asn1
  const time = (date: Date): forge.asn1.Asn1 =>
    asn1.create(Class.UNIVERSAL, Type.UTCTIME, false, asn1.dateToUtcTime(date))
  // sha256WithRSAEncryption, parameters NULL (RFC 4055 section 5).
  const algorithm = asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, [
    asn1.create(
      Class.UNIVERSAL,
      Type.OID,
      false,
      asn1.oidToDer('1.2.840.113549.1.1.11').getBytes(),
    ),
    asn1.create(Class.UNIVERSAL, Type.NULL, false, ''),
  ])
  const now = new Date()
  const entries = revoked.map((entry) =>
    asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, [
      asn1.create(Class.UNIVERSAL, Type.INTEGER, false, serialBytes(entry.serial)),
      time(entry.date ?? now),
    ]),
  )
  const tbs = asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, [
    asn1.create(Class.UNIVERSAL, Type.INTEGER, false, asn1.integerToDer(1).getBytes()), // v2
    algorithm,
    pki.distinguishedNameToAsn1(issuer.cert.subject),
    time(new Date(now.getTime() - 60_000)),
    time(new Date(now.getTime() + days * DAY_MS)),
    ...(entries.length > 0 ? [asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, entries)] : []),
  ])
  const digest = md.sha256.create()
  digest.update(asn1.toDer(tbs).getBytes())
  const signature = issuer.signer.sign(digest)
  const crl = asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, [
    tbs,
    algorithm,
    asn1.create(Class.UNIVERSAL, Type.BITSTRING, false, `\u0000${signature}`),
  ])
  return forge.pem.encode({ type: 'X509 CRL', body: asn1.toDer(crl).getBytes() })
}

function serialBytes(hex: string): string {
  const even = hex.length % 2 === 0 ? hex : `0${hex}`
  const bytes = util.hexToBytes(even)
  // A leading byte with the top bit set would read as negative in DER.
  return bytes.charCodeAt(0) >= 0x80 ? `\u0000${bytes}` : bytes
}

// ---- files -------------------------------------------------------------------------------

export interface DevCertPaths {
  dir: string
  caCert: string
  caKey: string
  serverCert: string
  serverKey: string
}

export function devCertPaths(dir: string): DevCertPaths {
  const abs = resolve(dir)
  return {
    dir: abs,
    caCert: join(abs, 'ca.crt'),
    caKey: join(abs, 'ca.key'),
    serverCert: join(abs, 'server.crt'),
    serverKey: join(abs, 'server.key'),
  }
}

/** Writes a file; private keys (and PKCS#12 bundles) are 0600 even when the file existed. */
function writeOut(path: string, data: string | Buffer, secret: boolean): void {
  writeFileSync(path, data, { mode: secret ? 0o600 : 0o644 })
  if (secret) chmodSync(path, 0o600)
}

export const DEFAULT_HOSTS = ['localhost', '127.0.0.1', '::1'] as const

export interface InitResult {
  paths: DevCertPaths
  written: string[]
}

/**
 * `drawbridge certs init`: a CA (kept when one is already in `dir`), a server certificate for
 * localhost, 127.0.0.1, ::1 and `hosts`, and a client certificate named "client".
 */
export function initDevCerts(dir: string, hosts: readonly string[] = []): InitResult {
  const paths = devCertPaths(dir)
  mkdirSync(paths.dir, { recursive: true })
  const written: string[] = []
  let ca: Pem
  if (existsSync(paths.caCert) && existsSync(paths.caKey)) {
    ca = { cert: readFileSync(paths.caCert, 'utf8'), key: readFileSync(paths.caKey, 'utf8') }
  } else {
    ca = createCa({ commonName: 'Drawbridge development CA' })
    writeOut(paths.caKey, ca.key, true)
    writeOut(paths.caCert, ca.cert, false)
    written.push(paths.caCert, paths.caKey)
  }
  const server = issueServerCert(ca, {
    commonName: 'localhost',
    altNames: [...new Set([...DEFAULT_HOSTS, ...hosts])],
  })
  writeOut(paths.serverKey, server.key, true)
  writeOut(paths.serverCert, server.cert, false)
  written.push(paths.serverCert, paths.serverKey)
  written.push(...addClientCert(dir, 'client').written)
  return { paths, written }
}

/** `drawbridge certs client NAME`: NAME.crt, NAME.key and NAME.p12 signed by the dev CA. */
export function addClientCert(dir: string, name: string, password = ''): { written: string[] } {
  if (!/^[\w.-]+$/.test(name)) {
    throw new TlsMaterialError(`client name "${name}" may only use letters, digits, _ . -`)
  }
  const paths = devCertPaths(dir)
  if (!existsSync(paths.caCert) || !existsSync(paths.caKey)) {
    throw new TlsMaterialError(`no CA in ${paths.dir}: run "drawbridge certs init" first`)
  }
  const ca = { cert: readFileSync(paths.caCert, 'utf8'), key: readFileSync(paths.caKey, 'utf8') }
  const client = issueClientCert(ca, { commonName: name })
  const base = join(paths.dir, name)
  writeOut(`${base}.key`, client.key, true)
  writeOut(`${base}.crt`, client.cert, false)
  writeOut(`${base}.p12`, toPkcs12(client, ca, password, name), true)
  return { written: [`${base}.crt`, `${base}.key`, `${base}.p12`] }
}

/**
 * The development profile's first start: makes the CA and server certificate when the
 * configured files are missing, and tells the operator where they are and how to trust the CA.
 */
export function ensureDevCerts(certFile: string, keyFile: string, log: Logger): void {
  if (existsSync(certFile) && existsSync(keyFile)) return
  const dir = resolve(certFile, '..')
  const paths = devCertPaths(dir)
  if (resolve(certFile) !== paths.serverCert || resolve(keyFile) !== paths.serverKey) {
    throw new TlsMaterialError(
      `tls.generateDevCerts writes ${paths.serverCert} and ${paths.serverKey}; point tls.cert and tls.key there or create ${certFile} and ${keyFile} yourself`,
    )
  }
  const { written } = initDevCerts(dir)
  log.warn(
    {
      dir: paths.dir,
      written,
      trust: `import ${paths.caCert} as a trusted CA (browser settings or OS keychain); clients: MQTT.js { ca }, mosquitto_sub --cafile, paho tls_set(ca_certs=...)`,
    },
    'generated development certificates (not for production)',
  )
}

// ---- inspection --------------------------------------------------------------------------

export interface CertDescription {
  subject: string
  subjectAltName: string | undefined
  issuer: string
  serial: string
  validFrom: string
  validTo: string
  fingerprint256: string
}

export function describeCert(cert: X509Certificate): CertDescription {
  return {
    subject: cert.subject.replace(/\n/g, ', '),
    subjectAltName: cert.subjectAltName,
    issuer: cert.issuer.replace(/\n/g, ', '),
    serial: cert.serialNumber,
    validFrom: new Date(cert.validFrom).toISOString(),
    validTo: new Date(cert.validTo).toISOString(),
    fingerprint256: cert.fingerprint256,
  }
}

/** `drawbridge certs show FILE`: one block of text per certificate in the file. */
export function showCertFile(file: string): string {
  let certs: X509Certificate[]
  try {
    certs = parsePemCerts(readFileSync(file, 'utf8'))
  } catch (err) {
    throw new TlsMaterialError(`${file}: ${(err as Error).message}`, { cause: err })
  }
  if (certs.length === 0) throw new TlsMaterialError(`${file}: no PEM certificate in it`)
  const now = Date.now()
  return certs
    .map((cert, index) => {
      const d = describeCert(cert)
      const daysLeft = Math.floor((Date.parse(cert.validTo) - now) / DAY_MS)
      return [
        ...(certs.length > 1 ? [`certificate ${index + 1} of ${certs.length}`] : []),
        `subject:     ${d.subject}`,
        `SANs:        ${d.subjectAltName ?? '(none)'}`,
        `issuer:      ${d.issuer}`,
        `serial:      ${d.serial}`,
        `valid from:  ${d.validFrom}`,
        `valid to:    ${d.validTo} (${daysLeft < 0 ? `EXPIRED ${-daysLeft} days ago` : `${daysLeft} days left`})`,
        `sha256:      ${d.fingerprint256}`,
      ].join('\n')
    })
    .join('\n\n')
}

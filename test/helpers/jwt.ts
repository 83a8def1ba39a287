// Tokens for the auth tests: keys made with jose (ES256, RS256, and an HS256 secret), tokens
// signed with them, and a JWK Set served over HTTPS on loopback with the test CA's server
// certificate, whose keys a test can rotate and which it can stop and start.
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import {
  exportJWK,
  exportSPKI,
  generateKeyPair,
  SignJWT,
  type CryptoKey,
  type JWK,
  type JWTPayload,
} from 'jose'
import type { Teardown } from './broker.js'
import type { TestPki } from './pki.js'

export interface SigningKey {
  kid: string
  alg: 'ES256' | 'RS256' | 'PS256'
  privateKey: CryptoKey
  publicJwk: JWK
  spki: string
}

export async function signingKey(kid: string, alg: SigningKey['alg']): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true })
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' }
  return { kid, alg, privateKey, publicJwk, spki: await exportSPKI(publicKey) }
}

export const ISSUER = 'https://issuer.test'
export const AUDIENCE = 'drawbridge'
export const SECRET = 'a shared secret of at least thirty-two bytes, for HS256'

export interface TokenOptions {
  /** Seconds from now; default 300. */
  expiresIn?: number
  /** Seconds from now. */
  notBefore?: number
  issuer?: string
  audience?: string
  /** Header kid; default the key's. */
  kid?: string | undefined
  alg?: string
  claims?: JWTPayload
  /** Leave exp out. */
  noExp?: boolean
}

function builder(sub: string, options: TokenOptions): SignJWT {
  const now = Math.floor(Date.now() / 1000)
  const jwt = new SignJWT({ ...options.claims })
    .setSubject(sub)
    .setIssuer(options.issuer ?? ISSUER)
    .setAudience(options.audience ?? AUDIENCE)
    .setIssuedAt(now)
    .setJti(`jti-${sub}-${now}-${Math.random().toString(36).slice(2, 8)}`)
  if (options.noExp !== true) jwt.setExpirationTime(now + (options.expiresIn ?? 300))
  if (options.notBefore !== undefined) jwt.setNotBefore(now + options.notBefore)
  return jwt
}

export function signWith(
  key: SigningKey,
  sub: string,
  options: TokenOptions = {},
): Promise<string> {
  const kid = 'kid' in options ? options.kid : key.kid
  return builder(sub, options)
    .setProtectedHeader({ alg: options.alg ?? key.alg, ...(kid !== undefined && { kid }) })
    .sign(key.privateKey)
}

export function signHs256(sub: string, options: TokenOptions = {}): Promise<string> {
  return builder(sub, options)
    .setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode(SECRET))
}

/** An unsigned token (alg none), as an attacker would send it. */
export function unsignedToken(sub: string): string {
  const now = Math.floor(Date.now() / 1000)
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  return `${part({ alg: 'none', typ: 'JWT' })}.${part({
    sub,
    iss: ISSUER,
    aud: AUDIENCE,
    exp: now + 300,
  })}.`
}

export interface JwksServer {
  url: string
  /** The keys served from now on. */
  keys: JWK[]
  /** GET requests answered so far. */
  readonly fetches: number
  stop: () => Promise<void>
  start: () => Promise<void>
}

/** A JWK Set served at https://127.0.0.1:<port>/jwks with the test CA's server certificate. */
export async function startJwksServer(t: Teardown, pki: TestPki, keys: JWK[]): Promise<JwksServer> {
  let fetches = 0
  const state = { keys }
  const make = (): https.Server =>
    https.createServer({ cert: pki.servers[0].cert, key: pki.servers[0].key }, (_req, res) => {
      fetches++
      const body = JSON.stringify({ keys: state.keys })
      res.writeHead(200, { 'content-type': 'application/json', connection: 'close' })
      res.end(body)
    })
  let server = make()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  const stop = async (): Promise<void> => {
    if (!server.listening) return
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  }
  t.teardown(stop)
  return {
    url: `https://127.0.0.1:${port}/jwks`,
    get keys() {
      return state.keys
    },
    set keys(next: JWK[]) {
      state.keys = next
    },
    get fetches() {
      return fetches
    },
    stop,
    async start() {
      server = make()
      server.listen(port, '127.0.0.1')
      await once(server, 'listening')
    },
  }
}

/** Writes the HS256 secret and the CA file into `dir`; returns their paths. */
export function writeAuthFiles(dir: string, pki: TestPki): { secret: string; ca: string } {
  const secret = join(dir, 'jwt.secret')
  const ca = join(dir, 'jwks-ca.pem')
  writeFileSync(secret, `${SECRET}\n`)
  writeFileSync(ca, pki.ca.cert)
  return { secret, ca }
}

// A test PKI made in the test (node-forge through src/dev/certs.ts): a CA with a CRL, another CA,
// server certificates to rotate between, and the client certificates each clientAuth mode is
// tried with. Keys are generated once per test process and files written to a fresh directory.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  createCa,
  createCrl,
  issueClientCert,
  issueServerCert,
  type IssuedCert,
} from '../../src/dev/certs.js'

const DAY_MS = 86_400_000

export interface TestPki {
  ca: IssuedCert
  otherCa: IssuedCert
  crl: string
  /** Three valid server certificates (localhost, 127.0.0.1, ::1); 2 has 0's key, 1 its own. */
  servers: [IssuedCert, IssuedCert, IssuedCert]
  expiredServer: IssuedCert
  clients: {
    good: IssuedCert
    /** Signed by otherCa. */
    stranger: IssuedCert
    expired: IssuedCert
    /** Listed in crl. */
    revoked: IssuedCert
  }
}

let cached: TestPki | undefined

export function testPki(): TestPki {
  if (cached) return cached
  // RSA key generation dominates the cost (a few hundred ms each), so certificates that need
  // not differ in key share one: the clients, and the third server (whose key is the first's,
  // so "key of server 0 with the certificate of server 1" is a real mismatch).
  const ca = createCa({ commonName: 'Drawbridge test CA' })
  const otherCa = createCa({ commonName: 'Some other CA' })
  const altNames = ['localhost', '127.0.0.1', '::1']
  const first = issueServerCert(ca, { commonName: 'localhost', altNames })
  const server = (key?: string): IssuedCert =>
    issueServerCert(ca, { commonName: 'localhost', altNames, ...(key !== undefined && { key }) })
  const past = {
    notBefore: new Date(Date.now() - 10 * DAY_MS),
    notAfter: new Date(Date.now() - DAY_MS),
  }
  const revoked = issueClientCert(ca, { commonName: 'revoked-device' })
  const key = revoked.key
  cached = {
    ca,
    otherCa,
    crl: createCrl(ca, [{ serial: revoked.serial }]),
    servers: [first, server(), server(first.key)],
    expiredServer: issueServerCert(ca, { commonName: 'localhost', altNames, key, ...past }),
    clients: {
      good: issueClientCert(ca, { commonName: 'good-device', altNames: ['good-device.test'], key }),
      stranger: issueClientCert(otherCa, { commonName: 'stranger-device', key }),
      expired: issueClientCert(ca, { commonName: 'expired-device', key, ...past }),
      revoked,
    },
  }
  return cached
}

interface Teardown {
  teardown: (fn: () => unknown) => void
}

/** A fresh directory removed after the test. */
export function tempDir(t: Teardown, prefix = 'drawbridge-tls-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

export interface PkiFiles {
  dir: string
  cert: string
  key: string
  ca: string
  crl: string
}

/** Writes server certificate `index`, the CA and the CRL into a fresh directory. */
export function writeServerFiles(t: Teardown, pki: TestPki, index = 0): PkiFiles {
  const dir = tempDir(t)
  const files = {
    dir,
    cert: join(dir, 'tls.crt'),
    key: join(dir, 'tls.key'),
    ca: join(dir, 'ca.crt'),
    crl: join(dir, 'ca.crl'),
  }
  const server = pki.servers[index] ?? pki.servers[0]
  writeFileSync(files.cert, server.cert)
  writeFileSync(files.key, server.key, { mode: 0o600 })
  writeFileSync(files.ca, pki.ca.cert)
  writeFileSync(files.crl, pki.crl)
  return files
}

/** The env that turns TLS on with `files`. */
export function tlsEnv(
  files: PkiFiles,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    DRAWBRIDGE_TLS_ENABLED: 'true',
    DRAWBRIDGE_TLS_CERT: files.cert,
    DRAWBRIDGE_TLS_KEY: files.key,
    DRAWBRIDGE_TLS_CA: files.ca,
    DRAWBRIDGE_TLS_CRL: files.crl,
    DRAWBRIDGE_TLS_RELOAD_DEBOUNCE: '100ms',
    ...extra,
  }
}

/** Node prints serials upper-case hex. */
export function serialOf(cert: IssuedCert): string {
  return cert.serial.toUpperCase()
}

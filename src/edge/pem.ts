// PEM certificate bundles, read with node:crypto alone. Production TLS (tls.ts) needs this and
// nothing else of the development PKI, which lives in dev/certs.ts with node-forge: importing
// that from here would load forge into every production process.
import { X509Certificate } from 'node:crypto'

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g

/** Every certificate in a PEM file (a chain or a CA bundle), in file order. */
export function parsePemCerts(pem: string): X509Certificate[] {
  return (pem.match(PEM_CERT) ?? []).map((block) => new X509Certificate(block))
}

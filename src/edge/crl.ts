// The serial numbers a CRL revokes, read from the PEM file tls.crl names, so that sessions opened
// before a reload can be checked against the new list (tls.closeRevoked). OpenSSL checks new
// handshakes itself; Node gives no way to ask it about a certificate after the fact.
import { AsnConvert } from '@peculiar/asn1-schema'
import { CertificateList } from '@peculiar/asn1-x509'

/** One CRL's revocations: its issuer's common name and the serials, as Node prints them. */
export interface Revocations {
  issuer: string
  serials: ReadonlySet<string>
}

const PEM_BLOCK = /-----BEGIN X509 CRL-----([\s\S]*?)-----END X509 CRL-----/g
const COMMON_NAME = '2.5.4.3'

/** Every CRL in `pem` (a bundle may hold one per CA). Throws on one that does not parse. */
export function parseRevocations(pem: string): Revocations[] {
  return [...pem.matchAll(PEM_BLOCK)].map((match) => {
    const der = Buffer.from((match[1] ?? '').replace(/\s+/g, ''), 'base64')
    const crl = AsnConvert.parse(der, CertificateList)
    const { issuer, revokedCertificates = [] } = crl.tbsCertList
    let cn = ''
    for (const rdn of issuer) {
      for (const attribute of rdn) {
        if (attribute.type === COMMON_NAME) cn = attribute.value.toString()
      }
    }
    const serials = new Set(
      revokedCertificates.map((entry) =>
        normalSerial(Buffer.from(entry.userCertificate).toString('hex')),
      ),
    )
    return { issuer: cn, serials }
  })
}

/** Hex, upper case, without leading zeros: how Node prints a certificate's serialNumber. */
export function normalSerial(hex: string): string {
  return hex.replace(/^0+(?=.)/, '').toUpperCase()
}

/** Whether a certificate (its issuer's CN and serial as Node prints them) is revoked. */
export function isRevoked(
  revocations: readonly Revocations[],
  issuer: string,
  serial: string,
): boolean {
  const wanted = normalSerial(serial)
  return revocations.some((crl) => crl.issuer === issuer && crl.serials.has(wanted))
}

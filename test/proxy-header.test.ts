// The PROXY header encoder, byte for byte against the spec
// (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt): v1 lines, the v2 preamble,
// address blocks, TLVs and the SSL TLV with its sub-TLVs, LOCAL headers, and the size limit.
import pp from 'proxy-protocol-js'
import t from 'tap'
import {
  encodeLocalHeader,
  encodeProxyHeader,
  PROXY_HEADER_LIMIT,
  type ProxyClient,
} from '../src/upstream/proxy-header.js'

const SIG = '0d0a0d0a000d0a515549540a'
const hex = (b: Buffer): string => b.toString('hex')
const str = (s: string): string => Buffer.from(s).toString('hex')
const u16 = (n: number): string => n.toString(16).padStart(4, '0')
const tlv = (type: number, valueHex: string): string =>
  type.toString(16).padStart(2, '0') + u16(valueHex.length / 2) + valueHex

const v4: ProxyClient = {
  source: { address: '192.0.2.7', port: 51234 },
  destination: { address: '127.0.0.1', port: 8443 },
}

t.test('v1: TCP4, TCP6, mapped IPv4, UNKNOWN', async (t) => {
  t.equal(
    encodeProxyHeader('v1', v4).bytes.toString('latin1'),
    'PROXY TCP4 192.0.2.7 127.0.0.1 51234 8443\r\n',
  )
  t.equal(
    encodeProxyHeader('v1', {
      source: { address: '2001:db8::7', port: 1 },
      destination: { address: '::1', port: 443 },
    }).bytes.toString('latin1'),
    'PROXY TCP6 2001:db8::7 ::1 1 443\r\n',
  )
  t.equal(
    encodeProxyHeader('v1', {
      source: { address: '::ffff:10.0.0.1', port: 5 },
      destination: { address: '::ffff:127.0.0.1', port: 6 },
    }).bytes.toString('latin1'),
    'PROXY TCP4 10.0.0.1 127.0.0.1 5 6\r\n',
    'IPv4-mapped addresses are sent as IPv4',
  )
  t.equal(
    encodeProxyHeader('v1', {
      source: { address: '10.0.0.1', port: 5 },
      destination: { address: '::1', port: 6 },
    }).bytes.toString('latin1'),
    'PROXY UNKNOWN \r\n',
    'families differ',
  )
  t.equal(
    encodeProxyHeader('v1', { ...v4, source: { address: 'unknown', port: 0 } }).bytes.toString(),
    'PROXY UNKNOWN \r\n',
  )
  // v1 ignores TLS and the id: the text form has no room for them.
  const withTls = encodeProxyHeader('v1', {
    ...v4,
    uniqueId: 'abc-1',
    tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', verifiedCn: 'alice' },
  })
  t.equal(withTls.bytes.toString(), 'PROXY TCP4 192.0.2.7 127.0.0.1 51234 8443\r\n')
  // The longest v1 line (spec: 107 bytes) fits.
  const longest = encodeProxyHeader('v1', {
    source: { address: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', port: 65535 },
    destination: { address: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', port: 65535 },
  }).bytes
  t.equal(longest.length, 104)
  t.ok(longest.length <= 107)
})

t.test('v2: TCP4 without TLS, with the unique id', async (t) => {
  const { bytes, omitted } = encodeProxyHeader('v2', { ...v4, uniqueId: 'a1b2c3-4' })
  const addresses = 'c0000207' + '7f000001' + u16(51234) + u16(8443)
  const id = tlv(0x05, str('a1b2c3-4'))
  const body = addresses + id
  t.equal(hex(bytes), SIG + '21' + '11' + u16(body.length / 2) + body)
  t.same(omitted, [])
})

t.test('v2: TCP6, and mixed families as IPv6 with the IPv4 one mapped', async (t) => {
  const six = encodeProxyHeader('v2', {
    source: { address: '2001:db8::7', port: 1 },
    destination: { address: '::1', port: 443 },
  }).bytes
  const src = '20010db8000000000000000000000007'
  const dst = '00000000000000000000000000000001'
  t.equal(hex(six), SIG + '21' + '21' + u16(36) + src + dst + u16(1) + u16(443))

  const mixed = encodeProxyHeader('v2', {
    source: { address: '10.0.0.1', port: 2 },
    destination: { address: '::1', port: 3 },
  }).bytes
  t.equal(
    hex(mixed),
    SIG + '21' + '21' + u16(36) + '00000000000000000000ffff0a000001' + dst + u16(2) + u16(3),
  )
  const quad = encodeProxyHeader('v2', {
    source: { address: '64:ff9b::192.0.2.33', port: 2 },
    destination: { address: '::1', port: 3 },
  }).bytes
  t.equal(hex(quad).slice(32, 64), '0064ff9b0000000000000000c0000221', 'embedded dotted quad')
})

t.test('v2: the SSL TLV for a verified certificate, sub-TLVs inside it', async (t) => {
  const { bytes } = encodeProxyHeader('v2', {
    ...v4,
    uniqueId: 'x-1',
    tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', verifiedCn: 'alice' },
  })
  const ssl = tlv(
    0x20,
    '07' + // PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
      '00000000' + // verify: 0, verified
      tlv(0x21, str('TLSv1.3')) +
      tlv(0x22, str('alice')) +
      tlv(0x23, str('TLS_AES_256_GCM_SHA384')),
  )
  const body = 'c0000207' + '7f000001' + u16(51234) + u16(8443) + tlv(0x05, str('x-1')) + ssl
  t.equal(hex(bytes), SIG + '21' + '11' + u16(body.length / 2) + body)
})

t.test('v2: TLS without a certificate: SSL bit only, verify non-zero, no CN', async (t) => {
  const { bytes } = encodeProxyHeader('v2', {
    ...v4,
    tls: { version: 'TLSv1.2', cipher: 'ECDHE-RSA-AES128-GCM-SHA256', verifiedCn: undefined },
  })
  const ssl = tlv(
    0x20,
    '01' + '00000001' + tlv(0x21, str('TLSv1.2')) + tlv(0x23, str('ECDHE-RSA-AES128-GCM-SHA256')),
  )
  const body = 'c0000207' + '7f000001' + u16(51234) + u16(8443) + ssl
  t.equal(hex(bytes), SIG + '21' + '11' + u16(body.length / 2) + body)

  const noCn = encodeProxyHeader('v2', {
    ...v4,
    tls: { version: 'TLSv1.3', cipher: 'C', verifiedCn: '' },
  }).bytes
  const sslNoCn = tlv(0x20, '07' + '00000000' + tlv(0x21, str('TLSv1.3')) + tlv(0x23, str('C')))
  t.equal(hex(noCn).slice(32 + 24), sslNoCn, 'a verified certificate without a CN: no CN sub-TLV')
})

t.test('v2: unusable addresses give AF_UNSPEC with the TLVs kept', async (t) => {
  const { bytes } = encodeProxyHeader('v2', {
    source: { address: 'unknown', port: 0 },
    destination: { address: '127.0.0.1', port: 1 },
    uniqueId: 'q',
  })
  const body = tlv(0x05, str('q'))
  t.equal(hex(bytes), SIG + '21' + '00' + u16(body.length / 2) + body)
})

t.test('LOCAL headers', async (t) => {
  t.equal(encodeLocalHeader('v1').toString(), 'PROXY UNKNOWN \r\n')
  t.equal(hex(encodeLocalHeader('v2')), SIG + '20' + '00' + '0000')
})

t.test('v2 stays under 500 bytes: the cipher goes first, then the CN, never cut', async (t) => {
  const six = {
    source: { address: '2001:db8::7', port: 1 },
    destination: { address: '2001:db8::1', port: 443 },
    uniqueId: 'abcdef-zz',
  }
  const tls = (cn: string) => ({
    version: 'TLSv1.3',
    cipher: 'TLS_AES_256_GCM_SHA384',
    verifiedCn: cn,
  })
  // 16 + 36 + (3 + 9) + SSL TLV: 3 + 5 + (3 + 7) + (3 + cn) + (3 + 22) = 110 + cn.
  const fits = encodeProxyHeader('v2', { ...six, tls: tls('c'.repeat(389)) })
  t.equal(fits.bytes.length, 499)
  t.same(fits.omitted, [])

  const noCipher = encodeProxyHeader('v2', { ...six, tls: tls('c'.repeat(400)) })
  t.same(noCipher.omitted, ['cipher'])
  t.ok(noCipher.bytes.length < PROXY_HEADER_LIMIT)
  t.ok(noCipher.bytes.includes(Buffer.from('c'.repeat(400))), 'the CN whole')

  const noCn = encodeProxyHeader('v2', { ...six, tls: tls('c'.repeat(480)) })
  t.same(noCn.omitted, ['cipher', 'cn'])
  t.ok(noCn.bytes.length < PROXY_HEADER_LIMIT)
  t.notOk(noCn.bytes.includes(Buffer.from('ccc')), 'no part of the CN is sent')
  // The certificate bits stay: a verified certificate was presented, its name did not fit.
  const sslAt = noCn.bytes.indexOf(Buffer.from([0x20]), 16 + 36 + 12)
  t.equal(noCn.bytes[sslAt + 3], 0x07)
})

t.test('the unique id is cut at the spec maximum of 128 bytes', async (t) => {
  const { bytes } = encodeProxyHeader('v2', { ...v4, uniqueId: 'i'.repeat(200) })
  t.equal(bytes.readUInt16BE(14), 12 + 3 + 128)
})

// A second reader, written by others: proxy-protocol-js (moznion, maintained) parses what we
// send. It reads the address block; the TLVs are what follows it, which it hands back whole.
t.test('proxy-protocol-js reads our v1 and v2 headers back', async (t) => {
  const v1 = pp.V1ProxyProtocol.parse(encodeProxyHeader('v1', v4).bytes.toString('latin1'))
  t.match(v1, {
    inetProtocol: 'TCP4',
    source: { ipAddress: '192.0.2.7', port: 51234 },
    destination: { ipAddress: '127.0.0.1', port: 8443 },
  })
  const header = encodeProxyHeader('v2', {
    ...v4,
    tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', verifiedCn: 'alice' },
    uniqueId: 'gw-1',
  }).bytes
  const v2 = pp.V2ProxyProtocol.parse(header)
  t.equal(v2.command, pp.Command.PROXY)
  t.equal(v2.transportProtocol, pp.TransportProtocol.STREAM)
  const address = v2.proxyAddress as InstanceType<typeof pp.IPv4ProxyAddress>
  t.same(address.sourceAddress.address, [192, 0, 2, 7])
  t.equal(address.sourcePort, 51234)
  t.same(address.destinationAddress.address, [127, 0, 0, 1])
  t.equal(address.destinationPort, 8443)
  // 16 bytes of preamble, 12 of IPv4 addresses: the rest are our TLVs, whole.
  t.equal(Buffer.from(v2.data ?? []).toString('hex'), header.subarray(28).toString('hex'))
  const local = pp.V2ProxyProtocol.parse(encodeLocalHeader('v2'))
  t.equal(local.command, pp.Command.LOCAL)
})

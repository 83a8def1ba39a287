// Malformed and abusive upgrade requests, one table row each, sent byte for byte over a raw TCP
// socket to the gateway as users run it (a child process, Aedes behind it). Every row names the
// exact status the request must get and, for a refusal, the reason the gateway logs; every 101
// row proves the WebSocket works (MQTT CONNECT answered by CONNACK) and closes it cleanly.
//
// The expectations are what RFC 6455 (the opening handshake, section 4), RFC 9110 (HTTP
// semantics) and RFC 9112 (HTTP/1.1 message syntax) ask of a server, and where they leave the
// choice to the server, what the README's handshake table says. A row marked `defect` is a known
// gateway bug whose fix is under way; `defect?` marks a row where the gateway answers otherwise
// than the RFC cited asks (reported, not adapted to).
import t, { type Test } from 'tap'
import { startBroker } from '../helpers/broker.js'
import { upgradeRequest } from '../helpers/raw.js'
import { scrape, value } from '../helpers/scrape.js'
import { connectPacket } from '../helpers/wsmqtt.js'
import { figures, startGatewayProcess, type FaultGateway } from './lib/suite.js'
import { acceptFor, closeOf, closePayload, frame, Opcode, RawPeer } from './lib/rawws.js'

const KEY = 'dGhlIHNhbXBsZSBub25jZQ=='
/** How long any one answer may take (the machine is shared: generous, but bounded). */
const ANSWER_MS = 5_000
/** The gateway's ws.handshakeTimeout here: the one row that waits for it waits this long. */
const HANDSHAKE_TIMEOUT_MS = 1_500

interface Row {
  name: string
  /** The bytes sent, as they go on the wire (latin1). */
  request: string
  status: number
  /** The `reason` of the gateway's `upgrade refused` log line (every refusal has one). */
  reason?: string
  /** Response headers that must be there, with these exact values. */
  headers?: Record<string, string>
  /** The subprotocol a 101 must name. */
  protocol?: string
}

/** `lines` as a request: CRLF line ends and the blank line that ends the head. */
function http(lines: string[]): string {
  return `${lines.join('\r\n')}\r\n\r\n`
}

/** The well-formed upgrade request with some header lines replaced or removed (undefined). */
function upgrade(path: string, extra: Record<string, string | undefined> = {}): string {
  return http(upgradeRequest(path, extra))
}

/** The well-formed upgrade request with `lines` added after its own header lines. */
function upgradeWith(lines: string[], extra: Record<string, string | undefined> = {}): string {
  return http([...upgradeRequest('/mqtt', extra), ...lines])
}

const malformed = { status: 400, reason: 'malformed' } as const
const badVersion = {
  status: 400,
  reason: 'malformed',
  headers: { 'sec-websocket-version': '13, 8' },
} as const
const notFound = { status: 404, reason: 'path' } as const
const method = { status: 405, reason: 'method', headers: { allow: 'GET' } } as const
const notWebSocket = {
  status: 426,
  reason: 'not_websocket',
  headers: { upgrade: 'websocket' },
} as const
const accepted = { status: 101, protocol: 'mqtt' } as const

const rows: Row[] = [
  { name: 'a well-formed upgrade (the baseline)', request: upgrade('/mqtt'), ...accepted },

  // Sec-WebSocket-Key: the base64 of 16 bytes, exactly once (RFC 6455 4.1 item 7, 4.2.1 item 5,
  // 11.3.1). Node joins repeated lines with ", ", which no valid key contains.
  {
    name: 'no Sec-WebSocket-Key',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Key': undefined }),
    ...malformed,
  },
  {
    name: 'Sec-WebSocket-Key empty',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Key': '' }),
    ...malformed,
  },
  {
    name: 'Sec-WebSocket-Key not base64',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Key': 'not a key at all!!!!!!==' }),
    ...malformed,
  },
  {
    name: 'Sec-WebSocket-Key without its padding',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ' }),
    ...malformed,
  },
  {
    name: 'Sec-WebSocket-Key of 20 bytes',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Key': 'AAAAAAAAAAAAAAAAAAAAAAAAAAA=' }),
    ...malformed,
  },
  {
    name: 'two Sec-WebSocket-Key lines, different keys',
    request: upgradeWith(['Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==']),
    ...malformed,
  },
  {
    name: 'two Sec-WebSocket-Key lines, the same key',
    request: upgradeWith([`Sec-WebSocket-Key: ${KEY}`]),
    ...malformed,
  },

  // Sec-WebSocket-Version: 13, once (4.1 item 9, 11.3.5); a server that does not speak the
  // version names those it does (4.4). The gateway also speaks 8 (hybi-08, as ws does).
  {
    name: 'no Sec-WebSocket-Version',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Version': undefined }),
    ...badVersion,
  },
  {
    name: 'Sec-WebSocket-Version: 12',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Version': '12' }),
    ...badVersion,
  },
  {
    name: 'two Sec-WebSocket-Version lines',
    request: upgradeWith(['Sec-WebSocket-Version: 13']),
    ...badVersion,
  },

  // The request line and Host.
  {
    // Was a defect (issue 12), fixed.
    // RFC 6455 4.1 item 2: the method MUST be GET and the HTTP version at least 1.1 (and RFC
    // 9110 7.8: a server MUST ignore Upgrade in an HTTP/1.0 request).
    name: 'an upgrade over HTTP/1.0',
    request: http(['GET /mqtt HTTP/1.0', ...upgradeRequest('/mqtt').slice(1)]),
    ...malformed,
  },
  {
    // Was a defect (issue 12), fixed.
    // RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without a Host header.
    name: 'no Host header',
    request: upgrade('/mqtt', { Host: undefined }),
    ...malformed,
  },
  {
    // Was a defect (fixed): RFC 9112 3.2: "more than one Host header field line" MUST be answered 400.
    name: 'two Host lines',
    request: upgradeWith(['Host: elsewhere.example']),
    ...malformed,
  },
  {
    // Was a defect (fixed): RFC 9112 3.2: "a Host header field with an invalid field value" MUST be answered
    // 400 (uri-host has no space in it, RFC 3986 3.2.2).
    name: 'a Host that is not a host',
    request: upgrade('/mqtt', { Host: 'local host' }),
    ...malformed,
  },
  {
    // RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request line.
    name: 'an empty line before the request line',
    request: `\r\n${upgrade('/mqtt')}`,
    ...accepted,
  },

  // Methods: a WebSocket upgrade is a GET (RFC 6455 4.1 item 2); 405 names what is allowed
  // (RFC 9110 15.5.6).
  {
    name: 'POST upgrade',
    request: http(['POST /mqtt HTTP/1.1', ...upgradeRequest('/mqtt').slice(1)]),
    ...method,
  },
  {
    name: 'PUT upgrade',
    request: http(['PUT /mqtt HTTP/1.1', ...upgradeRequest('/mqtt').slice(1)]),
    ...method,
  },
  {
    name: 'HEAD upgrade',
    request: http(['HEAD /mqtt HTTP/1.1', ...upgradeRequest('/mqtt').slice(1)]),
    ...method,
  },
  {
    name: 'DELETE upgrade',
    request: http(['DELETE /mqtt HTTP/1.1', ...upgradeRequest('/mqtt').slice(1)]),
    ...method,
  },

  // Upgrade and Connection (RFC 6455 4.1 items 5-6, 4.2.1 items 3-4; RFC 9110 7.6.1, 7.8).
  {
    name: 'Upgrade: WebSocket (tokens are case-insensitive)',
    request: upgrade('/mqtt', { Upgrade: 'WebSocket' }),
    ...accepted,
  },
  {
    name: 'Connection: keep-alive, Upgrade (a list)',
    request: upgrade('/mqtt', { Connection: 'keep-alive, Upgrade' }),
    ...accepted,
  },
  {
    // Was a defect (fixed): RFC 6455 4.1 item 5: the client's Upgrade value "MUST include" the websocket
    // keyword, and 4.2.1 item 3 asks the server for an Upgrade header "containing" it: a list
    // with websocket in it is a valid handshake (RFC 9110 7.8: the server picks from the list).
    name: 'Upgrade: websocket, foo',
    request: upgrade('/mqtt', { Upgrade: 'websocket, foo' }),
    ...accepted,
  },
  {
    name: 'Upgrade: h2c, with the WebSocket headers',
    request: upgrade('/mqtt', { Upgrade: 'h2c', Connection: 'Upgrade, HTTP2-Settings' }),
    ...malformed,
  },
  {
    // RFC 9110 7.8 lets a server ignore an Upgrade it does not speak; the README answers 400.
    name: 'an h2c upgrade (RFC 7540 3.2)',
    request: http([
      'GET /mqtt HTTP/1.1',
      'Host: localhost',
      'Connection: Upgrade, HTTP2-Settings',
      'Upgrade: h2c',
      'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA',
    ]),
    ...malformed,
  },
  {
    // Without "Connection: Upgrade" it is a plain request that carries a key: a proxy on the way
    // dropped the hop-by-hop headers (README); 426 says what this endpoint needs.
    name: 'no Connection: Upgrade',
    request: upgrade('/mqtt', { Connection: undefined }),
    ...notWebSocket,
  },
  {
    name: 'no Upgrade header',
    request: upgrade('/mqtt', { Upgrade: undefined }),
    ...notWebSocket,
  },
  {
    name: 'a plain GET on the WebSocket path',
    request: http(['GET /mqtt HTTP/1.1', 'Host: localhost']),
    ...notWebSocket,
  },

  // The request target (RFC 9112 3.2; paths are case-sensitive, RFC 3986 6.2.2.1).
  { name: 'upgrade on /', request: upgrade('/'), ...notFound },
  { name: 'upgrade on /mqtt/', request: upgrade('/mqtt/'), ...notFound },
  { name: 'upgrade on /MQTT', request: upgrade('/MQTT'), ...notFound },
  { name: 'upgrade on /mqttx', request: upgrade('/mqttx'), ...notFound },
  { name: 'a plain GET on /', request: http(['GET / HTTP/1.1', 'Host: localhost']), ...notFound },
  {
    // RFC 9112 3.2.2: a server MUST accept the absolute form.
    name: 'absolute-form target on the right path',
    request: upgrade('http://localhost/mqtt'),
    ...accepted,
  },
  {
    name: 'absolute-form target on another path',
    request: upgrade('http://localhost/other'),
    ...notFound,
  },
  {
    name: 'a query string on the right path',
    request: upgrade('/mqtt?clientId=a&token=b%20c'),
    ...accepted,
  },
  { name: 'an empty query string', request: upgrade('/mqtt?'), ...accepted },
  {
    name: 'an 8 KiB query string (within the header limit)',
    request: upgrade(`/mqtt?pad=${'a'.repeat(8 * 1024)}`),
    ...accepted,
  },
  {
    // RFC 9112 3 asks for 414 (URI Too Long). Node's parser counts the request line into its
    // 16 KiB header limit and reports both alike (HPE_HEADER_OVERFLOW), so the gateway cannot
    // tell them apart and answers 431: refused, with a status a client can act on.
    name: 'a 20 KiB request target',
    request: upgrade(`/mqtt?pad=${'a'.repeat(20 * 1024)}`),
    status: 431,
    reason: 'malformed',
  },
  {
    // RFC 6585 5: 431 Request Header Fields Too Large.
    name: '20 KiB of header fields',
    request: upgradeWith([`X-Filler: ${'a'.repeat(20 * 1024)}`]),
    status: 431,
    reason: 'malformed',
  },

  // Sec-WebSocket-Protocol: 1#token (RFC 6455 4.1 item 10, 11.3.4: may come in several lines).
  {
    name: 'Sec-WebSocket-Protocol: mqttv3.1',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Protocol': 'mqttv3.1' }),
    status: 101,
    protocol: 'mqttv3.1',
  },
  {
    name: 'two Sec-WebSocket-Protocol lines: foo, then mqtt',
    request: upgradeWith(['Sec-WebSocket-Protocol: mqtt'], { 'Sec-WebSocket-Protocol': 'foo' }),
    ...accepted,
  },
  {
    name: 'Sec-WebSocket-Protocol: mqtt, mqtt (offered twice)',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Protocol': 'mqtt, mqtt' }),
    ...malformed,
  },
  {
    name: 'Sec-WebSocket-Protocol: mqtt v3 (not a token)',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Protocol': 'mqtt v3' }),
    ...malformed,
  },
  {
    name: 'Sec-WebSocket-Protocol: mqtt/3.1.1 (not a token)',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Protocol': 'mqtt/3.1.1' }),
    ...malformed,
  },
  {
    // Was a defect (fixed): RFC 9110 5.6.1.2: "a recipient MUST parse and ignore a reasonable number of empty
    // list elements" ("mqtt," is the list of one element, mqtt).
    name: 'Sec-WebSocket-Protocol: mqtt, (an empty list element)',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Protocol': 'mqtt,' }),
    ...accepted,
  },
  {
    name: 'Sec-WebSocket-Protocol: foo (none acceptable)',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Protocol': 'foo' }),
    status: 400,
    reason: 'subprotocol',
  },
  {
    name: 'no Sec-WebSocket-Protocol (ws.requireSubprotocol)',
    request: upgrade('/mqtt', { 'Sec-WebSocket-Protocol': undefined }),
    status: 400,
    reason: 'subprotocol',
  },

  // What is not HTTP, or is broken HTTP: Node's parser gives up and the gateway answers 400.
  { name: 'a garbage request line', request: 'HELLO WORLD\r\n\r\n', ...malformed },
  {
    name: 'a TLS ClientHello on the plain port',
    request: Buffer.from(
      '16030100a5010000a10303000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f',
      'hex',
    ).toString('latin1'),
    ...malformed,
  },
  {
    name: 'an MQTT CONNECT on the plain port',
    request: connectPacket('raw-tcp').toString('latin1'),
    ...malformed,
  },
  {
    // RFC 9112 2.2: a recipient MAY take a bare LF for a line end; Node's parser does not, and
    // 400 is what RFC 9112 2.2 leaves a server that does not.
    name: 'LF-only line ends',
    request: `${upgradeRequest('/mqtt').join('\n')}\n\n`,
    ...malformed,
  },
  {
    // RFC 9110 5.5: a field value with NUL MUST be rejected or the NUL replaced with SP.
    name: 'a NUL byte in a header value',
    request: upgradeWith(['X-Test: a\u0000b']),
    ...malformed,
  },
  {
    // RFC 9112 5.1: whitespace between a field name and its colon MUST be answered 400.
    name: 'whitespace before a header colon',
    request: upgradeWith(['X-Test : 1']),
    ...malformed,
  },
  {
    // RFC 9112 5.2: obs-fold MUST be rejected with 400 or replaced by SP; Node rejects it.
    name: 'an obs-fold header continuation line',
    request: upgradeWith(['X-Test: a', ' b']),
    ...malformed,
  },
  {
    // RFC 9112 6.3 item 5: an invalid Content-Length in a request MUST be answered 400.
    name: 'Content-Length: abc',
    request: upgradeWith(['Content-Length: abc']),
    ...malformed,
  },
  {
    // RFC 9112 6.1: a server MAY reject Content-Length with Transfer-Encoding (request
    // smuggling); Node's parser does.
    name: 'Content-Length and Transfer-Encoding together',
    request: upgradeWith(['Content-Length: 4', 'Transfer-Encoding: chunked']),
    ...malformed,
  },
  {
    name: 'Content-Length: 0 on an upgrade',
    request: upgradeWith(['Content-Length: 0']),
    ...accepted,
  },
  {
    // Was a defect (fixed): The 4 bytes are the request's content (RFC 9112 6.3), which the WebSocket
    // protocol starts after (as RFC 7540 3.2 spells out for h2c), never frames of it; content in
    // a GET has no semantics and is a request-smuggling vector that a server may refuse (RFC
    // 9110 9.3.1). Expected here: refused. The gateway answers 101 and then reads "abcd" as a
    // WebSocket frame (close 1002, RSV2 and RSV3 set): the HTTP body smuggled into the stream.
    name: 'Content-Length: 4 and 4 bytes of content on an upgrade',
    request: `${upgradeWith(['Content-Length: 4'])}abcd`,
    ...malformed,
  },
  {
    // Was a defect (fixed): RFC 9110 9.3.6: CONNECT asks for a tunnel, here to the broker port. The gateway is
    // an origin server for one GET resource: 405 (RFC 9110 15.5.6), logged and counted like any
    // other method (README), never a tunnel. Node closes the socket without a word.
    name: 'CONNECT to the broker port',
    request: http(['CONNECT 127.0.0.1:1883 HTTP/1.1', 'Host: 127.0.0.1:1883']),
    ...method,
  },
]

t.test('malformed upgrades', async (t) => {
  const broker = await startBroker(t, 'aedes')
  const gw = await startGatewayProcess(t, broker.port, {
    DRAWBRIDGE_WS_HANDSHAKE_TIMEOUT: `${HANDSHAKE_TIMEOUT_MS}ms`,
  })
  let passed = 0
  let index = 0
  for (const row of rows) {
    const clientId = `upgrade-row-${++index}`
    await t.test(row.name, async (t) => {
      await runRow(t, gw, row, clientId)
      if (t.passing()) passed++
    })
  }

  await t.test('a request that never ends: 408 after ws.handshakeTimeout', async (t) => {
    const peer = await RawPeer.connect(t, gw.port)
    const started = Date.now()
    peer.write(upgradeRequest('/mqtt').join('\r\n'))
    const response = await peer.response(HANDSHAKE_TIMEOUT_MS + ANSWER_MS)
    t.equal(response.status, 408)
    t.ok(Date.now() - started >= HANDSHAKE_TIMEOUT_MS - 100, 'not before the timeout')
    const line = await gw.process.waitForLog(
      (l) => l.msg === 'upgrade refused' && l.remote === peer.remote,
      ANSWER_MS,
    )
    t.match(line, { status: 408, reason: 'handshake_timeout' })
    peer.destroy()
    if (t.passing()) passed++
  })

  const s = await scrape(gw.adminUrl)
  t.ok(s.samples.has('drawbridge_connections_active{listener="ws"}'), 'the gauge is exposed')
  t.equal(value(s, 'drawbridge_connections_active', { listener: 'ws' }), 0, 'no connection left')
  figures(t, 'malformed-upgrades', { rows: rows.length + 1, passed })
})

async function runRow(t: Test, gw: FaultGateway, row: Row, clientId: string): Promise<void> {
  const peer = await RawPeer.connect(t, gw.port)
  try {
    peer.write(row.request)
    const response = await peer.response(ANSWER_MS)
    t.equal(response.status, row.status, `status ${row.status}`)
    for (const [name, expected] of Object.entries(row.headers ?? {})) {
      t.equal(response.headers[name], expected, `${name}: ${expected}`)
    }
    if (response.status === 101) {
      // Also for a row that should not have been accepted: the connection is closed cleanly.
      await provesWebSocket(t, gw, peer, row, clientId)
      return
    }
    // A refusal on the upgrade path closes the connection; a plain request answered 404 or 426
    // may keep it alive (RFC 9112 9.3), and it is destroyed below.
    if (response.headers.connection?.toLowerCase() === 'close') {
      await peer.whenClosed(ANSWER_MS)
      t.pass('the gateway closed the connection after its answer')
    }
    // Where the status is already wrong, its log line would say nothing more.
    if (row.reason !== undefined && response.status === row.status) {
      const line = await gw.process.waitForLog(
        (l) => l.msg === 'upgrade refused' && l.remote === peer.remote,
        ANSWER_MS,
      )
      t.match(line, { status: row.status, reason: row.reason }, `logged as ${row.reason}`)
    }
  } finally {
    peer.destroy()
  }
}

/** A 101: the accept key and subprotocol are right, MQTT gets through, and it closes with 1000. */
async function provesWebSocket(
  t: Test,
  gw: FaultGateway,
  peer: RawPeer,
  row: Row,
  clientId: string,
): Promise<void> {
  const headers = peer.head?.headers ?? {}
  t.equal(headers['sec-websocket-accept'], acceptFor(KEY), 'Sec-WebSocket-Accept')
  if (row.protocol !== undefined) t.equal(headers['sec-websocket-protocol'], row.protocol)
  peer.write(frame({ opcode: Opcode.BINARY, payload: connectPacket(clientId) }))
  const first = await peer.frame(
    (f) => f.opcode === Opcode.BINARY || f.opcode === Opcode.CLOSE,
    ANSWER_MS,
  )
  if (first.opcode === Opcode.CLOSE) {
    // Bytes of the request were taken for frames: the gateway closed instead of answering.
    t.fail(`closed with ${JSON.stringify(closeOf(first))} instead of a CONNACK`)
    peer.write(frame({ opcode: Opcode.CLOSE, payload: first.payload }))
    await peer.whenClosed(ANSWER_MS)
    return
  }
  t.same([...first.payload], [0x20, 0x02, 0x00, 0x00], 'CONNACK, accepted')
  peer.write(frame({ opcode: Opcode.CLOSE, payload: closePayload(1000, 'bye') }))
  const close = await peer.frame((f) => f.opcode === Opcode.CLOSE, ANSWER_MS)
  t.same(closeOf(close), { code: 1000, reason: 'bye' }, 'the close is echoed')
  await peer.whenClosed(ANSWER_MS)
  const line = await gw.process.waitForLog(
    (l) => l.msg === 'connection closed' && l.remote === peer.remote,
    ANSWER_MS,
  )
  t.match(line, { code: 1000, initiator: 'client' }, 'logged as closed by the client')
}

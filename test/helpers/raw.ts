// Crafted HTTP requests over a plain TCP socket, to see exactly what the gateway answers to a
// handshake (status line, headers, body), the way ws's own tests do.
import net from 'node:net'

export interface RawResponse {
  status: number
  headers: Record<string, string>
  body: string
}

export function rawRequest(
  port: number,
  lines: string[],
  options: { timeoutMs?: number; unfinished?: boolean } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let data = ''
    const timer = setTimeout(() => {
      socket.destroy()
      reject(
        new Error(
          `no complete answer within ${options.timeoutMs ?? 5000} ms: ${JSON.stringify(data)}`,
        ),
      )
    }, options.timeoutMs ?? 5_000)
    socket.on('data', (chunk: Buffer) => (data += chunk.toString('latin1')))
    socket.on('error', () => undefined)
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(parseResponse(data))
    })
    // unfinished: leave out the blank line that ends the headers.
    socket.write(`${lines.join('\r\n')}\r\n${options.unfinished === true ? '' : '\r\n'}`)
  })
}

export function parseResponse(data: string): RawResponse {
  const split = data.indexOf('\r\n\r\n')
  const head = split === -1 ? data : data.slice(0, split)
  const [statusLine = '', ...headerLines] = head.split('\r\n')
  const headers: Record<string, string> = {}
  for (const line of headerLines) {
    const colon = line.indexOf(':')
    if (colon > 0) headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
  }
  return {
    status: Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)?.[1] ?? 0),
    headers,
    body: split === -1 ? '' : data.slice(split + 4),
  }
}

/** A well-formed upgrade request for `path`, with extra or replaced header lines. */
export function upgradeRequest(
  path: string,
  extra: Record<string, string | undefined> = {},
): string[] {
  const headers: Record<string, string | undefined> = {
    Host: 'localhost',
    Upgrade: 'websocket',
    Connection: 'Upgrade',
    'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
    'Sec-WebSocket-Version': '13',
    'Sec-WebSocket-Protocol': 'mqtt',
    ...extra,
  }
  return [
    `GET ${path} HTTP/1.1`,
    ...Object.entries(headers)
      .filter((entry): entry is [string, string] => entry[1] !== undefined)
      .map(([name, value]) => `${name}: ${value}`),
  ]
}

// A tiny loopback HTTP server for the pages the browser tests load: fixed paths mapped to files
// (the MQTT.js and Paho browser bundles from node_modules, no CDN) or to literal content.
import { readFileSync } from 'node:fs'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Teardown } from './broker.js'

export interface StaticEntry {
  type: string
  /** A file read once at start, or literal content. */
  file?: string
  body?: string
}

export interface StaticServer {
  /** http://127.0.0.1:PORT */
  origin: string
  port: number
  /** Every request path seen, in order (a proxy test checks the page came through the proxy). */
  requests: string[]
}

const nodeModule = (path: string): string =>
  new URL(`../../node_modules/${path}`, import.meta.url).pathname

/** The browser bundles of the two client libraries the browser tests drive. */
export const CLIENT_BUNDLES: Record<string, StaticEntry> = {
  '/mqtt.min.js': { type: 'text/javascript', file: nodeModule('mqtt/dist/mqtt.min.js') },
  '/paho-mqtt.js': { type: 'text/javascript', file: nodeModule('paho-mqtt/paho-mqtt.js') },
}

export async function startStaticServer(
  t: Teardown,
  entries: Record<string, StaticEntry>,
): Promise<StaticServer> {
  const bodies = new Map<string, { type: string; body: Buffer }>()
  for (const [path, entry] of Object.entries(entries)) {
    const body = entry.file !== undefined ? readFileSync(entry.file) : Buffer.from(entry.body ?? '')
    bodies.set(path, { type: entry.type, body })
  }
  const requests: string[] = []
  const server = http.createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname
    requests.push(path)
    const found = bodies.get(path)
    if (found === undefined) {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n')
      return
    }
    res.writeHead(200, {
      'Content-Type': found.type,
      'Content-Length': found.body.length,
      'Cache-Control': 'no-store',
    })
    res.end(found.body)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  )
  const { port } = server.address() as AddressInfo
  return { origin: `http://127.0.0.1:${port}`, port, requests }
}

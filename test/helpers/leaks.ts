// After every test that starts a gateway: no connection and no broker socket may be left open
// (like http-proxy's socket-leak counters), and every close code the gateway or the broker side
// ended a connection with must be one the README's "Close codes" table documents.
import { readFileSync } from 'node:fs'
import type { Gateway } from '../../src/gateway.js'

/** How long closing clients get to finish: the half-open broker timer is 2 s. */
const SETTLE_MS = 3_000

const README = new URL('../../README.md', import.meta.url)

/** The codes in the README's close-code table. */
export function documentedCloseCodes(): Set<string> {
  const readme = readFileSync(README, 'utf8')
  const section = readme.slice(readme.indexOf('### Close codes'), readme.indexOf('### Error codes'))
  return new Set([...section.matchAll(/^\|\s*(\d{4})\s*\|/gm)].map((match) => match[1] ?? ''))
}

/** Resolves once the gateway has no open connection and no open broker socket, or throws. */
export async function assertNoLeaks(gateway: Gateway): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), SETTLE_MS)
  })
  const open = [...gateway.connections.values()]
  const settled = Promise.all([
    ...open.map((connection) => connection.whenClosed()),
    gateway.whenBrokerSocketsClosed(),
  ])
  const outcome = await Promise.race([settled, deadline])
  clearTimeout(timer)
  if (outcome === 'timeout') {
    const left = [...gateway.connections.values()].map((c) => `${c.id} (${c.listener})`)
    throw new Error(
      `leak: ${SETTLE_MS} ms after the test, ${left.length} connection(s) still open [${left.join(', ')}] and ${gateway.brokerSocketsOpen} broker socket(s)`,
    )
  }
  const undocumented = await undocumentedCloseCodes(gateway)
  if (undocumented.length > 0) {
    throw new Error(`close codes sent but not in the README table: ${undocumented.join(', ')}`)
  }
}

async function undocumentedCloseCodes(gateway: Gateway): Promise<string[]> {
  const documented = documentedCloseCodes()
  const text = await gateway.metrics.render()
  const codes = new Set<string>()
  // A client's own close code is the client's business; the table lists what we send.
  for (const match of text.matchAll(
    /^drawbridge_closes_total\{code="([^"]+)",initiator="(gateway|broker)"\} (\d+)/gm,
  )) {
    const [, code = '', , count = '0'] = match
    if (code !== 'none' && Number(count) > 0 && !documented.has(code)) codes.add(code)
  }
  return [...codes]
}

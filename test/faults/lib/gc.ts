// A full garbage collection in the gateway process before a memory reading. Without it the
// resident size after a wave of connections says when V8 last collected (it swung 133-201 MiB
// between identical waves of 2,000) rather than what the gateway still holds. The gateway runs
// with its inspector on an ephemeral loopback port (NODE_OPTIONS=--inspect=127.0.0.1:0) and
// is asked over the DevTools protocol, the way a developer would press "collect garbage".
import { WebSocket } from 'ws'
import { parseExposition, value } from '../../helpers/scrape.js'
import { adminGetClosing } from './settle.js'
import type { FaultGateway } from './suite.js'
import { within } from './sockets.js'

/** What to add to the gateway's environment so collectGarbage() can reach it. */
export const INSPECTOR_ENV = { NODE_OPTIONS: '--inspect=127.0.0.1:0' }

function inspectorUrl(gw: FaultGateway): string {
  const url = /Debugger listening on (ws:\/\/\S+)/.exec(gw.process.stderr())?.[1]
  if (url === undefined) throw new Error(`no inspector URL on the gateway's stderr`)
  return url
}

/** Runs a full GC in the gateway (HeapProfiler.collectGarbage) and closes the session. */
export async function collectGarbage(gw: FaultGateway): Promise<void> {
  const ws = new WebSocket(inspectorUrl(gw))
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()))
  try {
    await within(
      new Promise<void>((resolve, reject) => {
        ws.once('error', reject)
        ws.once('open', () =>
          ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' })),
        )
        ws.on('message', (data: Buffer) => {
          const reply = JSON.parse(data.toString()) as { id?: number; error?: { message: string } }
          if (reply.id !== 1) return
          if (reply.error) reject(new Error(reply.error.message))
          else resolve()
        })
      }),
      10_000,
      'HeapProfiler.collectGarbage',
    )
  } finally {
    ws.close()
    await within(closed, 5_000, 'inspector session closed').catch(() => ws.terminate())
  }
}

export interface Memory {
  /** Resident size as read, whenever V8 last collected. */
  raw: number
  /** Resident size and JavaScript heap in use after a full GC. */
  rss: number
  heap: number
}

/** The gateway's memory before and after a full GC; the heap as its /metrics reports it. */
export async function memoryAfterGc(gw: FaultGateway): Promise<Memory> {
  const raw = gw.process.rss()
  await collectGarbage(gw)
  const rss = gw.process.rss()
  const metrics = parseExposition((await adminGetClosing(gw.adminUrl, '/metrics')).body)
  return { raw, rss, heap: value(metrics, 'nodejs_heap_size_used_bytes') }
}

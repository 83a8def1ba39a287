// Memory of a child Node process after a full garbage collection. Resident size read whenever
// V8 last collected says more about GC timing than about what the process holds (it swung by a
// third between identical waves of connections in the soak), so the inspect-memory workload
// runs Drawbridge with its inspector on a loopback port (--inspect=127.0.0.1:PORT) and asks it
// over the DevTools protocol to collect, then reads process.memoryUsage() and /proc.
import { clearTimeout, setTimeout } from 'node:timers'
import { setTimeout as sleep } from 'node:timers/promises'
import WebSocket from 'ws'
import { rssKiB } from './proc.mjs'

/** One DevTools session to a child's inspector; every call is bounded by `timeoutMs`. */
export class InspectorSession {
  #ws
  #next = 0
  #pending = new Map()

  static async open(port, timeoutMs = 10_000) {
    const start = Date.now()
    let url
    // The inspector listens shortly after the process starts; bounded by the deadline.
    while (url === undefined) {
      try {
        const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()
        url = list[0]?.webSocketDebuggerUrl
      } catch {
        // not listening yet
      }
      if (url === undefined) {
        if (Date.now() - start > timeoutMs) throw new Error(`no inspector on port ${port}`)
        await sleep(100)
      }
    }
    const ws = new WebSocket(url, { perMessageDeflate: false })
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('inspector session: no open')), timeoutMs)
      ws.once('open', () => (clearTimeout(timer), resolve()))
      ws.once('error', (err) => (clearTimeout(timer), reject(err)))
    })
    return new InspectorSession(ws)
  }

  constructor(ws) {
    this.#ws = ws
    ws.on('error', () => {})
    ws.on('message', (data) => {
      const reply = JSON.parse(data.toString())
      const p = this.#pending.get(reply.id)
      if (p === undefined) return
      this.#pending.delete(reply.id)
      if (reply.error) p.reject(new Error(reply.error.message))
      else p.resolve(reply.result)
    })
    ws.once('close', () => {
      for (const p of this.#pending.values()) p.reject(new Error('inspector session closed'))
      this.#pending.clear()
    })
  }

  call(method, params = {}, timeoutMs = 20_000) {
    const id = ++this.#next
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(new Error(`inspector: ${method} did not answer within ${timeoutMs} ms`))
      }, timeoutMs)
      this.#pending.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      })
      this.#ws.send(JSON.stringify({ id, method, params }))
    })
  }

  /**
   * Two full collections (the second frees what the first's finalizers let go), then the
   * process's memory: RSS from /proc, heap and external from process.memoryUsage(), in KiB.
   */
  async memoryAfterGc(pid) {
    await this.call('HeapProfiler.collectGarbage')
    await this.call('HeapProfiler.collectGarbage')
    const { result } = await this.call('Runtime.evaluate', {
      expression: 'JSON.stringify(process.memoryUsage())',
      returnByValue: true,
    })
    const usage = JSON.parse(result.value)
    return {
      rssKiB: rssKiB(pid),
      heapUsedKiB: usage.heapUsed / 1024,
      externalKiB: usage.external / 1024,
      arrayBuffersKiB: usage.arrayBuffers / 1024,
    }
  }

  async close() {
    if (this.#ws.readyState === WebSocket.CLOSED) return
    const closed = new Promise((r) => this.#ws.once('close', r))
    this.#ws.close()
    await Promise.race([closed, sleep(2_000).then(() => this.#ws.terminate())])
  }
}

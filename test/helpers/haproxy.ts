// HAProxy (Debian's /usr/sbin/haproxy) as the L4 load balancer in front of the gateway: our own
// instance, `mode tcp`, on an ephemeral loopback port, in the foreground (-db), with a generated
// config in a temporary directory, never the system service.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, type Teardown } from './broker.js'
import { stopProcess } from './process.js'

function findHaproxy(): string | undefined {
  for (const candidate of ['/usr/sbin/haproxy', '/usr/bin/haproxy']) {
    if (existsSync(candidate) && spawnSync(candidate, ['-v'], { stdio: 'ignore' }).status === 0) {
      return candidate
    }
  }
  return undefined
}

export const HAPROXY = findHaproxy()

export interface Haproxy {
  /** The frontend: clients connect here, HAProxy connects on to the gateway. */
  port: number
}

/** HAProxy forwarding a frontend to 127.0.0.1:`gatewayPort` with `send-proxy` or `-v2`. */
export async function startHaproxy(
  t: Teardown,
  gatewayPort: number,
  send: 'send-proxy' | 'send-proxy-v2',
): Promise<Haproxy> {
  if (HAPROXY === undefined) throw new Error('haproxy is not installed')
  const port = await freePort()
  const readyPort = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'drawbridge-haproxy-'))
  const cfg = join(dir, 'haproxy.cfg')
  writeFileSync(
    cfg,
    [
      'global',
      '  maxconn 256',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 30s',
      '  timeout server 30s',
      'frontend fe',
      `  bind 127.0.0.1:${port}`,
      '  default_backend gateway',
      // Bound with fe in the same step: once it accepts, so does fe. It refuses everything.
      'frontend ready',
      `  bind 127.0.0.1:${readyPort}`,
      '  tcp-request connection reject',
      'backend gateway',
      `  server gw 127.0.0.1:${gatewayPort} ${send}`,
      '',
    ].join('\n'),
  )
  const child = spawn(HAPROXY, ['-f', cfg, '-db'], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  t.teardown(async () => {
    await stopProcess(child)
    rmSync(dir, { recursive: true, force: true })
  })
  // HAProxy says nothing once it listens: the ready frontend accepting (and closing) says it.
  const deadline = Date.now() + 10_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`haproxy exited: ${stderr}`)
    const accepted = await new Promise<boolean>((resolve) => {
      const probe = connect(readyPort, '127.0.0.1')
      probe.once('connect', () => {
        probe.destroy()
        resolve(true)
      })
      probe.once('error', () => resolve(false))
    })
    if (accepted) break
    if (Date.now() > deadline) throw new Error(`haproxy did not start: ${stderr}`)
    await new Promise((resolve) => setImmediate(resolve))
  }
  return { port }
}

// Debian's Mosquitto 2.0 with a per-username ACL, whose log says which username each client
// connected with: how a test sees "the broker got this username" (as test/tls-identity.test.ts
// does for certificates).
import { spawn } from 'node:child_process'
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, MOSQUITTO, waitForOutput, type Teardown } from './broker.js'

export interface AclBroker {
  port: number
  /** Usernames Mosquitto logged for new clients ('' for none), by client id. */
  usernames: Map<string, string>
  /** Resolves with the username client `clientId` connected with. */
  usernameOf: (clientId: string, timeoutMs?: number) => Promise<string>
}

export async function startAclMosquitto(t: Teardown): Promise<AclBroker> {
  const dir = mkdtempSync(join(tmpdir(), 'drawbridge-acl-'))
  chmodSync(dir, 0o755) // run as root, Mosquitto drops to its own user before reading the ACL
  const port = await freePort()
  const acl = join(dir, 'acl')
  writeFileSync(
    acl,
    [
      'topic write public/#',
      'topic read #',
      'pattern read #',
      'pattern write devices/%u/#',
      '',
    ].join('\n'),
  )
  const conf = join(dir, 'mosquitto.conf')
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'persistence false',
      `acl_file ${acl}`,
      'log_dest stderr',
      'log_type all',
      '',
    ].join('\n'),
  )
  const child = spawn(MOSQUITTO as string, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
  const usernames = new Map<string, string>()
  const waiters = new Set<() => void>()
  let partial = ''
  child.stderr.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n')
    partial = lines.pop() ?? ''
    for (const line of lines) {
      const m = /New client connected from \S+ as (\S+) \(([^)]*)\)/.exec(line)
      if (m === null) continue
      usernames.set(m[1] as string, /u'([^']*)'/.exec(m[2] as string)?.[1] ?? '')
    }
    for (const wake of waiters) wake()
  })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  t.teardown(async () => {
    if (child.exitCode === null) child.kill('SIGTERM')
    await exited
  })
  await waitForOutput(child, /mosquitto version \S+ running/, 5_000)
  return {
    port,
    usernames,
    usernameOf: (clientId, timeoutMs = 5_000) =>
      new Promise((resolve, reject) => {
        const wake = (): void => {
          const name = usernames.get(clientId)
          if (name === undefined) return
          waiters.delete(wake)
          clearTimeout(timer)
          resolve(name)
        }
        const timer = setTimeout(() => {
          waiters.delete(wake)
          reject(new Error(`Mosquitto logged no client ${clientId} within ${timeoutMs} ms`))
        }, timeoutMs)
        waiters.add(wake)
        wake()
      }),
  }
}

// Real brokers for the tests: Aedes in-process (always), and Mosquitto as a child process when
// it is on PATH (CI installs it, so there it is required).
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startEmbeddedBroker } from '../../src/dev/broker.js'

export interface TestBroker {
  kind: 'aedes' | 'mosquitto'
  port: number
  /** Aedes 1.x speaks MQTT 3.1 and 3.1.1 only; Mosquitto 2 speaks 5 too. */
  mqtt5: boolean
  close: () => Promise<void>
}

export interface Teardown {
  teardown: (fn: () => unknown) => void
}

export const MOSQUITTO = findMosquitto()

function findMosquitto(): string | undefined {
  for (const candidate of ['mosquitto', '/usr/sbin/mosquitto']) {
    const probe = spawnSync(candidate, ['-h'], { stdio: 'ignore' })
    if (probe.error === undefined) return candidate
  }
  if (process.env.CI === 'true') throw new Error('CI must have mosquitto installed (.ci/run)')
  return undefined
}

/** The broker kinds present here, for suites that run once per broker. */
export const BROKER_KINDS: TestBroker['kind'][] = MOSQUITTO ? ['aedes', 'mosquitto'] : ['aedes']

export async function startBroker(t: Teardown, kind: TestBroker['kind']): Promise<TestBroker> {
  const broker = kind === 'aedes' ? await startAedes() : await startMosquitto()
  t.teardown(() => broker.close())
  return broker
}

async function startAedes(): Promise<TestBroker> {
  const embedded = await startEmbeddedBroker({ host: '127.0.0.1', port: 0 })
  return { kind: 'aedes', port: embedded.address.port, mqtt5: false, close: embedded.close }
}

export async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

async function startMosquitto(): Promise<TestBroker> {
  if (MOSQUITTO === undefined) throw new Error('mosquitto is not installed')
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'drawbridge-mosquitto-'))
  const conf = join(dir, 'mosquitto.conf')
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'persistence false',
      'log_dest stderr',
      '',
    ].join('\n'),
  )
  const child = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  await waitForPort(port, 5_000).catch((err: unknown) => {
    child.kill('SIGKILL')
    throw new Error(`mosquitto did not start: ${String(err)}\n${stderr}`)
  })
  return {
    kind: 'mosquitto',
    port,
    mqtt5: true,
    close: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) {
          resolve()
          return
        }
        child.once('exit', () => resolve())
        child.kill('SIGTERM')
      }),
  }
}

export async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1')
      socket.once('connect', () => {
        socket.destroy()
        resolve(true)
      })
      socket.once('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`port ${port} not open after ${timeoutMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/**
 * A port where TCP connects hang (the accept queue of a never-accepting listener is filled
 * first): what a broker host that stopped answering looks like to upstream.connectTimeout.
 */
export async function startSilentBroker(t: Teardown): Promise<number> {
  const script = new URL('../fixtures/silent_listener.py', import.meta.url).pathname
  const child = spawn('python3', [script, '120'], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => child.kill('SIGKILL'))
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (chunk: Buffer) => resolve(Number(chunk.toString().trim())))
    child.once('error', reject)
  })
  const fillers: net.Socket[] = []
  for (let i = 0; i < 2; i++) {
    const filler = net.connect(port, '127.0.0.1')
    filler.on('error', () => undefined)
    fillers.push(filler)
  }
  t.teardown(() => fillers.forEach((s) => s.destroy()))
  await new Promise((resolve) => setTimeout(resolve, 200))
  return port
}

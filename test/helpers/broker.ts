// Real brokers for the tests: Aedes in-process (always), and Mosquitto as a child process when
// it is on PATH (CI installs it, so there it is required).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
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

/**
 * A mosquitto.conf for one anonymous loopback listener on `port`, logging to stderr (where
 * waitForOutput reads its "running" line), plus `extra` lines. Returns its path.
 */
export function writeMosquittoConf(port: number, extra: readonly string[] = []): string {
  const dir = mkdtempSync(join(tmpdir(), 'drawbridge-mosquitto-'))
  const conf = join(dir, 'mosquitto.conf')
  const lines = [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false']
  writeFileSync(conf, [...lines, 'log_dest stderr', ...extra, ''].join('\n'))
  return conf
}

async function startMosquitto(): Promise<TestBroker> {
  if (MOSQUITTO === undefined) throw new Error('mosquitto is not installed')
  const port = await freePort()
  const conf = writeMosquittoConf(port)
  const child = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
  // Mosquitto says "running" once every listener is open.
  await waitForOutput(child, /mosquitto version \S+ running/, 5_000).catch((err: unknown) => {
    child.kill('SIGKILL')
    throw new Error(`mosquitto did not start: ${String(err)}`)
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

/** A Mosquitto whose log says which clients it accepted: the broker's own view of affinity. */
export interface LoggingMosquitto {
  port: number
  /** Client ids in the order Mosquitto logged "New client connected ... as <id>". */
  readonly connects: readonly string[]
  /** Calls `listener` after every connect logged from now on; returns the unsubscribe. */
  onConnect: (listener: () => void) => () => void
  /** SIGTERM, resolved once it has exited (its port then refuses connections). */
  stop: () => Promise<void>
}

const NEW_CLIENT = /New client connected from \S+ as (\S+) \(/

export async function startLoggingMosquitto(t: Teardown): Promise<LoggingMosquitto> {
  if (MOSQUITTO === undefined) throw new Error('mosquitto is not installed')
  const port = await freePort()
  const child = spawn(MOSQUITTO, ['-c', writeMosquittoConf(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    await exited
  }
  t.teardown(stop)
  const connects: string[] = []
  const listeners = new Set<() => void>()
  let partial = ''
  // Added before waitForOutput's listener, so no line is missed; this one stays.
  child.stderr.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n')
    partial = lines.pop() ?? ''
    let found = false
    for (const line of lines) {
      const id = NEW_CLIENT.exec(line)?.[1]
      if (id === undefined) continue
      connects.push(id)
      found = true
    }
    if (found) for (const listener of listeners) listener()
  })
  await waitForOutput(child, /mosquitto version \S+ running/, 5_000)
  return {
    port,
    connects,
    stop,
    onConnect: (listener) => {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
  }
}

/**
 * Resolves once what `child` has written to stderr matches `pattern`: a server's own word that it
 * is up. Rejects, with that output, if it exits first or `timeoutMs` passes.
 */
export function waitForOutput(
  child: ChildProcess & { stderr: Readable },
  pattern: RegExp,
  timeoutMs: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let stderr = ''
    const settle = (err?: Error): void => {
      clearTimeout(deadline)
      child.stderr.off('data', onData)
      // Still flowing, with nobody listening: the server never blocks on a full stderr pipe.
      child.stderr.resume()
      child.off('exit', onExit)
      if (err) reject(err)
      else resolve()
    }
    const onData = (chunk: Buffer): void => {
      stderr += chunk.toString()
      if (pattern.test(stderr)) settle()
    }
    const onExit = (code: number | null, signal: string | null): void =>
      settle(new Error(`exited (${code ?? signal ?? ''}) before ${String(pattern)}:\n${stderr}`))
    const deadline = setTimeout(
      () => settle(new Error(`no ${String(pattern)} within ${timeoutMs} ms:\n${stderr}`)),
      timeoutMs,
    )
    child.stderr.on('data', onData)
    child.once('exit', onExit)
  })
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
  // The listener's backlog of 0 holds one connection: once this one is connected, it fills the
  // accept queue and the next SYN (the gateway's) goes unanswered. A second filler would hang
  // the same way, so its 'connect' would never come.
  const filler = net.connect(port, '127.0.0.1')
  filler.on('error', () => undefined)
  t.teardown(() => filler.destroy())
  await once(filler, 'connect')
  return port
}

// The fault and abuse suite's common ground: its two sizes, seeded randomness that a failure
// can be replayed with, the figures each case prints, and the real peers it drives (the
// gateway as a process, Mosquitto with its $SYS topics).
//
//   npm test          the short size (each case a few seconds)
//   npm run faults    the long size, for a release (FAULTS_SIZE=long)
//   FAULTS_SEED=1234  replays a run: every case prints the seed it used
import { spawn } from 'node:child_process'
import { readdirSync } from 'node:fs'
import mqtt from 'mqtt'
import {
  freePort,
  MOSQUITTO,
  waitForOutput,
  writeMosquittoConf,
  type Teardown,
} from '../../helpers/broker.js'
import { listeningPort, spawnGateway, type GatewayProcess } from '../../helpers/process.js'

export type Size = 'short' | 'long'

export const SIZE: Size = process.env.FAULTS_SIZE === 'long' ? 'long' : 'short'

/** The value for this run's size. */
export function sized<T>(short: T, long: T): T {
  return SIZE === 'long' ? long : short
}

interface Commenter {
  comment: (...message: unknown[]) => void
}

import { prng, type Prng } from '../../helpers/prng.js'

export { prng, type Prng }

/** The PRNG of a case, with the seed it was made from. */
export interface Random extends Prng {
  readonly seed: number
}

/** The seed of a case: FAULTS_SEED when set, else a fixed one per case name; printed. */
export function random(t: Commenter, name: string): Random {
  const fromEnv = Number(process.env.FAULTS_SEED)
  let seed = Number.isInteger(fromEnv) && process.env.FAULTS_SEED !== undefined ? fromEnv : 0
  if (seed === 0) for (const char of name) seed = (Math.imul(seed, 31) + char.charCodeAt(0)) >>> 0
  t.comment(`${name}: seed=${seed} (replay with FAULTS_SEED=${seed}), size=${SIZE}`)
  return { seed, ...prng(seed) }
}

/** Prints a case's figures as one comment line, e.g. `# figures drops: clients=500 leaked=0`. */
export function figures(t: Commenter, name: string, values: Record<string, unknown>): void {
  const text = Object.entries(values)
    .map(
      ([key, value]) =>
        `${key}=${typeof value === 'number' && !Number.isInteger(value) ? value.toFixed(2) : String(value)}`,
    )
    .join(' ')
  t.comment(`figures ${name}: ${text}`)
}

/** Open file descriptors of a process (sockets among them), from /proc. */
export function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length
}

export interface FaultGateway {
  process: GatewayProcess
  pid: number
  port: number
  /** ws://127.0.0.1:PORT/mqtt */
  url: string
  adminUrl: string
}

/** The gateway as users run it (dist/cli.js), on ephemeral loopback ports. */
export async function startGatewayProcess(
  t: Teardown,
  brokerPort: number,
  env: Record<string, string> = {},
): Promise<FaultGateway> {
  const gw = spawnGateway(t, {
    DRAWBRIDGE_PROFILE: 'production',
    DRAWBRIDGE_LISTEN_HOST: '127.0.0.1',
    DRAWBRIDGE_LISTEN_PORT: '0',
    DRAWBRIDGE_UPSTREAM_BROKERS: `127.0.0.1:${brokerPort}`,
    DRAWBRIDGE_ADMIN_HOST: '127.0.0.1',
    DRAWBRIDGE_LOG_LEVEL: 'info',
    ...env,
  })
  const port = await listeningPort(gw)
  const admin = await gw.waitForLog((l) => l.msg === 'admin listening')
  return {
    process: gw,
    pid: gw.child.pid ?? 0,
    port,
    url: `ws://127.0.0.1:${port}/mqtt`,
    adminUrl: `http://${String(admin.admin)}`,
  }
}

export interface SysBroker {
  port: number
  pid: number
  /** The broker's own count of connected clients ($SYS/broker/clients/connected). */
  connectedClients: () => number
  /** Resolves once $SYS reports `n` connected clients (the subscriber itself not counted). */
  waitForClients: (n: number, timeoutMs: number) => Promise<number>
  kill: (signal: NodeJS.Signals) => Promise<void>
  /** Starts it again on the same port after a kill. */
  restart: () => Promise<void>
}

/**
 * Mosquitto publishing $SYS every second, with a subscriber reading the broker's own count of
 * connected clients: what an operator's dashboard would see, independent of the gateway.
 */
export async function startSysMosquitto(t: Teardown): Promise<SysBroker> {
  if (MOSQUITTO === undefined) throw new Error('mosquitto is not installed (.ci/run installs it)')
  const port = await freePort()
  // $SYS every second (Mosquitto 2.0 publishes every other one).
  const conf = writeMosquittoConf(port, ['sys_interval 1', 'max_queued_messages 100000'])
  const binary = MOSQUITTO
  // Mosquitto says "running" once every listener is open.
  const launch = async (): Promise<ReturnType<typeof spawn>> => {
    const started = spawn(binary, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
    await waitForOutput(started, /mosquitto version \S+ running/, 5_000).catch((err: unknown) => {
      started.kill('SIGKILL')
      throw err
    })
    return started
  }
  let child = await launch()
  let connected = -1
  const waiters = new Set<() => void>()
  const sys = mqtt.connect(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 200 })
  sys.on('error', () => undefined)
  sys.on('connect', () => void sys.subscribe('$SYS/broker/clients/connected'))
  sys.on('message', (_topic, payload: Buffer) => {
    // The subscriber itself is one of the connected clients.
    connected = Number(payload.toString()) - 1
    for (const wake of waiters) wake()
  })
  const stop = (signal: NodeJS.Signals): Promise<void> =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        resolve()
        return
      }
      child.once('exit', () => resolve())
      child.kill(signal)
    })
  t.teardown(async () => {
    sys.end(true)
    await stop('SIGKILL')
  })
  return {
    port,
    get pid() {
      return child.pid ?? 0
    },
    connectedClients: () => connected,
    waitForClients: (n, timeoutMs) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          if (connected !== n) return
          cleanup()
          resolve(connected)
        }
        const timer = setTimeout(() => {
          cleanup()
          reject(new Error(`$SYS says ${connected} clients, not ${n}, after ${timeoutMs} ms`))
        }, timeoutMs)
        const cleanup = (): void => {
          clearTimeout(timer)
          waiters.delete(check)
        }
        waiters.add(check)
        check()
      }),
    kill: stop,
    restart: async () => {
      child = await launch()
    },
  }
}

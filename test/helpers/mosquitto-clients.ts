// Mosquitto's command-line clients on the broker's TCP side: what a browser published must reach
// a real mosquitto_sub, and what mosquitto_pub sends must reach the browser.
import { execFile, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import type { Teardown } from './broker.js'

export interface TcpSubscriber {
  /** "topic payload" lines, as mosquitto_sub -v prints them. */
  messages: string[]
  /** Resolves once `count` messages arrived; rejects after `timeoutMs`. */
  waitFor: (count: number, timeoutMs?: number) => Promise<string[]>
}

/**
 * Starts `mosquitto_sub -v` on `filter` and resolves once the broker has acknowledged the
 * subscription (its -d output shows the SUBACK), so nothing published after this is missed.
 */
export async function mosquittoSub(
  t: Teardown,
  port: number,
  filter: string,
  qos: 0 | 1 = 1,
): Promise<TcpSubscriber> {
  // stdbuf -oL: mosquitto_sub's -d lines are printf'd and only flushed at exit into a pipe.
  const child = spawn(
    'stdbuf',
    [
      '-oL',
      'mosquitto_sub',
      '-h',
      '127.0.0.1',
      '-p',
      String(port),
      '-t',
      filter,
      '-q',
      String(qos),
      '-v',
      '-d',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  t.teardown(() => child.kill('SIGKILL'))
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const messages: string[] = []
  const waiters = new Set<() => void>()
  let subscribed: () => void = () => undefined
  const ready = new Promise<void>((resolve) => (subscribed = resolve))
  // -d interleaves "Client ... sending/received ..." debug lines with the -v message lines.
  createInterface({ input: child.stdout }).on('line', (line) => {
    if (/^Client \S+ received SUBACK/.test(line)) subscribed()
    else if (!/^(Client \S+ |Subscribed \(mid)/.test(line)) messages.push(line)
    for (const wake of waiters) wake()
  })
  const exited = new Promise<never>((_resolve, reject) =>
    child.once('exit', (code) => reject(new Error(`mosquitto_sub exited ${code}: ${stderr}`))),
  )
  await Promise.race([ready, exited, timeout(5_000, 'mosquitto_sub got no SUBACK')])
  return {
    messages,
    waitFor: (count, timeoutMs = 5_000) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check)
          reject(new Error(`mosquitto_sub saw ${JSON.stringify(messages)}, wanted ${count}`))
        }, timeoutMs)
        function check(): void {
          if (messages.length < count) return
          clearTimeout(timer)
          waiters.delete(check)
          resolve(messages)
        }
        waiters.add(check)
        check()
      }),
  }
}

/** One `mosquitto_pub`; resolves when it exits 0 (for QoS 1: after the broker's PUBACK). */
export function mosquittoPub(
  port: number,
  topic: string,
  message: string,
  qos: 0 | 1 = 1,
): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(
      'mosquitto_pub',
      ['-h', '127.0.0.1', '-p', String(port), '-t', topic, '-m', message, '-q', String(qos)],
      { timeout: 5_000 },
      (err, _stdout, stderr) => {
        if (err) reject(new Error(`mosquitto_pub failed: ${err.message} ${stderr}`))
        else resolve()
      },
    )
  })
}

function timeout(ms: number, message: string): Promise<never> {
  return new Promise((_resolve, reject) => {
    setTimeout(() => reject(new Error(message)), ms).unref()
  })
}

// upstream.affinity=clientId against three real Mosquitto brokers, read from the brokers' side
// (each one's log line for every client it accepts): 100 client ids, each connected 5 times,
// always reach the same broker; with one broker stopped, only that broker's clients move, each
// to its next-ranked broker, and everybody else stays where they were.
import { connectAsync } from 'mqtt'
import t from 'tap'
import type { HostPort } from '../src/config/formats.js'
import { rendezvousOrder } from '../src/upstream/affinity.js'
import { MOSQUITTO, startLoggingMosquitto, type LoggingMosquitto } from './helpers/broker.js'
import { startTestGateway } from './helpers/gateway.js'
import { scrape, value } from './helpers/scrape.js'
import { skipWithout } from './helpers/tools.js'

const CLIENTS = 100
const ROUNDS = 5
/** Connections opened at once: enough to be quick, few enough for two shared cores. */
const CONCURRENCY = 10

const skip = skipWithout('mosquitto', MOSQUITTO !== undefined, 'Debian package mosquitto, .ci/run')

t.test('affinity by client id, three Mosquitto brokers', { skip, timeout: 60_000 }, async (t) => {
  const brokers = await Promise.all([0, 1, 2].map(() => startLoggingMosquitto(t)))
  const addresses: HostPort[] = brokers.map((b) => ({ host: '127.0.0.1', port: b.port }))
  const gw = await startTestGateway(t, brokers[0]?.port ?? 0, {
    DRAWBRIDGE_UPSTREAM_CONNECT_ON: 'connect',
    DRAWBRIDGE_UPSTREAM_AFFINITY: 'clientId',
    DRAWBRIDGE_UPSTREAM_BROKERS: addresses.map((a) => `${a.host}:${a.port}`).join(','),
    DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT: '2s',
    // The client log lines of 600 connections are not what this test reads.
    DRAWBRIDGE_LOG_LEVEL: 'warn',
  })
  const ids = Array.from({ length: CLIENTS }, (_, i) => `affinity-${i}`)

  /** Connects and ends every id once, CONCURRENCY at a time. */
  const connectAll = async (): Promise<void> => {
    const queue = [...ids]
    const worker = async (): Promise<void> => {
      for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
        const client = await connectAsync(gw.url, {
          clientId: id,
          protocolVersion: 4,
          reconnectPeriod: 0,
          connectTimeout: 10_000,
        })
        await client.endAsync()
      }
    }
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  }
  /** Resolves once the brokers in `live` have logged `total` connects between them. */
  const logged = (live: LoggingMosquitto[], total: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const counted = (): number => live.reduce((sum, b) => sum + b.connects.length, 0)
      const done = (err?: Error): void => {
        clearTimeout(timer)
        for (const off of offs) off()
        if (err) reject(err)
        else resolve()
      }
      const check = (): void => {
        if (counted() >= total) done()
      }
      const timer = setTimeout(
        () => done(new Error(`${counted()} of ${total} connects logged in 10 s`)),
        10_000,
      )
      const offs = live.map((b) => b.onConnect(check))
      check()
    })
  /** Which brokers (by index) each id was seen on, from `from` on in each broker's log. */
  const placement = (from: number[]): Map<string, number[]> => {
    const seen = new Map<string, number[]>()
    brokers.forEach((broker, index) => {
      for (const id of broker.connects.slice(from[index])) {
        seen.set(id, [...(seen.get(id) ?? []), index])
      }
    })
    return seen
  }

  const started = Date.now()
  for (let round = 0; round < ROUNDS; round++) await connectAll()
  await logged(brokers, CLIENTS * ROUNDS)
  const before = placement([0, 0, 0])
  const home = new Map<string, number>()
  const wrong: string[] = []
  for (const id of ids) {
    const seen = before.get(id) ?? []
    const first = seen[0]
    if (seen.length !== ROUNDS || first === undefined || seen.some((b) => b !== first)) {
      wrong.push(`${id} seen on brokers [${seen.join(',')}]`)
      continue
    }
    home.set(id, first)
  }
  t.same(wrong, [], `${CLIENTS} ids x ${ROUNDS} connections: each id always on one broker`)
  const perBroker = [0, 1, 2].map((b) => [...home.values()].filter((h) => h === b).length)
  t.ok(
    perBroker.every((n) => n >= CLIENTS / 6),
    `spread over the three brokers: ${perBroker.join(' / ')}`,
  )
  t.same(
    ids.filter(
      (id) => home.get(id) !== addresses.indexOf(rendezvousOrder(addresses, id)[0] as HostPort),
    ),
    [],
    'each on the broker its rendezvous order puts first',
  )

  // Stop the second broker: its clients move, each to its next choice; nobody else moves.
  const [a, b, c] = brokers as [LoggingMosquitto, LoggingMosquitto, LoggingMosquitto]
  const marks = brokers.map((broker) => broker.connects.length)
  await b.stop()
  const errorsBefore = value(await scrape(gw.adminUrl), 'drawbridge_upstream_errors_total', {
    reason: 'refused',
  })
  await connectAll()
  await logged([a, c], (marks[0] ?? 0) + (marks[2] ?? 0) + CLIENTS)
  const after = placement(marks)
  const moved: string[] = []
  const misplaced: string[] = []
  for (const id of ids) {
    const [now, ...more] = after.get(id) ?? []
    if (now === undefined || more.length > 0) {
      misplaced.push(`${id} seen on [${(after.get(id) ?? []).join(',')}]`)
      continue
    }
    if (home.get(id) === 1) {
      moved.push(id)
      const next = rendezvousOrder(addresses, id)[1] as HostPort
      if (now !== addresses.indexOf(next)) misplaced.push(`${id} went to ${now}, not its next`)
    } else if (now !== home.get(id)) {
      misplaced.push(`${id} moved from ${String(home.get(id))} to ${now}`)
    }
  }
  t.same(misplaced, [], 'the others stayed; the stopped broker’s clients went to their next')
  t.equal(
    moved.length,
    perBroker[1],
    `all ${perBroker[1] ?? 0} clients of the stopped broker moved`,
  )
  const errorsAfter = value(await scrape(gw.adminUrl), 'drawbridge_upstream_errors_total', {
    reason: 'refused',
  })
  t.equal(errorsAfter - errorsBefore, moved.length, 'one refused attempt for each moved client')
  t.comment(
    `figures: ${CLIENTS} ids, ${ROUNDS} rounds + 1 with a broker down, ${CLIENTS * (ROUNDS + 1)} connections, per broker ${perBroker.join('/')}, moved ${moved.length}, ${Date.now() - started} ms`,
  )
})

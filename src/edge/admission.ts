// Whether a new client is let in: an ordered list of small steps, each of which lets the
// admission go on or answers with a refusal, like the passes of http-proxy or the checks of ws's
// handleUpgrade(). The two lists below are the whole decision for each listener and read top to
// bottom; a new check (a PROXY header, per-client limits, a token) is one more step in them.
//
// A step may take a resource for the client (a capacity slot, the broker socket): what it takes
// is given back by the runner when a later step refuses, and the broker socket is destroyed.
//
// With upstream.connectOn=connect the lists have no broker step: the client is let in without a
// broker, and its Connection dials one once the client's CONNECT has been read.
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { BrokerDial } from '../bridge/connection.js'
import type { Config, ConnectOn } from '../config/schema.js'
import type { BrokerConnector, Upstream } from '../upstream/connector.js'
import type { ProxyClient } from '../upstream/proxy-header.js'
import { validateUpgrade, type HandshakePolicy } from './handshake.js'
import { Refusals, type Refusal } from './refusals.js'
import type { TlsManager } from './tls.js'

/** A client being admitted, whatever its listener; steps fill in what they learn. */
export interface Admission {
  readonly socket: Duplex
  /** The broker connection, once the broker step has opened it. */
  upstream: Upstream | undefined
  /** Who the PROXY header to the broker names (upstream.proxyProtocol on), else undefined. */
  readonly proxy?: ProxyClient | undefined
  /** Run when the admission is over, whatever its outcome (a capacity slot is released). */
  readonly onEnd: (() => void)[]
}

/** A WebSocket upgrade request being admitted. */
export interface Upgrade extends Admission {
  readonly req: IncomingMessage
  /** The subprotocol to answer with (false: none), once the request checks have passed. */
  protocol: string | false
}

/** The client went away while a step waited: there is nobody left to answer. */
export const CLIENT_LEFT = Symbol('client left')

/** What a step says: undefined lets the admission go on. */
export type StepVerdict = Refusal | typeof CLIENT_LEFT | undefined

export interface Step<A extends Admission> {
  /** For logs and tests. */
  readonly name: string
  run(admission: A): StepVerdict | Promise<StepVerdict>
}

export type AdmissionOutcome =
  { ok: true } | { ok: false; refusal: Refusal } | { ok: false; clientLeft: true }

/**
 * Runs `steps` in order and calls `accept` (in the same tick as the last step, so a capacity
 * slot turns into an open connection without a gap) when all of them let the client in. A step
 * that throws has the broker socket destroyed and the error passed on to the caller.
 */
export async function admit<A extends Admission>(
  steps: readonly Step<A>[],
  admission: A,
  accept: (admission: A) => void,
): Promise<AdmissionOutcome> {
  try {
    for (const step of steps) {
      const pending = step.run(admission)
      // Most steps answer at once; only those that wait cost a trip through the event loop.
      const verdict = pending instanceof Promise ? await pending : pending
      if (verdict === undefined) continue
      admission.upstream?.socket.destroy()
      return verdict === CLIENT_LEFT
        ? { ok: false, clientLeft: true }
        : { ok: false, refusal: verdict }
    }
    accept(admission)
    return { ok: true }
  } catch (err) {
    admission.upstream?.socket.destroy()
    throw err
  } finally {
    for (const release of admission.onEnd) release()
  }
}

// ---- the lists --------------------------------------------------------------------------

export interface StepOptions {
  /** Undefined on a plain (ws://) listener. */
  tls: TlsManager | undefined
  /** True once the gateway has begun shutting down. */
  closing: () => boolean
  capacity: Capacity
  connector: BrokerConnector
  /** upstream.connectOn: connect leaves the broker step (and the checks after it) out. */
  connectOn: ConnectOn
}

/** A WebSocket upgrade, decided before the 101 is sent. */
export function websocketSteps(
  options: StepOptions & { policy: HandshakePolicy },
): Step<Upgrade>[] {
  return [
    trustedClientCertificate(options.tls),
    notShuttingDown(options.closing),
    validRequest(options.policy),
    underCapacity(options.capacity),
    ...brokerFirst(options),
  ]
}

/** An mqtts client, decided after its TLS handshake and before any byte reaches the broker. */
export function mqttsSteps(options: StepOptions & { tls: TlsManager }): Step<Admission>[] {
  return [
    trustedClientCertificate(options.tls),
    notShuttingDown(options.closing),
    underCapacity(options.capacity),
    ...brokerFirst(options),
  ]
}

/**
 * upgrade mode: the broker connect, then what its wait calls for checking again: the client is
 * still there, and shutdown has not begun meanwhile. connect mode: nothing, nobody waits here.
 */
function brokerFirst(options: StepOptions): Step<Admission>[] {
  if (options.connectOn === 'connect') return []
  return [brokerConnected(options.connector), clientStillThere(), notShuttingDown(options.closing)]
}

/**
 * What the listeners' Connections are given to dial their broker in connect mode, where the
 * lists above have no broker step; undefined in upgrade mode, where the admission dialled it.
 */
export function connectDial(
  upstream: Pick<Config['upstream'], 'connectOn' | 'affinity'>,
  connector: BrokerConnector,
): BrokerDial | undefined {
  return upstream.connectOn === 'connect' ? { connector, affinity: upstream.affinity } : undefined
}

// ---- the steps --------------------------------------------------------------------------

/**
 * A client whose certificate was refused at the end of its TLS handshake (logged there with the
 * precise reason) goes no further: every request on its socket is refused with 403.
 */
export function trustedClientCertificate(tls: TlsManager | undefined): Step<Admission> {
  return {
    name: 'client certificate',
    run: ({ socket }) => clientCertificateRefusal(tls, socket),
  }
}

/** The 403 for a socket whose client certificate was refused; plain requests get it too. */
export function clientCertificateRefusal(
  tls: TlsManager | undefined,
  socket: Duplex,
): Refusal | undefined {
  const verdict = tls?.verdict(socket)
  if (verdict === undefined || verdict.ok) return undefined
  return Refusals.clientCert(verdict.reason, verdict.detail)
}

export function notShuttingDown(closing: () => boolean): Step<Admission> {
  return {
    name: 'shutting down',
    run: () => (closing() ? Refusals.shuttingDown() : undefined),
  }
}

/** The request itself: path, method, WebSocket headers, origin, subprotocol (handshake.ts). */
export function validRequest(policy: HandshakePolicy): Step<Upgrade> {
  return {
    name: 'request',
    run(upgrade) {
      const decision = validateUpgrade(upgrade.req, policy)
      if (!decision.ok) return decision.refusal
      upgrade.protocol = decision.protocol
      return undefined
    },
  }
}

/** Open connections plus admissions past this step, against a limit. */
export class Capacity {
  readonly max: number
  readonly #open: () => number
  #pending = 0
  readonly release = (): void => {
    this.#pending--
  }

  constructor(max: number, open: () => number) {
    this.max = max
    this.#open = open
  }

  /** Takes a slot, or returns false when none is left. */
  reserve(): boolean {
    if (this.#open() + this.#pending >= this.max) return false
    this.#pending++
    return true
  }
}

export function underCapacity(capacity: Capacity): Step<Admission> {
  return {
    name: 'capacity',
    run(admission) {
      if (!capacity.reserve()) return Refusals.capacity(capacity.max)
      admission.onEnd.push(capacity.release)
      return undefined
    },
  }
}

/**
 * Opens the broker connection before the client is let in, so a client never sees a
 * connection that opens and dies: a refused broker is 502, a silent one 504.
 */
export function brokerConnected(connector: BrokerConnector): Step<Admission> {
  return {
    name: 'broker connect',
    async run(admission) {
      const outcome = await connector.connectFor(admission.socket, admission.proxy)
      if (outcome.ok) {
        admission.upstream = outcome.upstream
        return undefined
      }
      return outcome.clientLeft ? CLIENT_LEFT : Refusals.upstream(outcome.error)
    },
  }
}

/**
 * A client that half-closed while the broker connect was pending is still there to the abort
 * signal (no 'close' yet), but ws would destroy its socket without calling back, leaving the
 * broker socket without an owner: let in only a client that can still read and write.
 */
export function clientStillThere(): Step<Admission> {
  return {
    name: 'client still there',
    run: ({ socket }) => (socket.readable && socket.writable ? undefined : CLIENT_LEFT),
  }
}

// Whether a new client is let in: an ordered list of small steps, each of which lets the
// admission go on or answers with a refusal, like the passes of http-proxy or the checks of ws's
// handleUpgrade(). The lists below are the whole decision for each listener (and for the
// WebSocket upgrades an http.routes backend takes) and read top to bottom; a new check (a PROXY
// header, per-client limits, a token) is one more step in them.
//
// A step may take a resource for the client (a capacity slot, the broker socket): what it takes
// is given back by the runner when a later step refuses, and the broker socket is destroyed.
// What the connection keeps (a per-client slot) goes in onClose: given back by the connection
// when it closes, or by the runner when the admission ends without one.
//
// With upstream.connectOn=connect the lists have no broker step: the client is let in without a
// broker, and its Connection dials one once the client's CONNECT has been read.
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { removeSubprotocolToken } from '../auth/extract.js'
import type { AuthAdmission, EdgeAuth } from '../auth/gate.js'
import type { BrokerDial } from '../bridge/connection.js'
import type { Config, ConnectOn } from '../config/schema.js'
import type { BrokerConnector, Upstream } from '../upstream/connector.js'
import type { Route } from '../config/formats.js'
import type { ProxyClient } from '../upstream/proxy-header.js'
import { originRefusal, validateUpgrade, type HandshakePolicy } from './handshake.js'
import { Refusals, type Refusal } from './refusals.js'
import { withinClientLimits, type ClientTable } from './client-limits.js'
import type { TlsManager } from './tls.js'

/** A client being admitted, whatever its listener; steps fill in what they learn. */
export interface Admission {
  readonly socket: Duplex
  /** The resolved client address (PROXY header, trusted proxy's header, else the peer). */
  readonly clientAddress: string
  /** The broker connection, once the broker step has opened it. */
  upstream: Upstream | undefined
  /** Who the PROXY header to the broker names (upstream.proxyProtocol on), else undefined. */
  readonly proxy?: ProxyClient | undefined
  /** Run when the admission is over, whatever its outcome (a capacity slot is released). */
  readonly onEnd: (() => void)[]
  /** auth.mode=jwt: the token let in with, or the CONNECT password still to check. */
  auth?: AuthAdmission | undefined
  /**
   * Run when the connection it becomes closes (the listener hands them to it), or by the
   * runner when the admission ends without a connection: a per-client slot is given back.
   */
  readonly onClose: (() => void)[]
}

/** A client that came with an HTTP request: a step written for it serves every upgrade list. */
export interface RequestAdmission extends Admission {
  readonly req: IncomingMessage
}

/** A WebSocket upgrade request for the MQTT endpoint (ws.path) being admitted. */
export interface Upgrade extends RequestAdmission {
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
  let accepted = false
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
    accepted = true
    return { ok: true }
  } catch (err) {
    admission.upstream?.socket.destroy()
    throw err
  } finally {
    for (const release of admission.onEnd) release()
    if (!accepted) for (const release of admission.onClose) release()
  }
}

/** One function for the connection to call at close, or undefined when nothing is kept. */
export function releaseOnClose(admission: Admission): (() => void) | undefined {
  const kept = admission.onClose
  if (kept.length === 0) return undefined
  return () => {
    for (const release of kept) release()
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
  /** auth.mode=jwt; undefined when it is none. */
  auth?: EdgeAuth | undefined
  /** The per-client limits, shared by the listeners; their step is left out when none is on. */
  clients?: ClientTable | undefined
}

/** A WebSocket upgrade, decided before the 101 is sent. */
export function websocketSteps(
  options: StepOptions & { policy: HandshakePolicy },
): Step<Upgrade>[] {
  return [
    trustedClientCertificate(options.tls),
    notShuttingDown(options.closing),
    validRequest(options.policy),
    ...clientLimits(options.clients),
    ...(options.auth ? [tokenChecked(options.auth, options.tls)] : []),
    underCapacity(options.capacity),
    ...brokerFirst(options),
  ]
}

/**
 * A WebSocket upgrade for a backend of http.routes (src/edge/routes.ts), decided before the
 * backend is dialled. No broker, no capacity slot (limits.maxConnections counts MQTT
 * connections); the backend's own answer decides the rest of its handshake.
 */
export interface RoutedUpgrade extends RequestAdmission {
  readonly route: Route
}

export interface RoutedStepOptions {
  tls: TlsManager | undefined
  closing: () => boolean
  /** ws.allowedOrigins and ws.requireOrigin: one origin policy for the whole origin. */
  policy: Pick<HandshakePolicy, 'allowedOrigins' | 'requireOrigin'>
  /** auth.mode=jwt; undefined when it is none. */
  auth?: EdgeAuth | undefined
  /** The same table as the MQTT endpoint's: a routed WebSocket counts as one of the client's. */
  clients?: ClientTable | undefined
}

/**
 * The routed upgrade's list. Checks about the client rather than the MQTT request come after
 * the origin, in the order of websocketSteps(): per-client limits, then the token. The slot
 * the limits step takes is given back when the tunnel's client socket closes (server.ts).
 */
export function routedUpgradeSteps(options: RoutedStepOptions): Step<RoutedUpgrade>[] {
  return [
    trustedClientCertificate(options.tls),
    notShuttingDown(options.closing),
    routeTakesWebSockets(),
    webSocketRequest(),
    allowedOrigin(options.policy),
    ...clientLimits(options.clients),
    ...(options.auth ? [routedTokenChecked(options.auth, options.tls)] : []),
  ]
}

/** An mqtts client, decided after its TLS handshake and before any byte reaches the broker. */
export function mqttsSteps(options: StepOptions & { tls: TlsManager }): Step<Admission>[] {
  return [
    trustedClientCertificate(options.tls),
    notShuttingDown(options.closing),
    ...clientLimits(options.clients),
    ...(options.auth ? [streamAuthenticated(options.auth, options.tls)] : []),
    underCapacity(options.capacity),
    ...brokerFirst(options),
  ]
}

// Before capacity: a client over its own limit does not take a slot from the others first.
function clientLimits(clients: ClientTable | undefined): Step<Admission>[] {
  return clients?.enabled === true ? [withinClientLimits(clients)] : []
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

/** A route with ws=false proxies plain HTTP only: its upgrades get a 404 and no backend dial. */
export function routeTakesWebSockets(): Step<RoutedUpgrade> {
  return {
    name: 'route takes WebSockets',
    run: ({ route }) => (route.ws ? undefined : Refusals.routeWithoutWebSocket(route.prefix)),
  }
}

/**
 * http-proxy destroys, without a word, an upgrade that is not a GET for "websocket": such a
 * request is answered here. The backend checks the rest of its handshake itself.
 */
export function webSocketRequest(): Step<RequestAdmission> {
  return {
    name: 'WebSocket request',
    run({ req }) {
      if (req.method !== 'GET') return Refusals.method()
      const upgrade = (req.headers.upgrade ?? '')
        .split(',')
        .map((name) => name.trim().toLowerCase())
      return upgrade.includes('websocket') ? undefined : Refusals.badUpgradeHeader()
    },
  }
}

/**
 * auth.mode=jwt: a token in the request is checked before the 101 (waiting for the JWK Set when
 * its keys have to be fetched); without one the client is let in only to show one as its
 * CONNECT password (auth.tokenFrom password), else refused 401.
 */
export function tokenChecked(auth: EdgeAuth, tls: TlsManager | undefined): Step<Upgrade> {
  return {
    name: 'token',
    async run(upgrade) {
      const decision = await auth.upgrade(upgrade.req, tls?.verdict(upgrade.socket)?.tls)
      if ('refusal' in decision) return decision.refusal
      if (!upgrade.socket.readable || !upgrade.socket.writable) return CLIENT_LEFT
      upgrade.auth = decision
      return undefined
    },
  }
}

/**
 * auth.mode=jwt for a routed upgrade: only a token in the request (or a client certificate)
 * lets it in, as there is no CONNECT password to wait for. A bearer.<token> subprotocol entry
 * is the gateway's and is taken out before the request goes on; an access_token query
 * parameter is left for the web app, which may want it.
 */
export function routedTokenChecked(
  auth: EdgeAuth,
  tls: TlsManager | undefined,
): Step<RoutedUpgrade> {
  return {
    name: 'token',
    async run(upgrade) {
      const decision = await auth.upgrade(upgrade.req, tls?.verdict(upgrade.socket)?.tls, {
        connect: false,
      })
      if ('refusal' in decision) return decision.refusal
      if (!upgrade.socket.readable || !upgrade.socket.writable) return CLIENT_LEFT
      if (auth.auth.tokenFrom.includes('subprotocol')) removeSubprotocolToken(upgrade.req)
      upgrade.auth = decision
      return undefined
    },
  }
}

/**
 * ws.allowedOrigins for a routed upgrade, as for the MQTT endpoint: a page on another origin
 * must not open a WebSocket to the web app with the user's cookies either.
 */
export function allowedOrigin(
  policy: Pick<HandshakePolicy, 'allowedOrigins' | 'requireOrigin'>,
): Step<RequestAdmission> {
  return {
    name: 'origin',
    run: ({ req }) => originRefusal(req, policy),
  }
}

/** An mqtts client has no request: a certificate (auth.allowClientCert) or its password. */
export function streamAuthenticated(auth: EdgeAuth, tls: TlsManager): Step<Admission> {
  return {
    name: 'token',
    run(admission) {
      const decision = auth.stream(tls.verdict(admission.socket)?.tls)
      if ('refusal' in decision) return decision.refusal
      admission.auth = decision
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

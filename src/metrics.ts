// Every Prometheus metric Drawbridge exposes, in one place, on a registry of its own (never
// prom-client's global one, so two gateways in one process, as in the tests, never mix).
//
// The per-message path stays as fast as without metrics: a Connection only bumps plain number
// fields. Those are folded into the registry at scrape time by `collect` callbacks: the totals
// of closed connections (added once, when a connection finishes) plus the live connections'
// current counts. A connection's counts move from "live" to "closed" in the same tick it leaves
// the live set, so the counters never go backwards.
//
// Naming follows https://prometheus.io/docs/practices/naming/: `drawbridge_` prefix, base units
// (seconds, bytes), `_total` on counters. The default process metrics (process_*, nodejs_*) keep
// their standard names so stock dashboards work with them.
import {
  collectDefaultMetrics,
  Counter,
  Gauge,
  Histogram,
  Registry,
  type PrometheusContentType,
} from 'prom-client'
import { AUTH_REFUSAL_REASONS, type AuthRefusalReason } from './auth/verifier.js'
import type { Initiator } from './bridge/close-codes.js'
import type { ProxyRefusalReason } from './edge/proxy-protocol-in.js'
import { REFUSAL_REASONS, type RefusalReason } from './edge/refusals.js'
import { MALFORMED_REASONS, type MalformedReason } from './mqtt/errors.js'
import { PACKET_NAMES } from './mqtt/packet.js'
import type { ConnectAttempt, ConnectFailureReason } from './upstream/connector.js'

export const METRIC_PREFIX = 'drawbridge_'

const MISNAMED_DEFAULT_GAUGES = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
]

/** Metric names without the prefix; the README, dashboard and alert rules use them prefixed. */
export const METRIC = {
  connectionsActive: 'connections_active',
  connectionsTotal: 'connections_total',
  connectionDuration: 'connection_duration_seconds',
  bytes: 'bytes_total',
  frames: 'frames_total',
  upstreamConnectDuration: 'upstream_connect_duration_seconds',
  upstreamErrors: 'upstream_errors_total',
  upstreamUp: 'upstream_up',
  upstreamSocketsOpen: 'upstream_sockets_open',
  ready: 'ready',
  handshakeRejections: 'handshake_rejections_total',
  closes: 'closes_total',
  pingTimeouts: 'ping_timeouts_total',
  backpressurePauses: 'backpressure_pauses_total',
  tlsHandshakeFailures: 'tls_handshake_failures_total',
  tlsCertificateExpiry: 'tls_certificate_expiry_timestamp_seconds',
  tlsReloads: 'tls_reloads_total',
  tlsSessionsClosed: 'tls_sessions_closed_total',
  buildInfo: 'build_info',
  clientConnectionsActive: 'client_connections_active',
  clientBytes: 'client_bytes_total',
  mqttMalformed: 'mqtt_malformed_total',
  mqttRefusals: 'mqtt_refusals_total',
  mqttSubprotocolMismatch: 'mqtt_subprotocol_mismatch_total',
  identityRewrites: 'identity_rewrites_total',
  authRefusals: 'auth_refusals_total',
  proxyProtocolRefusals: 'proxy_protocol_refusals_total',
  mqttConnects: 'mqtt_connects_total',
  mqttConnacks: 'mqtt_connacks_total',
  mqttPackets: 'mqtt_packets_total',
  routeRequests: 'route_requests_total',
  routeRequestDuration: 'route_request_duration_seconds',
  ratePauses: 'rate_pauses_total',
  limitsTrackedClients: 'limits_tracked_clients',
  limitsEvictedClients: 'limits_evicted_clients_total',
} as const

export type Direction = 'client_to_broker' | 'broker_to_client'

/** Why a broker connect attempt failed; a closed set so the label stays bounded. */
export type UpstreamErrorReason = ConnectFailureReason

const UPSTREAM_ERROR_REASONS = [
  'refused',
  'timeout',
  'unreachable',
  'dns',
  'reset',
  'other',
] as const satisfies readonly UpstreamErrorReason[]

/** The CONNACK reason codes MQTT 5 defines (3.2.2.2), so the code label stays bounded. */
const MQTT5_CONNACK_CODES = new Set([
  0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8c, 0x90, 0x95, 0x97,
  0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9f,
])

/**
 * Why an MQTT guard closed a connection, or (upstream.connectOn=connect) why its CONNECT was
 * answered with a CONNACK "Server unavailable": no broker accepted, or one did not answer.
 */
export type MqttRefusalReason =
  | 'connect_timeout'
  | 'packet_too_large'
  | 'upstream_refused'
  | 'upstream_timeout'
  | 'publish_denied'
  | 'subscribe_denied'
  | 'bad_permissions'

const MQTT_REFUSAL_REASONS = [
  'connect_timeout',
  'packet_too_large',
  'upstream_refused',
  'upstream_timeout',
  'publish_denied',
  'subscribe_denied',
  'bad_permissions',
] as const satisfies readonly MqttRefusalReason[]

/** The plain-number counters a live connection keeps; read at scrape time only. */
export interface ConnectionCounters {
  readonly listener: string
  /** Client certificate CN when there is one, else the remote IP address (no port). */
  readonly clientIdentity: string
  readonly openedAt: number
  readonly bytesToBroker: number
  readonly bytesToClient: number
  readonly framesToBroker: number
  readonly framesToClient: number
  readonly pausesToBroker: number
  readonly pausesToClient: number
}

/** A finished connection: its final counters and how it ended. */
export interface FinishedConnection extends ConnectionCounters {
  readonly pingTimedOut: boolean
  readonly closed: { readonly code: number | undefined; readonly initiator: Initiator } | undefined
}

export interface MetricsOptions {
  version: string
  /** metrics.perClient */
  perClient: boolean
  /** metrics.maxClientSeries */
  maxClientSeries: number
  /** Node and process metrics (CPU, memory, event loop, GC); on unless a test turns them off. */
  processMetrics?: boolean
}

/** The label under which clients past metrics.maxClientSeries are counted. */
export const OTHER_CLIENTS = 'other'

// Connection lifetimes: a page reload is seconds, a dashboard tab hours, a device days.
const CONNECTION_DURATION_BUCKETS = [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86_400]
// A TCP connect on a LAN is about a millisecond; the top buckets catch SYN retransmits (1 s, 3 s).
const CONNECT_DURATION_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
]

// A web app's requests: most in milliseconds, a slow page in seconds; the top is the default
// route timeout (30 s), where the gateway answers 504.
const ROUTE_DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

/** A routed request's outcome: its status class, or `aborted` when the client left first. */
export type RouteStatusClass = '1xx' | '2xx' | '3xx' | '4xx' | '5xx' | 'aborted'

interface Totals {
  bytesToBroker: number
  bytesToClient: number
  framesToBroker: number
  framesToClient: number
  pausesToBroker: number
  pausesToClient: number
}

function zeroTotals(): Totals {
  return {
    bytesToBroker: 0,
    bytesToClient: 0,
    framesToBroker: 0,
    framesToClient: 0,
    pausesToBroker: 0,
    pausesToClient: 0,
  }
}

function copyTotals(from: Totals): Totals {
  const copy = zeroTotals()
  addTotals(copy, from)
  return copy
}

function addTotals(into: Totals, from: ConnectionCounters | Totals): void {
  into.bytesToBroker += from.bytesToBroker
  into.bytesToClient += from.bytesToClient
  into.framesToBroker += from.framesToBroker
  into.framesToClient += from.framesToClient
  into.pausesToBroker += from.pausesToBroker
  into.pausesToClient += from.pausesToClient
}

/**
 * MQTT packets by type (index 0-15) each way, for the whole process: the framers of every
 * connection count into it (mqtt.inspect). One pair of arrays, not one per connection: the
 * metric has no per-connection or per-client label, and per connection they cost 430 bytes.
 */
export interface PacketCounts {
  readonly toBroker: Float64Array
  readonly toClient: Float64Array
}

export class Metrics {
  readonly registry = new Registry()
  readonly #packets: PacketCounts = {
    toBroker: new Float64Array(16),
    toClient: new Float64Array(16),
  }

  readonly #options: MetricsOptions
  readonly #sources: (() => Iterable<ConnectionCounters>)[] = []
  /** Listener names, so connections_active shows 0 for an idle listener instead of nothing. */
  readonly #listeners = new Set<string>()
  readonly #closed = zeroTotals()
  /** Per-client totals of closed connections (metrics.perClient). */
  readonly #closedByClient = new Map<string, Totals>()
  /** Client identity -> its label: itself, or OTHER_CLIENTS once the cap is reached. */
  readonly #clientLabels = new Map<string, string>()
  #ownClientLabels = 0
  #upstreamSockets: () => number = () => 0
  #readiness: () => { ready: boolean; upstreamUp: boolean } = () => ({
    ready: false,
    upstreamUp: false,
  })

  readonly #connectionsTotal: Counter<'listener'>
  readonly #connectionDuration: Histogram
  readonly #upstreamConnectDuration: Histogram
  readonly #upstreamErrors: Counter<'reason'>
  readonly #handshakeRejections: Counter<'reason'>
  readonly #closes: Counter<'code' | 'initiator'>
  readonly #pingTimeouts: Counter
  readonly #tlsHandshakeFailures: Counter<'reason'>
  readonly #tlsCertificateExpiry: Gauge<'listener'>
  readonly #tlsReloads: Counter<'result'>
  readonly #tlsSessionsClosed: Counter<'reason'>
  readonly #mqttMalformed: Counter<'sender' | 'reason'>
  readonly #mqttRefusals: Counter<'reason'>
  readonly #mqttSubprotocolMismatch: Counter<'subprotocol' | 'level'>
  readonly #mqttConnects: Counter<'level'>
  readonly #identityRewrites: Counter<'action'>
  readonly #authRefusals: Counter<'reason'>
  readonly #proxyProtocolRefusals: Counter<'listener' | 'reason'>
  readonly #mqttConnacks: Counter<'level' | 'code'>
  readonly #routeRequests: Counter<'route' | 'status_class'>
  readonly #routeRequestDuration: Histogram<'route'>
  readonly #ratePauses: Counter<'limit'>
  readonly #evictedClients: Counter
  #trackedClients: () => number = () => 0

  constructor(options: MetricsOptions) {
    this.#options = options
    const registers = [this.registry]
    const name = (short: string): string => `${METRIC_PREFIX}${short}`
    // The collect callbacks below are plain functions so prom-client can bind `this` to the
    // metric; `self` is this Metrics object.
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this

    new Gauge({
      name: name(METRIC.connectionsActive),
      help: 'Open client connections (WebSocket, and mqtts when tcp.enabled), by listener: bridged to a broker, or (upstream.connectOn=connect) waiting for their CONNECT or its broker.',
      labelNames: ['listener'],
      registers,
      collect() {
        this.reset()
        for (const listener of self.#listeners) this.set({ listener }, 0)
        for (const c of self.#live()) this.inc({ listener: c.listener })
      },
    })
    this.#connectionsTotal = new Counter({
      name: name(METRIC.connectionsTotal),
      help: 'Client connections accepted since start (a WebSocket once its 101 is sent, an mqtts client once admitted: with its broker connected, or in connect mode before), by listener.',
      labelNames: ['listener'],
      registers,
    })
    this.#connectionDuration = new Histogram({
      name: name(METRIC.connectionDuration),
      help: 'How long finished connections were open, in seconds.',
      buckets: CONNECTION_DURATION_BUCKETS,
      registers,
    })
    // Three counters by direction, each read off the same totals at scrape time.
    const byDirection = (
      metric: string,
      help: string,
      count: (t: Totals) => readonly [toBroker: number, toClient: number],
    ): void => {
      new Counter({
        name: name(metric),
        help,
        labelNames: ['direction'],
        registers,
        collect() {
          const [toBroker, toClient] = count(self.#totals())
          this.reset()
          this.inc({ direction: 'client_to_broker' }, toBroker)
          this.inc({ direction: 'broker_to_client' }, toClient)
        },
      })
    }
    byDirection(
      METRIC.bytes,
      'Bytes bridged, by direction (client_to_broker: WebSocket payload forwarded to the broker; broker_to_client: broker bytes sent as WebSocket payload).',
      (t) => [t.bytesToBroker, t.bytesToClient],
    )
    byDirection(
      METRIC.frames,
      'WebSocket data frames bridged, by direction (broker_to_client counts one frame per chunk read from the broker).',
      (t) => [t.framesToBroker, t.framesToClient],
    )
    byDirection(
      METRIC.backpressurePauses,
      'Times one side was paused because the other could not keep up, by direction (client_to_broker: broker socket full; broker_to_client: WebSocket over limits.highWaterMark).',
      (t) => [t.pausesToBroker, t.pausesToClient],
    )
    this.#upstreamConnectDuration = new Histogram({
      name: name(METRIC.upstreamConnectDuration),
      help: 'Time for a broker to accept the TCP connection opened for a client, in seconds (successful attempts).',
      buckets: CONNECT_DURATION_BUCKETS,
      registers,
    })
    this.#upstreamErrors = new Counter({
      name: name(METRIC.upstreamErrors),
      help: 'Broker TCP connect attempts that failed, by reason (refused, timeout, unreachable, dns, reset, other).',
      labelNames: ['reason'],
      registers,
    })
    for (const reason of UPSTREAM_ERROR_REASONS) this.#upstreamErrors.inc({ reason }, 0)
    new Gauge({
      name: name(METRIC.upstreamUp),
      help: '1 when the latest readiness check reached an upstream broker over TCP, else 0.',
      registers,
      collect() {
        this.set(self.#readiness().upstreamUp ? 1 : 0)
      },
    })
    new Gauge({
      name: name(METRIC.upstreamSocketsOpen),
      help: 'Broker TCP sockets open for clients, connecting or connected. Below drawbridge_connections_active while connections wait for their CONNECT or its broker (upstream.connectOn=connect).',
      registers,
      collect() {
        this.set(self.#upstreamSockets())
      },
    })
    new Gauge({
      name: name(METRIC.ready),
      help: '1 when /readyz answers 200 (listening, broker reachable, not shutting down), else 0.',
      registers,
      collect() {
        this.set(self.#readiness().ready ? 1 : 0)
      },
    })
    // `route` is an http.routes prefix: a label bounded by the config.
    this.#routeRequests = new Counter({
      name: name(METRIC.routeRequests),
      help: 'Requests proxied to an http.routes backend (a WebSocket upgrade counts once, with the status of its handshake), by route prefix and status class (aborted: the client left before the answer).',
      labelNames: ['route', 'status_class'],
      registers,
    })
    this.#routeRequestDuration = new Histogram({
      name: name(METRIC.routeRequestDuration),
      help: 'Time from a routed request to the end of its response (for a WebSocket upgrade, to its 101 or refusal), by route prefix.',
      labelNames: ['route'],
      buckets: ROUTE_DURATION_BUCKETS,
      registers,
    })
    this.#handshakeRejections = new Counter({
      name: name(METRIC.handshakeRejections),
      help: 'Clients refused before they were bridged, by reason (one per refusal the handshake knows; mqtts refusals and connections dropped at accept for limits.acceptRate too).',
      labelNames: ['reason'],
      registers,
    })
    for (const reason of REFUSAL_REASONS) this.#handshakeRejections.inc({ reason }, 0)
    this.#closes = new Counter({
      name: name(METRIC.closes),
      help: 'Finished connections by WebSocket close code (1006: cut without a close frame; none: mqtts, which has no close codes) and initiator (client, broker, gateway).',
      labelNames: ['code', 'initiator'],
      registers,
    })
    this.#pingTimeouts = new Counter({
      name: name(METRIC.pingTimeouts),
      help: 'Connections terminated because the client did not answer a ping within ws.pongTimeout.',
      registers,
    })
    this.#tlsHandshakeFailures = new Counter({
      name: name(METRIC.tlsHandshakeFailures),
      help: 'TLS handshakes that failed on a wss listener, by reason.',
      labelNames: ['reason'],
      registers,
    })
    this.#tlsCertificateExpiry = new Gauge({
      name: name(METRIC.tlsCertificateExpiry),
      help: 'When the certificate served by a listener expires, as a Unix timestamp in seconds.',
      labelNames: ['listener'],
      registers,
    })
    this.#tlsReloads = new Counter({
      name: name(METRIC.tlsReloads),
      help: 'Certificate reloads, by result (success, failure; a failure keeps the last good certificate).',
      labelNames: ['result'],
      registers,
    })
    for (const result of ['success', 'failure']) this.#tlsReloads.inc({ result }, 0)
    this.#tlsSessionsClosed = new Counter({
      name: name(METRIC.tlsSessionsClosed),
      help: 'Open sessions closed because their client certificate stopped being valid (tls.closeRevoked), by reason (revoked, expired).',
      labelNames: ['reason'],
      registers,
    })
    for (const reason of ['revoked', 'expired']) this.#tlsSessionsClosed.inc({ reason }, 0)
    this.#mqttMalformed = new Counter({
      name: name(METRIC.mqttMalformed),
      help: 'Connections closed because a packet broke the MQTT framing rules (mqtt.inspect), by sender (client: closed 1002; broker: 1011) and reason (the rule the framer names).',
      labelNames: ['sender', 'reason'],
      registers,
    })
    for (const sender of ['client', 'broker']) {
      for (const reason of MALFORMED_REASONS) this.#mqttMalformed.inc({ sender, reason }, 0)
    }
    this.#mqttRefusals = new Counter({
      name: name(METRIC.mqttRefusals),
      help: 'Connections closed by an MQTT guard (mqtt.inspect), by reason (connect_timeout: no CONNECT within mqtt.connectTimeout, closed 1008; packet_too_large: a client packet over mqtt.maxPacketSize, closed 1009), or, with upstream.connectOn=connect, answered CONNACK Server unavailable and closed 1013 (upstream_refused: no broker accepted; upstream_timeout: one did not answer in upstream.connectTimeout); with auth.permissionsClaim, closed 1008 (publish_denied, subscribe_denied: a PUBLISH or SUBSCRIBE outside the token grants, not forwarded; bad_permissions: the claim is malformed).',
      labelNames: ['reason'],
      registers,
    })
    for (const reason of MQTT_REFUSAL_REASONS) this.#mqttRefusals.inc({ reason }, 0)
    this.#mqttSubprotocolMismatch = new Counter({
      name: name(METRIC.mqttSubprotocolMismatch),
      help: 'CONNECTs whose protocol level does not go with the negotiated WebSocket subprotocol (level 4 or 5 on mqttv3.1, level 3 on mqtt), let through, by subprotocol and level.',
      labelNames: ['subprotocol', 'level'],
      registers,
    })
    this.#identityRewrites = new Counter({
      name: name(METRIC.identityRewrites),
      help: "CONNECT usernames rewritten under tls.identityAs=username: set (to the client certificate's identity) or removed (no verified certificate, or it lacks tls.identityFrom).",
      labelNames: ['action'],
      registers,
    })
    for (const action of ['set', 'removed']) this.#identityRewrites.inc({ action }, 0)
    this.#authRefusals = new Counter({
      name: name(METRIC.authRefusals),
      help: 'Clients refused under auth.mode=jwt, before the 101 or at their CONNECT, by reason (missing, too_large, malformed, algorithm, signature, unknown_key, keys_unavailable, expired, not_yet_valid, issuer, audience, claim, client_id).',
      labelNames: ['reason'],
      registers,
    })
    for (const reason of AUTH_REFUSAL_REASONS) this.#authRefusals.inc({ reason }, 0)
    this.#proxyProtocolRefusals = new Counter({
      name: name(METRIC.proxyProtocolRefusals),
      help: 'Connections dropped under listen.proxyProtocol before they were served, by listener and reason (unlisted_peer, missing, malformed, wrong_version, timeout).',
      labelNames: ['listener', 'reason'],
      registers,
    })
    this.#mqttConnects = new Counter({
      name: name(METRIC.mqttConnects),
      help: 'Client CONNECTs read whole and sound (mqtt.inspect), by protocol level (3: MQTT 3.1, 4: 3.1.1, 5: 5).',
      labelNames: ['level'],
      registers,
    })
    for (const level of ['3', '4', '5']) this.#mqttConnects.inc({ level }, 0)
    this.#mqttConnacks = new Counter({
      name: name(METRIC.mqttConnacks),
      help: 'Broker CONNACKs (mqtt.inspect), by the protocol level of the CONNECT and return code (3, 4: 0-5) or reason code (5), in decimal; codes the specification does not define as "other".',
      labelNames: ['level', 'code'],
      registers,
    })
    new Counter({
      name: name(METRIC.mqttPackets),
      help: 'MQTT packets bridged (mqtt.inspect), by type (CONNECT, PUBLISH, ...) and direction.',
      labelNames: ['type', 'direction'],
      registers,
      collect() {
        this.reset()
        for (let type = 1; type < 16; type++) {
          const name = PACKET_NAMES[type] as string // 16 names
          this.inc({ type: name, direction: 'client_to_broker' }, self.#packets.toBroker[type])
          this.inc({ type: name, direction: 'broker_to_client' }, self.#packets.toClient[type])
        }
      },
    })
    this.#ratePauses = new Counter({
      name: name(METRIC.ratePauses),
      help: 'Times a client was paused for sending toward the broker faster than its rate, by limit (message: limits.messageRate; byte: limits.byteRate).',
      labelNames: ['limit'],
      registers,
    })
    for (const limit of ['message', 'byte']) this.#ratePauses.inc({ limit }, 0)
    new Gauge({
      name: name(METRIC.limitsTrackedClients),
      help: 'Client addresses the per-client limits remember now (at most limits.trackedClients).',
      registers,
      collect() {
        this.set(self.#trackedClients())
      },
    })
    this.#evictedClients = new Counter({
      name: name(METRIC.limitsEvictedClients),
      help: 'Client addresses the per-client limits forgot, least recently seen first, to stay within limits.trackedClients.',
      registers,
    })
    new Gauge({
      name: name(METRIC.buildInfo),
      help: 'Always 1; the labels say which Drawbridge and Node.js versions are running.',
      labelNames: ['version', 'node'],
      registers,
    }).set({ version: options.version, node: process.version }, 1)

    if (options.perClient) this.#registerPerClient(name, registers)
    if (options.processMetrics !== false) {
      collectDefaultMetrics({ register: this.registry })
      // prom-client's totals of these three are gauges named like counters, which promtool
      // flags; the per-type gauges beside them stay (sum(nodejs_active_handles) is the total).
      for (const gaugeNamedLikeACounter of MISNAMED_DEFAULT_GAUGES) {
        this.registry.removeSingleMetric(gaugeNamedLikeACounter)
      }
    }
  }

  get contentType(): PrometheusContentType {
    return this.registry.contentType
  }

  /** The Prometheus text exposition of every metric. */
  render(): Promise<string> {
    return this.registry.metrics()
  }

  /** Where a listener's live connections are read from at scrape time. */
  addConnectionSource(listener: string, source: () => Iterable<ConnectionCounters>): void {
    this.#listeners.add(listener)
    this.#connectionsTotal.inc({ listener }, 0)
    this.#sources.push(source)
  }

  /** Where drawbridge_ready and drawbridge_upstream_up are read from at scrape time. */
  setReadinessSource(source: () => { ready: boolean; upstreamUp: boolean }): void {
    this.#readiness = source
  }

  /** Where drawbridge_limits_tracked_clients is read from at scrape time. */
  setTrackedClientsSource(source: () => number): void {
    this.#trackedClients = source
  }

  /** A client paused for limits.messageRate or limits.byteRate. */
  ratePaused(limit: 'message' | 'byte'): void {
    this.#ratePauses.inc({ limit })
  }

  /** The per-client table forgot a client to stay within limits.trackedClients. */
  clientEvicted(): void {
    this.#evictedClients.inc()
  }

  /** Where drawbridge_upstream_sockets_open is read from at scrape time. */
  setUpstreamSocketsSource(source: () => number): void {
    this.#upstreamSockets = source
  }

  connectionOpened(listener: string): void {
    this.#connectionsTotal.inc({ listener })
  }

  /** Call in the same tick the connection leaves its live source, so no count is lost or doubled. */
  connectionClosed(connection: FinishedConnection): void {
    addTotals(this.#closed, connection)
    if (this.#options.perClient) {
      const label = this.#clientLabel(connection.clientIdentity)
      let totals = this.#closedByClient.get(label)
      if (totals === undefined) {
        totals = zeroTotals()
        this.#closedByClient.set(label, totals)
      }
      addTotals(totals, connection)
    }
    this.#connectionDuration.observe((Date.now() - connection.openedAt) / 1000)
    if (connection.closed !== undefined) {
      this.#closes.inc({
        // mqtts has no close codes: its closes are counted under code "none".
        code: String(connection.closed.code ?? 'none'),
        initiator: connection.closed.initiator,
      })
    }
    if (connection.pingTimedOut) this.#pingTimeouts.inc()
  }

  /** Called once per route at start, so each has its series from the first scrape. */
  routeDeclared(route: string): void {
    this.#routeRequests.inc({ route, status_class: '2xx' }, 0)
    this.#routeRequests.inc({ route, status_class: '5xx' }, 0)
  }

  routeRequest(route: string, statusClass: RouteStatusClass, seconds: number): void {
    this.#routeRequests.inc({ route, status_class: statusClass })
    this.#routeRequestDuration.observe({ route }, seconds)
  }

  handshakeRejected(reason: RefusalReason): void {
    this.#handshakeRejections.inc({ reason })
  }

  /** One broker connect attempt: its latency when it succeeded, its reason when it failed. */
  upstreamAttempt(attempt: ConnectAttempt): void {
    if (attempt.ok) this.#upstreamConnectDuration.observe(attempt.seconds)
    else this.#upstreamErrors.inc({ reason: attempt.reason })
  }

  // TLS (issue 4) reports through these three; the names and labels are fixed here.
  tlsHandshakeFailure(reason: string): void {
    this.#tlsHandshakeFailures.inc({ reason })
  }

  tlsReload(result: 'success' | 'failure'): void {
    this.#tlsReloads.inc({ result })
  }

  tlsSessionClosed(reason: 'revoked' | 'expired'): void {
    this.#tlsSessionsClosed.inc({ reason })
  }

  /** One MQTT packet of `type` (0-15) read by a framer on its way (mqtt.inspect). */
  mqttPacket(direction: keyof PacketCounts, type: number): void {
    const counts = this.#packets[direction]
    counts[type] = (counts[type] as number) + 1 // 16 slots: a type is 4 bits
  }

  /** A malformed MQTT packet closed a connection (once per connection). */
  mqttMalformed(sender: 'client' | 'broker', reason: MalformedReason): void {
    this.#mqttMalformed.inc({ sender, reason })
  }

  /** A client's CONNECT was read (once per connection). */
  mqttConnect(level: 3 | 4 | 5): void {
    this.#mqttConnects.inc({ level: String(level) })
  }

  /** A broker's CONNACK was read (once per connection). */
  mqttConnack(level: number, code: number): void {
    const known = level === 5 ? MQTT5_CONNACK_CODES.has(code) : code <= 5
    this.#mqttConnacks.inc({ level: String(level), code: known ? String(code) : 'other' })
  }

  /** An MQTT guard closed a connection. */
  mqttRefused(reason: MqttRefusalReason): void {
    this.#mqttRefusals.inc({ reason })
  }

  /** A CONNECT's level did not go with the subprotocol (labels: 2 subprotocols x 3 levels). */
  mqttSubprotocolMismatch(subprotocol: string, level: number): void {
    this.#mqttSubprotocolMismatch.inc({ subprotocol, level: String(level) })
  }

  /** listen.proxyProtocol dropped a connection (labels: 3 listeners, 5 reasons). */
  proxyProtocolRefused(listener: 'ws' | 'wss' | 'mqtts', reason: ProxyRefusalReason): void {
    this.#proxyProtocolRefusals.inc({ listener, reason })
  }

  /** auth.mode=jwt refused a client (labels: 13 reasons). */
  authRefused(reason: AuthRefusalReason): void {
    this.#authRefusals.inc({ reason })
  }

  /** tls.identityAs=username changed a CONNECT's username (labels: 2 actions). */
  identityRewrite(action: 'set' | 'removed'): void {
    this.#identityRewrites.inc({ action })
  }

  setCertificateExpiry(listener: string, notAfter: Date): void {
    this.#tlsCertificateExpiry.set({ listener }, Math.floor(notAfter.getTime() / 1000))
  }

  *#live(): Generator<ConnectionCounters> {
    for (const source of this.#sources) yield* source()
  }

  #totals(): Totals {
    const totals = copyTotals(this.#closed)
    for (const c of this.#live()) addTotals(totals, c)
    return totals
  }

  /**
   * The first maxClientSeries distinct identities keep their own label for the life of the
   * process (a counter's series must not vanish); every later one is counted as "other".
   */
  #clientLabel(identity: string): string {
    let label = this.#clientLabels.get(identity)
    if (label === undefined) {
      label = this.#ownClientLabels < this.#options.maxClientSeries ? identity : OTHER_CLIENTS
      if (label !== OTHER_CLIENTS) this.#ownClientLabels++
      this.#clientLabels.set(identity, label)
    }
    return label
  }

  #registerPerClient(name: (short: string) => string, registers: Registry[]): void {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this
    new Gauge({
      name: name(METRIC.clientConnectionsActive),
      help: `Open connections by client identity (certificate CN, else IP address); at most metrics.maxClientSeries identities, the rest as client="${OTHER_CLIENTS}".`,
      labelNames: ['client'],
      registers,
      collect() {
        this.reset()
        for (const c of self.#live()) this.inc({ client: self.#clientLabel(c.clientIdentity) })
      },
    })
    new Counter({
      name: name(METRIC.clientBytes),
      help: `Bytes bridged by client identity and direction; at most metrics.maxClientSeries identities, the rest as client="${OTHER_CLIENTS}".`,
      labelNames: ['client', 'direction'],
      registers,
      collect() {
        const byClient = new Map<string, Totals>()
        for (const [label, totals] of self.#closedByClient) byClient.set(label, copyTotals(totals))
        for (const c of self.#live()) {
          const label = self.#clientLabel(c.clientIdentity)
          let totals = byClient.get(label)
          if (totals === undefined) {
            totals = zeroTotals()
            byClient.set(label, totals)
          }
          addTotals(totals, c)
        }
        this.reset()
        for (const [client, t] of byClient) {
          this.inc({ client, direction: 'client_to_broker' }, t.bytesToBroker)
          this.inc({ client, direction: 'broker_to_client' }, t.bytesToClient)
        }
      },
    })
  }
}

export function createMetrics(options: MetricsOptions): Metrics {
  return new Metrics(options)
}

// One client connection, whatever listener accepted it: a client side (a WebSocket, or the TLS
// socket of an mqtts client; client-side.ts) and the broker's TCP socket, bytes piped both ways
// unchanged. A WebSocket frame may carry part of an MQTT packet or several [MQTT-6.0.0-2], so
// the bridge never re-frames: it forwards the byte stream.
//
// With mqtt.inspect (the default) each direction goes through a streaming MQTT framer
// (mqtt/framer.ts) that says how much of each chunk is safe to forward; what it passes is
// forwarded byte for byte, so the stream is unchanged. A malformed packet is never forwarded:
// from the client it closes the connection with 1002, from the broker with 1011, both with the
// framer's message as the reason. Without it no framer is allocated and the pipe is blind.
//
// The broker socket is there from the start (upstream.connectOn=upgrade: the admission dialled
// it before the client was let in), or it comes later (connect): the client's bytes are held
// until its CONNECT has been read, the broker is dialled for it, and the held bytes are written
// first, unchanged. When no broker accepts, the client is answered in MQTT (a CONNACK "Server
// unavailable") and closed with 1013; when the client leaves first, the dial is aborted.
//
// Memory per connection is bounded in both directions:
// - client -> broker: when the broker socket's write buffer passes highWaterMark, the client
//   side stops reading (ws.pause() stops the TCP socket) until 'drain'.
// - broker -> client: when the client side's buffered amount would pass highWaterMark, the
//   broker socket stops reading until the buffer is down to about half the mark.
import type { Socket } from 'node:net'
import { performance } from 'node:perf_hooks'
import type { VerifiedToken } from '../auth/token.js'
import type { Affinity, IdentityFrom } from '../config/schema.js'
import type { UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import {
  notAuthorizedConnack,
  serverUnavailableCode,
  serverUnavailableConnack,
} from '../mqtt/connack.js'
import type { ConnackInfo, ConnectInfo } from '../mqtt/connect.js'
import { MqttFramer, type FramerEvents, type FramerResult } from '../mqtt/framer.js'
import { certificateIdentity, connectPassword, rewriteConnectUsername } from '../mqtt/identity.js'
import type { MqttMalformedError } from '../mqtt/errors.js'
import type { PacketTypeValue, ProtocolLevel } from '../mqtt/packet.js'
import { brokerOrder } from '../upstream/affinity.js'
import type { BrokerConnector, ClientConnectOutcome, Upstream } from '../upstream/connector.js'
import type { ProxyClient } from '../upstream/proxy-header.js'
import type { TokenFailure } from '../auth/verifier.js'
import type { ClientEvents, ClientSide } from './client-side.js'
import {
  claimedUsername,
  clientIdRefusal,
  connectRefusal,
  type ConnectionAuth,
} from './connect-auth.js'
import {
  CloseCode,
  CloseReason,
  fitCloseReason,
  type CloseCodeValue,
  type Initiator,
} from './close-codes.js'
import { Goodbyes, type Goodbye } from './goodbyes.js'
import { TopicGuard, type PermissionsPolicy, type TopicRefusal } from './topic-guard.js'
import { ReadRate, type RateHolder, type ReadRateLimits, type ReadRateView } from './rate.js'

/** How long one side may stay half-open after the other closed before it is destroyed. */
export const HALF_OPEN_TIMEOUT_MS = 2_000

/**
 * How long a goodbye waits for the broker packet in flight to end before the DISCONNECT can go
 * (see goodbye()). Ample for a packet already on its way; a client that cannot take the rest
 * of one within a second would not read a DISCONNECT soon either.
 */
export const GOODBYE_WAIT_MS = 1_000

// Each broker socket points back to its Connection through this key, so the event listeners
// can be shared functions (static methods below) instead of closures per connection.
const OWNER = Symbol('drawbridge.connection')

interface Owned {
  [OWNER]: Connection
}

/** A verified client certificate, as it travels with its connection (log lines, /connections). */
export interface ClientCertInfo {
  /** Subject common name ('' when the subject has none). */
  subject: string
  /** subjectAltName entries as OpenSSL prints them: "DNS:device-7", "IP Address:10.0.0.7". */
  sans: string[]
  /** Hex, upper case, as Node prints it. */
  serial: string
  fingerprint256: string
  issuer: string
  validTo: string
}

/** TLS details of a connection that arrived over wss:// (or mqtts). */
export interface ConnectionTls {
  /** Negotiated version, e.g. TLSv1.3. */
  protocol: string
  cipher: string
  /** Present only when the client sent a certificate that tls.ca verified. */
  clientCert?: ClientCertInfo
}

export interface ConnectionInfo {
  id: string
  /** Name of the listener that accepted it (the `listener` label of the metrics). */
  listener: string
  /** The TCP peer, host:port. */
  remoteAddress: string
  /** The client's IP: the peer's, or the one a trusted proxy reported (http.trustedProxies). */
  clientAddress: string
  /** True when clientAddress came from a trusted proxy's header rather than the TCP peer. */
  forwarded: boolean
  /** The browser's Origin header, when one was sent. */
  origin?: string | undefined
  /** The negotiated WebSocket subprotocol; false when none was (and always on mqtts). */
  protocol: string | false
  /** Absent on plain ws:// connections. */
  tls?: ConnectionTls
  /**
   * upstream.proxyProtocol on: who the PROXY header names. Connect mode dials with it; in
   * upgrade mode the admission already did.
   */
  proxy?: ProxyClient | undefined
  /**
   * auth.mode=jwt: the token the client was let in with (found before the 101, or its verified
   * client certificate); undefined when its CONNECT password is to carry it (Connection.token
   * is set once that is verified) or without auth.
   */
  token?: VerifiedToken | undefined
  /** Gives back what the admission took for this client (a per-client slot), once, at close. */
  release?: (() => void) | undefined
}

/** What the MQTT framers of a connection are told (mqtt.*). */
export interface MqttInspection {
  /** mqtt.inspect: false pipes the bytes blind, with no framer. */
  inspect: boolean
  /** mqtt.maxPacketSize: the largest client packet, fixed header included. */
  maxPacketSize: number
}

/** The WebSocket subprotocol that names each protocol level (MQTT 3.1 is mqttv3.1). */
function subprotocolMatches(protocol: string, level: number): boolean {
  if (protocol === 'mqttv3.1') return level === 3
  if (protocol === 'mqtt') return level === 4 || level === 5
  return true
}

/** upstream.connectOn=connect: where a connection gets its broker once its CONNECT is read. */
export interface BrokerDial {
  connector: BrokerConnector
  /** upstream.affinity: the CONNECT field that orders the brokers. */
  affinity: Affinity
}

/** tls.identityAs=username: the CONNECT's username becomes the certificate's identity. */
export interface IdentityRewrite {
  /** tls.identityFrom. */
  from: IdentityFrom
}

export interface ConnectionOptions {
  highWaterMark: number
  mqtt: MqttInspection
  /** Set when tls.identityAs=username (needs mqtt.inspect), else undefined. */
  identity?: IdentityRewrite | undefined
  /** auth.permissionsClaim, when set (needs mqtt.inspect): topics are judged by the token. */
  permissions?: PermissionsPolicy | undefined
  /** Set in connect mode (the connections come without a broker socket), else undefined. */
  dial: BrokerDial | undefined
  /**
   * auth.mode=jwt (needs mqtt.inspect): the CONNECT is held until the token allows it, its
   * username set from the token's claim; undefined without auth.
   */
  auth?: ConnectionAuth | undefined
  /** limits.messageRate and limits.byteRate, client to broker; undefined or 0: off. */
  rate?: ReadRateLimits | undefined
  /** Counts what the framers find (malformed packets); the byte counts stay plain fields. */
  metrics: Metrics
  /** The connection logs through a child of it that names the connection and its listener. */
  log: Logger
  /** Called once, after both sides are closed. */
  onClose: (connection: Connection) => void
}

/** What the close log line and the metrics report about a finished connection. */
export interface CloseSummary {
  /** The WebSocket close code; undefined on a client side without close codes (mqtts). */
  code: number | undefined
  initiator: Initiator
  reason: string
}

// The broker-side framer's events. One small object per inspected connection (a class, so no
// closure): the Connection itself takes the client-side framer's.
class BrokerFramerEvents implements FramerEvents {
  readonly #connection: Connection

  constructor(connection: Connection) {
    this.#connection = connection
  }

  mqttPacket(type: PacketTypeValue): boolean {
    return this.#connection.brokerPacket(type)
  }

  mqttConnack(info: ConnackInfo): void {
    this.#connection.brokerConnack(info)
  }
}

/** A CONNECT read, to be forwarded with `username` in place of the one sent. */
interface PendingRewrite {
  username: string | undefined
  /** The whole CONNECT as sent, fixed header included. */
  size: number
  level: ProtocolLevel
  /** auth.mode=jwt: held for the token check instead, which decides the username. */
  authorize?: ConnectInfo
}

/** Who the client said it is, from its CONNECT (never the password): log lines, /connections. */
export interface MqttSession {
  clientId: string
  /** Undefined when the CONNECT carries no username. */
  username: string | undefined
  protocolLevel: 3 | 4 | 5
  /** Seconds; 0: keep alive off. */
  keepalive: number
}

export class Connection implements ClientEvents, FramerEvents, RateHolder {
  readonly id: string
  readonly listener: string
  readonly remoteAddress: string
  readonly clientAddress: string
  readonly forwarded: boolean
  readonly origin: string | undefined
  readonly protocol: string | false
  /** host:port of the broker; undefined until one has accepted (connect mode). */
  broker: string | undefined
  readonly tls: ConnectionTls | undefined
  readonly openedAt = Date.now()

  bytesToBroker = 0
  bytesToClient = 0
  /** WebSocket frames each way (a broker read is sent as one frame); 0 on mqtts. */
  framesToBroker = 0
  framesToClient = 0
  lastActivity = this.openedAt
  /** Client -> broker paused because the broker socket is full. */
  pausedToBroker = false
  /** Broker -> client paused because the client side is backed up. */
  pausedToClient = false
  /** How many times each direction was paused (backpressure_pauses_total). */
  pausesToBroker = 0
  pausesToClient = 0
  /** What the CONNECT said, once it has been read (mqtt.inspect). */
  mqtt: MqttSession | undefined
  /** Ended by the ping sweep (ping_timeouts_total). */
  pingTimedOut = false
  /**
   * auth.mode=jwt: the token that let the client in; set at accept for one found before the
   * 101, by tokenVerified() once a CONNECT password token has passed. Never the token itself.
   */
  token: VerifiedToken | undefined
  closed: CloseSummary | undefined

  readonly #client: ClientSide
  /** Connect mode with upstream.proxyProtocol: what the dial's PROXY header says. */
  readonly #proxy: ProxyClient | undefined
  /** The broker socket; undefined until a broker has accepted (connect mode). */
  #upstream: Socket | undefined
  /** Connect mode: the dial in flight, aborted when the connection closes first. */
  #dial: AbortController | undefined
  /** Connect mode: the client's bytes, in order, until the broker is there to take them. */
  #held: Buffer[] | undefined
  #heldBytes = 0
  readonly #options: ConnectionOptions
  readonly #release: (() => void) | undefined
  /** limits.messageRate/byteRate; undefined when both are off. */
  readonly #rate: ReadRate | undefined
  /** Names the connection and listener; once the CONNECT is read, the client id too. */
  #log: Logger
  #pingSentAt = 0
  #pending: CloseSummary | undefined
  #finished = false
  #closeWaiters: (() => void)[] | undefined
  #halfOpenTimer: NodeJS.Timeout | undefined
  /** A send with the low-water callback is in flight (see brokerData). */
  #lowWaterPending = false
  /** Broker socket corked until the end of this tick (see clientData). */
  #corked = false
  /** The MQTT framers (mqtt.inspect); undefined when the pipe is blind. */
  readonly #fromClient: MqttFramer | undefined
  readonly #fromBroker: MqttFramer | undefined
  /** A framer stopped a direction: what it said has been acted on once. */
  #inspectStopped = false
  /** The client's CONNECT has been read whole (and forwarded). */
  #connectRead = false
  /** tls.identityAs: the CONNECT just read is to be forwarded with this username instead. */
  #rewrite: PendingRewrite | undefined
  /** auth.mode=jwt: client bytes are held until the CONNECT's token check has answered. */
  #authHold = false
  /** The broker's CONNACK has been read (and forwarded), and it accepted the client. */
  #connackAccepted = false
  /** The size of the client packet refused for mqtt.maxPacketSize, else 0. */
  #refusedSize = 0
  /** Broker bytes are no longer forwarded: the gateway sent the client a DISCONNECT. */
  #toClientStopped = false
  /** A goodbye waiting for the broker stream to reach a packet boundary (see goodbye()). */
  #awaitedGoodbye: Goodbye | undefined
  #goodbyeTimer: NodeJS.Timeout | undefined
  /** auth.permissionsClaim: the token's grants, asked per PUBLISH and SUBSCRIBE. */
  readonly #guard: TopicGuard | undefined
  /** The PUBLISH or SUBSCRIBE the guard refused (the framer stopped before it). */
  #topicRefusal: TopicRefusal | undefined
  /** The token's subject, for the refusal log lines. */
  #subject: string | undefined
  /** The CONNECT's will, read before the token was known: judged once it is. */
  #pendingWill: { topic: string; level: ProtocolLevel } | undefined

  /** `upstream` is the broker the admission connected; undefined in connect mode. */
  constructor(
    client: ClientSide,
    upstream: Upstream | undefined,
    info: ConnectionInfo,
    options: ConnectionOptions,
  ) {
    if (upstream === undefined && (options.dial === undefined || !options.mqtt.inspect)) {
      // Without a dial, or without the framer that reads the CONNECT, nothing would connect it.
      throw new TypeError('a connection without a broker needs connect mode and mqtt.inspect')
    }
    this.id = info.id
    this.listener = info.listener
    this.remoteAddress = info.remoteAddress
    this.clientAddress = info.clientAddress
    this.forwarded = info.forwarded
    this.origin = info.origin
    this.protocol = info.protocol
    this.tls = info.tls
    this.token = info.token
    this.#proxy = info.proxy
    this.#client = client
    this.#options = options
    this.#release = info.release
    this.#rate = options.rate && ReadRate.for(options.rate, this)
    this.#log = options.log.child({ conn: this.id, listener: this.listener })
    if (options.mqtt.inspect) {
      if (options.permissions !== undefined) this.#guard = new TopicGuard(options.permissions)
      const framers = MqttFramer.pair({
        client: this,
        broker: new BrokerFramerEvents(this),
        // Permissions read topics; a SUBSCRIBE is read whole, up to the size mqttPacket allows.
        ...(this.#guard && { topics: { maxSubscribeSize: options.mqtt.maxPacketSize } }),
      })
      this.#fromClient = framers.fromClient
      this.#fromBroker = framers.fromBroker
    }

    if (upstream !== undefined) this.#bindUpstream(upstream)
    client.bind(this)

    this.#log.info(
      {
        remote: this.remoteAddress,
        ...(this.forwarded && { client: this.clientAddress }),
        ...(this.origin !== undefined && { origin: this.origin }),
        protocol: this.protocol,
        broker: this.broker,
        ...(this.tls && { tls: this.tls }),
        ...(this.token && { tokenSource: this.token.source, sub: this.token.subject }),
      },
      'connection opened',
    )
    if (info.token !== undefined) this.applyTokenPermissions(info.token)
  }

  /**
   * auth.permissionsClaim: the grants of the token the client was let in with, from accept or
   * once its CONNECT password was checked. A claim that cannot be read closes the connection,
   * as does a will the grants do not allow; when the token came in the CONNECT, the CONNECT
   * must still be held (not forwarded) when this is called, since its will is judged here.
   */
  applyTokenPermissions(token: VerifiedToken): void {
    this.#subject = token.subject
    const guard = this.#guard
    const refused = guard?.setToken(token)
    if (refused === undefined) {
      const will = this.#pendingWill
      this.#pendingWill = undefined
      const willRefused = will && guard?.will(will.topic, will.level)
      if (willRefused) this.#topicDenied(willRefused)
      return
    }
    this.#log.warn(
      { subject: token.subject, tokenId: token.id, err: refused.fault },
      'token permissions claim is malformed; closing',
    )
    this.#options.metrics.mqttRefused('bad_permissions')
    this.goodbye(refused.goodbye)
    this.#upstream?.destroy()
  }

  /**
   * Who the client is for per-client metrics: its IP address without the port (a port is new on
   * every connection). A verified TLS client certificate's CN takes precedence.
   */
  get clientIdentity(): string {
    return clientIdentityOf(this.tls, this.clientAddress)
  }

  /** True when MQTT framers read both directions (mqtt.inspect); false: a blind pipe. */
  get inspecting(): boolean {
    return this.#fromClient !== undefined
  }

  /** Inspected, and the client has not sent a complete CONNECT yet (mqtt.connectTimeout). */
  get awaitingConnect(): boolean {
    return this.#fromClient !== undefined && !this.#connectRead && !this.closing
  }

  /** No CONNECT within mqtt.connectTimeout: close the client, and the broker socket at once. */
  connectTimedOut(timeout: number): void {
    this.#log.warn({ timeoutMs: timeout }, 'no CONNECT within mqtt.connectTimeout; closing')
    this.#options.metrics.mqttRefused('connect_timeout')
    this.close(CloseCode.POLICY_VIOLATION, CloseReason.connectTimeout, 'gateway')
    // Nothing of a partial CONNECT was forwarded (the framer holds it until it is whole). In
    // connect mode there is no broker socket yet, and none will be dialled.
    this.#upstream?.destroy()
  }

  // ---- the framers' events (client side here; broker side through BrokerFramerEvents) -------

  /** A client packet's header was read: refuse it when over mqtt.maxPacketSize. */
  mqttPacket(type: PacketTypeValue, _flags: number, size: number): boolean {
    if (size <= this.#options.mqtt.maxPacketSize) {
      this.#options.metrics.mqttPacket('toBroker', type)
      this.#rate?.pay(1, size)
      return true
    }
    this.#refusedSize = size
    return false
  }

  /** Topic reading (auth.permissionsClaim): false stops the framer before the PUBLISH. */
  mqttPublish(topic: string): boolean {
    this.#topicRefusal = this.#guard?.publish(topic, this.#fromClient?.level ?? 0)
    return this.#topicRefusal === undefined
  }

  mqttSubscribe(filters: readonly string[]): boolean {
    this.#topicRefusal = this.#guard?.subscribe(filters)
    return this.#topicRefusal === undefined
  }

  // A will is a PUBLISH the broker makes for the client later, so it is judged as one: now when
  // the token is known, else once it is (applyTokenPermissions). Right after mqttConnect.
  mqttWill(topic: string): boolean {
    const guard = this.#guard
    const level = this.#fromClient?.level ?? 0
    if (guard === undefined || level === 0) return true
    if (!guard.known) {
      this.#pendingWill = { topic, level }
      return true
    }
    this.#topicRefusal = guard.will(topic, level)
    return this.#topicRefusal === undefined
  }

  mqttConnect(sent: ConnectInfo): void {
    this.#connectRead = true
    // Every line from here on names the client: refusals and closes included.
    this.#log = this.#log.child({ clientId: sent.clientId })
    // auth.mode=jwt: held for the token check, which sets the username (a certificate that
    // stood in for a token goes the tls.identityAs way).
    const authorize = this.#options.auth !== undefined && this.token?.source !== 'certificate'
    if (authorize) {
      this.#authHold = true
      this.#rewrite = {
        username: sent.username,
        size: sent.size,
        level: sent.level,
        authorize: sent,
      }
    }
    const info = authorize ? sent : this.#identity(sent)
    this.mqtt = {
      clientId: info.clientId,
      username: info.username,
      protocolLevel: info.level,
      keepalive: info.keepAlive,
    }
    const { username, protocolLevel, keepalive } = this.mqtt
    this.#log.info({ username, protocolLevel, keepalive }, 'mqtt connect')
    this.#options.metrics.mqttConnect(info.level)
    if (this.protocol !== false && !subprotocolMatches(this.protocol, info.level)) {
      this.#log.info(
        { protocol: this.protocol, protocolLevel: info.level },
        'CONNECT protocol level does not match the WebSocket subprotocol; let through',
      )
      this.#options.metrics.mqttSubprotocolMismatch(this.protocol, info.level)
    }
    if (this.#upstream === undefined && !this.closing && !this.#authHold) this.#dialBroker(info)
  }

  /** A CONNECT password token has passed: the connection now carries it. */
  tokenVerified(token: VerifiedToken): void {
    this.token = token
    this.applyTokenPermissions(token)
  }

  // auth.mode=jwt, the CONNECT just read (everything after it is held meanwhile): the token it
  // came with, or the one its password carries, must let it in.
  #authorizeConnect(connect: Buffer, sent: ConnectInfo): void {
    const auth = this.#options.auth as ConnectionAuth // mqttConnect checked
    if (this.token !== undefined) {
      this.#admitConnect(auth, connect, sent, this.token, false)
      return
    }
    const password = sent.hasPassword ? connectPassword(connect, sent.level) : undefined
    if (password === undefined || password === '') {
      this.#refuseToken(auth, {
        reason: 'missing',
        message: 'no token: the CONNECT has no password',
      })
      return
    }
    auth
      .verifyPassword(password)
      .then((check) => {
        if (this.closing) return
        if (!check.ok) {
          this.#refuseToken(auth, check)
          return
        }
        this.tokenVerified(auth.accepted(check.token))
        // A permissions claim that cannot be read, or a will it does not grant, closed the
        // connection: nothing goes on. (The rule cannot see tokenVerified() close it.)
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
        if (this.closing) return
        this.#admitConnect(auth, connect, sent, check.token, true)
      })
      .catch((err: unknown) => {
        // A fault of ours (jose or a key lookup threw unexpectedly): the client is let go.
        this.#log.error({ err }, 'token check failed')
        this.close(CloseCode.INTERNAL_ERROR, 'token check failed', 'gateway')
      })
  }

  #admitConnect(
    auth: ConnectionAuth,
    connect: Buffer,
    sent: ConnectInfo,
    token: VerifiedToken,
    fromPassword: boolean,
  ): void {
    const refusal = clientIdRefusal(auth, token, sent.clientId)
    if (refusal !== undefined) {
      this.#refuseToken(auth, refusal, token)
      return
    }
    const claimed = claimedUsername(auth, token)
    const username = claimed ?? sent.username
    // The token was the password: the broker is not shown it.
    const forward =
      claimed === undefined && !fromPassword
        ? connect
        : rewriteConnectUsername(connect, username, sent.level, !fromPassword)
    if (claimed !== undefined && this.mqtt !== undefined) {
      this.mqtt.username = claimed
      this.#log.info(
        { username: claimed, sentUsername: sent.username },
        'username set from the token',
      )
    }
    this.#authHold = false
    this.#held = [forward, ...(this.#held ?? [])]
    this.#heldBytes += forward.length
    if (this.#upstream !== undefined) this.#writeHeld(this.#upstream)
    else this.#dialBroker({ ...sent, username })
  }

  // The CONNECT is never forwarded: the client is answered in MQTT, then closed.
  #refuseToken(
    auth: ConnectionAuth,
    failure: Pick<TokenFailure, 'reason' | 'message'>,
    token?: VerifiedToken,
  ): void {
    auth.refused(failure, 'password', token)
    const level = this.mqtt?.protocolLevel ?? 4
    const answer = connectRefusal(level, failure)
    this.#log.warn(
      {
        reason: failure.reason,
        detail: failure.message,
        protocolLevel: level,
        connackCode: answer.connackCode,
      },
      'CONNECT refused for its token; answered with a refusing CONNACK',
    )
    this.#held = undefined
    this.#heldBytes = 0
    this.#client.send(answer.connack)
    this.close(answer.close, fitCloseReason(`token refused: ${failure.message}`), 'gateway')
  }

  // tls.identityAs=username: the username the broker is to see is the verified certificate's
  // identity, or none. Returns the CONNECT as the broker will get it; the bytes are swapped in
  // clientData, once push() has released them.
  #identity(sent: ConnectInfo): ConnectInfo {
    const rule = this.#options.identity
    if (rule === undefined) return sent
    const cert = this.tls?.clientCert
    const username = cert === undefined ? undefined : certificateIdentity(cert, rule.from)
    if (username === undefined && sent.username === undefined) return sent // nothing to change
    this.#rewrite = { username, size: sent.size, level: sent.level }
    const log = this.#log
    if (username !== undefined) {
      log.info(
        { username, sentUsername: sent.username, identityFrom: rule.from },
        'username set from the client certificate',
      )
      this.#options.metrics.identityRewrite('set')
    } else {
      log.info(
        {
          sentUsername: sent.username,
          why:
            cert === undefined
              ? 'no verified client certificate'
              : `certificate has no usable ${rule.from}`,
          ...(sent.level !== 5 && sent.hasPassword && { passwordRemoved: true }),
        },
        'username removed (tls.identityAs=username)',
      )
      this.#options.metrics.identityRewrite('removed')
    }
    const hasPassword = sent.hasPassword && (username !== undefined || sent.level === 5)
    return { ...sent, username, hasPassword }
  }

  // The push that read the CONNECT released it first: in `released` (bytes from earlier chunks)
  // then data[0, forward). Its first `size` bytes go as rewritten; the rest, unchanged.
  #forwardRewritten(result: FramerResult, data: Buffer): void {
    const { username, size, level, authorize } = this.#rewrite as PendingRewrite // clientData checked
    this.#rewrite = undefined
    const forward = data.subarray(0, result.forward)
    const all = result.released === undefined ? forward : Buffer.concat([result.released, forward])
    // The framer stopped at the CONNECT itself (its will is not permitted): nothing of it goes
    // on, and the stop is answered (#clientStopped).
    if (all.length < size) return
    if (authorize !== undefined) {
      if (all.length > size) this.#hold(all.subarray(size))
      this.#authorizeConnect(all.subarray(0, size), authorize)
      return
    }
    this.#toBroker(rewriteConnectUsername(all.subarray(0, size), username, level))
    if (all.length > size) this.#toBroker(all.subarray(size))
  }

  /** A broker packet's header was read; false (stop before it) once a goodbye is waiting. */
  brokerPacket(type: PacketTypeValue): boolean {
    if (this.#awaitedGoodbye !== undefined) return false
    this.#options.metrics.mqttPacket('toClient', type)
    return true
  }

  brokerConnack(info: ConnackInfo): void {
    // Return code 0 (3.1, 3.1.1), reason code 0x00 Success (5).
    this.#connackAccepted = info.code === 0
    this.#options.metrics.mqttConnack(info.level, info.code)
  }

  /** True once a close has begun, from either side. */
  get closing(): boolean {
    return this.#pending !== undefined || this.closed !== undefined
  }

  /** Resolves once both sides are closed and the close has been logged. */
  whenClosed(): Promise<void> {
    if (this.#finished) return Promise.resolve()
    return new Promise((resolve) => (this.#closeWaiters ??= []).push(resolve))
  }

  /** Starts an orderly close with `code`; the client's answer (or a timeout) ends it. */
  close(code: CloseCodeValue, reason: string, initiator: Initiator): void {
    const awaited = this.#awaitedGoodbye
    if (awaited !== undefined) {
      // The broker ended or failed while a goodbye waited for its packet: the goodbye came
      // first and closes now, without its DISCONNECT (the packet will not end).
      this.#endGoodbyeWait()
      this.#client.close(awaited.code, awaited.reason)
      return
    }
    this.#pending ??= { code, initiator, reason }
    this.#stopRate()
    this.#letGoOfDial()
    this.#client.close(code, reason)
  }

  /**
   * Ends the connection for a reason of the gateway's, in MQTT first where the client can hear
   * it: an MQTT 5 client is sent `goodbye.disconnect`, then every client gets the close (mqtts:
   * the TLS close). The DISCONNECT must be a packet of its own in the broker's stream: never
   * below level 5 (3.1 and 3.1.1 have no server DISCONNECT), only after a CONNACK that
   * accepted the client has been forwarded [MQTT-3.2.0-1], never inside a broker packet. When
   * a broker packet is in flight it is let finish, for up to GOODBYE_WAIT_MS, and nothing
   * after it is forwarded: waiting, not skipping, so a busy client (the ones a drain most
   * wants to redirect) still learns why. A packet that does not finish in time is cut by the
   * close alone.
   */
  goodbye(goodbye: Goodbye): void {
    if (this.closing) return
    this.#pending = { code: goodbye.code, initiator: 'gateway', reason: goodbye.reason }
    this.#stopRate()
    // Connect mode, no broker yet: the dial stops now, not once the client answers the close.
    this.#letGoOfDial()
    const framer = this.#fromBroker
    const hears =
      framer !== undefined &&
      this.#fromClient?.level === 5 &&
      this.#connackAccepted &&
      !this.#toClientStopped
    if (!hears) {
      this.#client.close(goodbye.code, goodbye.reason)
    } else if (framer.atBoundary) {
      this.#sayGoodbye(goodbye)
    } else {
      this.#awaitedGoodbye = goodbye
      this.#goodbyeTimer = setTimeout(Connection.#goodbyeWaitOver, GOODBYE_WAIT_MS, this)
      this.#goodbyeTimer.unref()
      this.#log.debug(
        { waitMs: GOODBYE_WAIT_MS },
        'waiting for the broker packet in flight before the DISCONNECT',
      )
    }
  }

  #sayGoodbye(goodbye: Goodbye): void {
    this.#toClientStopped = true
    this.#client.send(goodbye.disconnect)
    this.#client.close(goodbye.code, goodbye.reason)
  }

  #endGoodbyeWait(): void {
    clearTimeout(this.#goodbyeTimer)
    this.#goodbyeTimer = undefined
    this.#awaitedGoodbye = undefined
  }

  static #goodbyeWaitOver(connection: Connection): void {
    const goodbye = connection.#awaitedGoodbye
    if (goodbye === undefined) return
    connection.#endGoodbyeWait()
    connection.#log.info(
      { waitMs: GOODBYE_WAIT_MS },
      'the broker packet in flight did not end in time; closing without the DISCONNECT',
    )
    connection.#client.close(goodbye.code, goodbye.reason)
  }

  /** Cuts the connection at once, without a close handshake (shutdown grace ran out). */
  terminate(reason: string): void {
    this.#endGoodbyeWait()
    this.#pending ??= { code: CloseCode.ABNORMAL, initiator: 'gateway', reason }
    this.#rate?.stop()
    this.#letGoOfDial()
    this.#client.terminate()
  }

  /** Sends a ping unless one is outstanding; terminates a peer whose pong is overdue. */
  ping(now: number, timeout: number): void {
    if (this.#pingSentAt !== 0) {
      if (this.pongOverdue(now, timeout)) this.terminateForPingTimeout()
      // Held for its rate, the client cannot be heard: a write is what tells that it has gone.
      else if (this.#rate?.held === true) this.#client.ping()
      return
    }
    if (this.#client.ping()) this.#pingSentAt = now
  }

  pongOverdue(now: number, timeout: number): boolean {
    // A client paused for its rate is not read: its pong waits behind its own backlog.
    if (this.#rate?.held === true) return false
    return this.#pingSentAt !== 0 && now - this.#pingSentAt >= timeout
  }

  terminateForPingTimeout(): void {
    this.#log.warn('no pong within ws.pongTimeout; terminating')
    this.pingTimedOut = true
    this.terminate('ping timeout')
  }

  // ---- the client side's events (ClientEvents) ----------------------------------------------

  clientData(data: Buffer): void {
    if (this.#client.framed) this.framesToBroker++
    this.lastActivity = Date.now()
    const framer = this.#fromClient
    if (framer === undefined) {
      this.#rate?.pay(0, data.length)
      this.#toBroker(data)
      if (!this.closing) this.#rate?.check()
      return
    }
    const result = framer.push(data)
    if (this.#rewrite !== undefined) this.#forwardRewritten(result, data)
    else {
      if (result.released !== undefined) this.#toBroker(result.released)
      if (result.forward === data.length) this.#toBroker(data)
      else if (result.forward > 0) this.#toBroker(data.subarray(0, result.forward))
    }
    if (result.stopped && !this.#inspectStopped) this.#clientStopped(result.error)
    // The framer paid for each packet whose header it read (mqttPacket).
    else if (!this.closing) this.#rate?.check()
  }

  // ---- limits.messageRate / byteRate (RateHolder) --------------------------------------------

  holdForRate(limit: 'message' | 'byte'): void {
    this.#options.metrics.ratePaused(limit)
    this.#client.pause()
  }

  // Backpressure may hold the client too: it is read again only when neither does.
  releaseForRate(): void {
    if (!this.pausedToBroker && !this.closing) this.#client.resume()
  }

  /** The read rate's state for /connections; null when limits.messageRate/byteRate are off. */
  get rate(): ReadRateView | null {
    return this.#rate?.view() ?? null
  }

  #resumeAfterBackpressure(): void {
    this.pausedToBroker = false
    if (this.#rate?.held !== true) this.#client.resume()
  }

  // A close must be heard: a client paused for its rate is read again (its close frame, its FIN).
  #stopRate(): void {
    if (this.#rate?.held !== true) return
    this.#rate.stop()
    if (!this.pausedToBroker) this.#client.resume()
  }

  #toBroker(data: Buffer): void {
    const upstream = this.#upstream
    if (upstream === undefined || this.#authHold) {
      this.#hold(data)
      return
    }
    this.bytesToBroker += data.length
    // ws emits every frame of one socket read in the same tick: cork so they reach the broker
    // in one writev instead of one syscall per frame (the byte stream is unchanged).
    if (!this.#corked) {
      this.#corked = true
      upstream.cork()
      process.nextTick(Connection.#uncorkUpstream, this)
    }
    // Pause at limits.highWaterMark, not at the socket's own 16 KiB mark. Only when write()
    // also said false: that is what makes the socket emit the 'drain' that resumes us.
    if (
      !upstream.write(data) &&
      upstream.writableLength >= this.#options.highWaterMark &&
      !this.pausedToBroker
    ) {
      this.pausedToBroker = true
      this.pausesToBroker++
      this.#client.pause()
    }
  }

  // The client framer stopped: nothing from the bad packet on has been forwarded, nor will be.
  #clientStopped(error: MqttMalformedError | undefined): void {
    this.#inspectStopped = true
    if (error === undefined) {
      if (this.#refusedSize > 0) this.#packetTooLarge()
      else if (this.#topicRefusal !== undefined) this.#topicDenied(this.#topicRefusal)
      return
    }
    this.#malformed(error)
    this.close(CloseCode.PROTOCOL_ERROR, CloseReason.malformed(error.message), 'gateway')
  }

  #brokerStopped(error: MqttMalformedError | undefined): void {
    this.#inspectStopped = true
    if (error === undefined) return
    this.#malformed(error)
    this.close(CloseCode.INTERNAL_ERROR, CloseReason.malformed(error.message), 'gateway')
  }

  // An MQTT 5 client is told why in its own protocol first (goodbye() says when it can be).
  #packetTooLarge(): void {
    const level = this.#fromClient?.level
    this.#log.warn(
      { size: this.#refusedSize, maxPacketSize: this.#options.mqtt.maxPacketSize, level },
      'MQTT packet over mqtt.maxPacketSize; closing',
    )
    this.#options.metrics.mqttRefused('packet_too_large')
    this.goodbye(Goodbyes.packetTooLarge)
  }

  // auth.permissionsClaim: nothing of the packet was forwarded; the client is told which topic
  // (a refused will, in a CONNACK: nothing may come before it [MQTT-3.2.0-1]).
  #topicDenied(refusal: TopicRefusal): void {
    const { kind, topic, goodbye } = refusal
    this.#log.warn(
      { [kind === 'subscribe' ? 'filter' : 'topic']: topic, subject: this.#subject },
      `${kind === 'will' ? 'CONNECT will' : kind.toUpperCase()} not permitted by the token; closing`,
    )
    this.#options.metrics.mqttRefused(refusal.reason)
    const level = this.#fromClient?.level
    if (kind !== 'will' || level === undefined || level === 0 || this.closing) {
      this.goodbye(goodbye)
      return
    }
    this.#client.send(notAuthorizedConnack(level, goodbye.reason))
    this.close(goodbye.code, goodbye.reason, 'gateway')
  }

  #malformed(error: MqttMalformedError): void {
    this.#log.warn(
      { reason: error.reason, sender: error.sender, err: error.message },
      'malformed MQTT packet; closing',
    )
    this.#options.metrics.mqttMalformed(error.sender, error.reason)
  }

  clientPong(): void {
    this.#pingSentAt = 0
  }

  clientFault(code: CloseCodeValue, reason: string): void {
    this.#pending ??= { code, initiator: 'gateway', reason }
  }

  clientClosed(code: number | undefined, reason: string): void {
    this.#endGoodbyeWait()
    this.#rate?.stop()
    const summary = this.#pending ?? { code, initiator: 'client', reason }
    // A client side without close codes (mqtts) was never sent the one a gateway close names.
    this.closed = this.#client.framed ? summary : { ...summary, code: undefined }
    const upstream = this.#upstream
    if (upstream === undefined) {
      // Connect mode, no broker yet: a dial in flight is aborted, and its end finishes us.
      this.#letGoOfDial()
    } else {
      // end(), not destroy(): bytes the client sent last (an MQTT DISCONNECT) must still reach
      // the broker. A broker that keeps its side open is cut after a short wait.
      upstream.end()
      this.#halfOpenTimer = setTimeout(Connection.#destroyUpstream, HALF_OPEN_TIMEOUT_MS, this)
      this.#halfOpenTimer.unref()
    }
    this.#finishIfBothClosed()
  }

  // ---- the broker socket's events (shared listeners: `this` is the socket) -------------------

  static #onBrokerData(this: Socket, chunk: Buffer): void {
    ownerOf(this).#brokerData(chunk)
  }

  static #onBrokerDrain(this: Socket): void {
    ownerOf(this).#brokerDrain()
  }

  static #onBrokerEnd(this: Socket): void {
    ownerOf(this).#brokerEnded()
  }

  static #onBrokerError(this: Socket, err: NodeJS.ErrnoException): void {
    ownerOf(this).#brokerError(err)
  }

  static #onBrokerClose(this: Socket): void {
    ownerOf(this).#brokerClose()
  }

  // Both run only once the broker socket is there: #toBroker corks it, clientClosed ends it.
  static #uncorkUpstream(connection: Connection): void {
    connection.#corked = false
    connection.#upstream?.uncork()
  }

  static #destroyUpstream(connection: Connection): void {
    connection.#upstream?.destroy()
  }

  #brokerEnded(): void {
    if (this.#unanswered()) {
      this.#log.warn(this.#unansweredDetail(), 'broker closed the connection before answering')
    }
    this.close(CloseCode.NORMAL, CloseReason.brokerClosed, 'broker')
  }

  // Not a byte from the broker, not even a CONNACK: it refused the connection itself. Behind a
  // PROXY header that is most often the header's verdict (Mosquitto: no TLS, or no verified
  // certificate, under proxy_protocol_v2_require_tls / require_certificate). A broker that
  // closes with our CONNECT unread resets instead of ending, so both paths say so.
  #unanswered(): boolean {
    return this.bytesToClient === 0 && !this.closing
  }

  #unansweredDetail(): Record<string, unknown> {
    return {
      broker: this.broker,
      proxyHeader: this.#proxy !== undefined,
      ...(this.#proxy !== undefined && {
        hint: 'the broker may have refused the PROXY header (no TLS, or no verified client certificate); its log says why',
      }),
    }
  }

  #brokerDrain(): void {
    if (!this.pausedToBroker) return
    this.#resumeAfterBackpressure()
  }

  #brokerData(chunk: Buffer): void {
    this.lastActivity = Date.now()
    const framer = this.#fromBroker
    if (framer === undefined) {
      this.#toClient(chunk)
      return
    }
    // After the gateway's own DISCONNECT nothing more may reach the client.
    if (this.#toClientStopped) return
    const result = framer.push(chunk)
    if (result.released !== undefined) this.#toClient(result.released)
    if (result.forward === chunk.length) this.#toClient(chunk)
    else if (result.forward > 0) this.#toClient(chunk.subarray(0, result.forward))
    // A goodbye waiting for a boundary has one: the packet in flight ended with this chunk, or
    // the framer stopped before the next one's header (brokerPacket said no).
    const awaited = this.#awaitedGoodbye
    if (awaited !== undefined && result.error === undefined) {
      if (result.stopped || framer.atBoundary) {
        this.#endGoodbyeWait()
        this.#sayGoodbye(awaited)
      }
      return
    }
    if (result.stopped && !this.#inspectStopped) this.#brokerStopped(result.error)
  }

  #toClient(chunk: Buffer): void {
    if (this.#client.framed) this.framesToClient++
    this.bytesToClient += chunk.length
    const buffered = this.#client.bufferedAmount + chunk.length
    const mark = this.#options.highWaterMark
    if (buffered <= mark) {
      // The first send past half the mark carries a callback: once it is flushed at most about
      // half is left, so a paused broker resumes before the client side runs dry (resuming only
      // on an empty buffer stalled the pipe on every pause: 16 KiB messages over wss cost 1.3x).
      if (buffered > mark / 2 && !this.#lowWaterPending) this.#sendWithLowWater(chunk)
      else this.#client.send(chunk)
      return
    }
    // This send crosses the mark: stop reading the broker until the pending low-water send (or,
    // without one, this send) has been flushed; sends are flushed in order.
    if (!this.pausedToClient) {
      this.pausedToClient = true
      this.pausesToClient++
      this.#upstream?.pause() // broker bytes come only from the broker socket
    }
    if (this.#lowWaterPending) this.#client.send(chunk)
    else this.#sendWithLowWater(chunk)
  }

  #sendWithLowWater(chunk: Buffer): void {
    this.#lowWaterPending = true
    this.#client.send(chunk, (err) => this.#lowWaterReached(err))
  }

  // net.Socket write callbacks pass null, not undefined, on success.
  #lowWaterReached(err?: Error | null): void {
    this.#lowWaterPending = false
    if (err instanceof Error || !this.pausedToClient) return
    this.pausedToClient = false
    this.#upstream?.resume()
  }

  #brokerError(err: NodeJS.ErrnoException): void {
    const code = err.code ?? 'error'
    if (this.#unanswered()) {
      this.#log.warn(
        { err: err.message, ...this.#unansweredDetail() },
        'broker closed the connection before answering',
      )
    } else {
      this.#log.warn({ err: err.message }, 'broker connection error')
    }
    this.close(CloseCode.INTERNAL_ERROR, CloseReason.upstreamError(code), 'broker')
  }

  #brokerClose(): void {
    clearTimeout(this.#halfOpenTimer)
    // A socket destroyed without 'end' or 'error' (e.g. by the half-open timer) still closes
    // the client side.
    if (this.closed === undefined) {
      this.close(CloseCode.INTERNAL_ERROR, CloseReason.upstreamError('closed'), 'broker')
    }
    this.#finishIfBothClosed()
  }

  // ---- connect mode: the broker arrives after the CONNECT ----------------------------------

  #bindUpstream({ socket, broker }: Upstream): void {
    this.#upstream = socket
    this.broker = broker
    ;(socket as unknown as Owned)[OWNER] = this
    socket.on('data', Connection.#onBrokerData)
    socket.on('end', Connection.#onBrokerEnd)
    socket.on('error', Connection.#onBrokerError)
    socket.on('close', Connection.#onBrokerClose)
    socket.on('drain', Connection.#onBrokerDrain)
  }

  // Called from inside the framer's push(): the CONNECT's bytes are held by #toBroker as soon
  // as push() returns, long before a dial can answer.
  #dialBroker(info: ConnectInfo): void {
    const dial = this.#options.dial as BrokerDial // the constructor checked it is set
    const abort = new AbortController()
    this.#dial = abort
    const started = performance.now()
    const order = brokerOrder(dial.connector.brokers, dial.affinity, info)
    dial.connector
      .dial(order, abort.signal, this.#proxy)
      .then((outcome) => this.#dialled(outcome, performance.now() - started))
      .catch((err: unknown) => this.#dialFault(err))
  }

  // Only a fault of the gateway's own lands here (an attempt hook or a counter threw): it is
  // logged and the client let go, rather than left waiting (or the process ended by an
  // unhandled rejection).
  #dialFault(err: unknown): void {
    this.#log.error({ err }, 'broker dial failed')
    this.#dial = undefined
    this.close(CloseCode.INTERNAL_ERROR, CloseReason.upstreamError('internal'), 'gateway')
    this.#finishIfBothClosed()
  }

  #dialled(outcome: ClientConnectOutcome, ms: number): void {
    this.#dial = undefined
    if (this.closing) {
      // The client left, or was closed, while the dial was on its way: nobody to bridge to.
      if (outcome.ok) outcome.upstream.socket.destroy()
      this.#finishIfBothClosed()
      return
    }
    if (outcome.ok) {
      this.#bindUpstream(outcome.upstream)
      this.#log.info(
        { broker: outcome.upstream.broker, connectMs: Math.round(ms) },
        'broker connected',
      )
      this.#writeHeld(outcome.upstream.socket)
    } else if (!outcome.clientLeft) {
      this.#refuseConnect(outcome.error)
    }
  }

  // Before the broker is there the CONNECT and whatever follows it are kept, in order, to be
  // written first and unchanged; past limits.highWaterMark the client is paused, so what is
  // held stays bounded. Once a close has begun they have nowhere to go.
  #hold(data: Buffer): void {
    if (this.closing) return
    ;(this.#held ??= []).push(data)
    this.#heldBytes += data.length
    if (this.#heldBytes >= this.#options.highWaterMark && !this.pausedToBroker) {
      this.pausedToBroker = true
      this.pausesToBroker++
      this.#client.pause()
      this.#log.debug(
        { held: this.#heldBytes },
        'no broker yet; client paused at limits.highWaterMark',
      )
    }
  }

  #writeHeld(upstream: Socket): void {
    const held = this.#held ?? []
    this.#held = undefined
    this.#heldBytes = 0
    for (const chunk of held) this.#toBroker(chunk)
    // Paused while holding: go on reading now, unless these writes filled the broker socket;
    // then its 'drain' resumes the client, as in #brokerDrain.
    if (this.pausedToBroker && !upstream.writableNeedDrain) this.#resumeAfterBackpressure()
  }

  // The connection is closing before it had a broker: stop the dial (its end finishes the
  // close) and drop what was held. A client paused for holding is read again, so its answer to
  // the close (a close frame, a FIN) is seen.
  #letGoOfDial(): void {
    if (this.#upstream !== undefined) return
    this.#dial?.abort()
    this.#held = undefined
    this.#heldBytes = 0
    if (this.pausedToBroker) this.#resumeAfterBackpressure()
  }

  // No broker accepted: the client is told in MQTT, in a CONNACK its library can show (return
  // code 3 below MQTT 5; reason 0x88 with the cause as Reason String at 5), then closed with
  // 1013. Logged and counted as the 502/504 of upgrade mode are; each failed attempt is in
  // upstream_errors_total already.
  #refuseConnect(error: UpstreamError): void {
    const session = this.mqtt as MqttSession // the CONNECT was read: that is what dialled
    this.#log.warn(
      {
        reason: error.reason,
        detail: error.message,
        protocolLevel: session.protocolLevel,
        connackCode: serverUnavailableCode(session.protocolLevel),
      },
      'no broker accepted the connection; answered with CONNACK Server unavailable',
    )
    this.#options.metrics.mqttRefused(error.reason)
    this.#client.send(serverUnavailableConnack(session.protocolLevel, error.message))
    this.close(CloseCode.TRY_AGAIN_LATER, CloseReason.tryAgainLater, 'gateway')
  }

  #finishIfBothClosed(): void {
    if (this.closed === undefined || this.#dial !== undefined) return
    if (this.#upstream !== undefined && !this.#upstream.destroyed) return
    if (this.#finished) return
    this.#finished = true
    this.#log.info(
      {
        remote: this.remoteAddress,
        protocol: this.protocol,
        broker: this.broker,
        bytesToBroker: this.bytesToBroker,
        bytesToClient: this.bytesToClient,
        framesToBroker: this.framesToBroker,
        framesToClient: this.framesToClient,
        durationMs: Date.now() - this.openedAt,
        code: this.closed.code,
        initiator: this.closed.initiator,
        reason: this.closed.reason,
        // clientId is in the logger's bindings already (mqttConnect).
        username: this.mqtt?.username,
        protocolLevel: this.mqtt?.protocolLevel,
        keepalive: this.mqtt?.keepalive,
      },
      'connection closed',
    )
    this.#release?.()
    this.#options.onClose(this)
    for (const resolve of this.#closeWaiters ?? []) resolve()
    this.#closeWaiters = undefined
  }
}

/** A verified client certificate's CN when there is one, else the client's IP address. */
export function clientIdentityOf(tls: ConnectionTls | undefined, clientAddress: string): string {
  const cn = tls?.clientCert?.subject
  return cn !== undefined && cn !== '' ? cn : clientAddress
}

function ownerOf(socket: Socket): Connection {
  return (socket as unknown as Owned)[OWNER]
}

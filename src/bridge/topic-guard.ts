// auth.permissionsClaim at the bridge: one connection's topic permissions, asked by the
// client-side framer for each PUBLISH topic and SUBSCRIBE filter (the framer's topic reading),
// and the answer the connection gives when one is refused: nothing of that packet reaches the
// broker; an MQTT 5 client is sent DISCONNECT 0x87 Not authorized with a Reason String naming
// the topic, then every client is closed with 1008 and that reason.
//
// The permissions come from the connection's verified token: at accept (a token in a header,
// subprotocol, query or cookie), or once the CONNECT's password has been checked (setToken).
// Until a token is known nothing is granted, so a client that pipelines a PUBLISH behind its
// CONNECT before its password is checked is refused; clients that wait for the CONNACK (every
// common library) never meet that. A client certificate standing in for a token
// (auth.allowClientCert) carries no claims: it is not limited here, its broker's ACLs apply.
import { permissionsOf, type TopicPermissions } from '../auth/permissions.js'
import type { VerifiedToken } from '../auth/token.js'
import type { MqttRefusalReason } from '../metrics.js'
import { DisconnectReasonCode, encodeDisconnect } from '../mqtt/disconnect.js'
import { CloseCode, CloseReason } from './close-codes.js'
import type { Goodbye } from './goodbyes.js'

/** auth.permissionsClaim, when set: the claim that holds the grants. */
export interface PermissionsPolicy {
  claim: string
}

/** A refused PUBLISH, SUBSCRIBE or CONNECT will: what to log, count and tell the client. */
export interface TopicRefusal {
  readonly kind: TopicKind
  readonly topic: string
  readonly reason: MqttRefusalReason
  readonly goodbye: Goodbye
}

/** A token whose claim cannot be read: the connection is closed (bad_permissions). */
export interface ClaimRefusal {
  readonly fault: string
  readonly goodbye: Goodbye
}

/** A will is a PUBLISH the broker makes for the client, later: judged as one. */
type TopicKind = 'publish' | 'subscribe' | 'will'

// Not decided yet (no token), every topic (a certificate), or the token's grants.
type State = 'pending' | 'unrestricted' | TopicPermissions

export class TopicGuard {
  readonly #policy: PermissionsPolicy
  #state: State = 'pending'

  constructor(policy: PermissionsPolicy) {
    this.#policy = policy
  }

  /** The token the connection was let in with; a refusal when its claim is malformed. */
  setToken(token: VerifiedToken): ClaimRefusal | undefined {
    if (token.source === 'certificate') {
      this.#state = 'unrestricted'
      return undefined
    }
    const permissions = permissionsOf(token.claims, this.#policy.claim, token.subject)
    if ('fault' in permissions) {
      this.#state = 'pending' // grants nothing
      return { fault: permissions.fault, goodbye: badPermissions }
    }
    this.#state = permissions
    return undefined
  }

  /**
   * Undefined when the PUBLISH may go on. At MQTT 5 an empty topic names it by Topic Alias
   * (3.3.2.3.4), which goes on untracked: an alias lives only as long as its network
   * connection, the broker's side of which is this connection alone, and only a PUBLISH with
   * a topic name sets one; every such PUBLISH was judged by that topic and, unless it was
   * permitted, never reached the broker; and the grants do not change during a connection. So
   * every alias the broker knows names a permitted topic. (An alias the broker does not know is
   * its protocol error to answer.) Below MQTT 5 an empty topic is no topic and is refused.
   */
  publish(topic: string, level: number): TopicRefusal | undefined {
    const state = this.#state
    if (state === 'unrestricted') return undefined
    if (state === 'pending') return refusal('publish', topic)
    if (topic === '' ? level === 5 : state.mayPublish(topic)) return undefined
    return refusal('publish', topic)
  }

  /** False until a token (or certificate) has been set. */
  get known(): boolean {
    return this.#state !== 'pending'
  }

  /** The CONNECT's will, judged as a PUBLISH to its topic; asked once the token is known. */
  will(topic: string, level: number): TopicRefusal | undefined {
    const refused = this.publish(topic, level)
    return refused === undefined ? undefined : refusal('will', topic)
  }

  /** Undefined when every filter of the SUBSCRIBE may go on; else the first that may not. */
  subscribe(filters: readonly string[]): TopicRefusal | undefined {
    const state = this.#state
    if (state === 'unrestricted') return undefined
    for (const filter of filters) {
      if (state === 'pending' || !state.maySubscribe(filter)) return refusal('subscribe', filter)
    }
    return undefined
  }
}

const badPermissions: Goodbye = {
  code: CloseCode.POLICY_VIOLATION,
  reason: CloseReason.badPermissions,
  disconnect: encodeDisconnect(DisconnectReasonCode.NOT_AUTHORIZED, {
    reasonString: CloseReason.badPermissions,
  }),
}

function refusal(kind: TopicKind, topic: string): TopicRefusal {
  const text =
    kind === 'will' ? `will on "${topic}" not permitted` : `${kind} to "${topic}" not permitted`
  const reason = CloseReason.topicDenied(text)
  return {
    kind,
    topic,
    reason: kind === 'subscribe' ? 'subscribe_denied' : 'publish_denied',
    goodbye: {
      code: CloseCode.POLICY_VIOLATION,
      reason,
      disconnect: encodeDisconnect(DisconnectReasonCode.NOT_AUTHORIZED, { reasonString: text }),
    },
  }
}

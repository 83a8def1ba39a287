// The one configuration schema. Every key has a doc, a default, a format and an env var named
// DRAWBRIDGE_ + the key path in upper snake case (test/config.test.ts walks the tree to check).
//
// Kubernetes injects DRAWBRIDGE_PORT, DRAWBRIDGE_SERVICE_HOST, DRAWBRIDGE_PORT_443_TCP... into
// pods when a Service is called "drawbridge". No key here may map to those names: there is no
// top-level `port` key and no `service` section.
import type convict from 'convict'
import { registerFormats, type Cidr, type HostPort, type Route, type RouteSpec } from './formats.js'
import type { ProxyProtocolIn } from '../edge/proxy-protocol-in.js'
import type { ProxyProtocol } from '../upstream/proxy-header.js'
import type { OriginRule } from './origin.js'

registerFormats()

// `satisfies`, not a cast: a key missing here, or a default of the wrong type, fails the
// typecheck instead of surfacing as an undefined value at run time.
export const schema = {
  profile: {
    doc: 'Which file in config/ provides the base values: development (embedded broker, local-only listener) or production (no embedded broker, upstream required). Defaults to production when NODE_ENV=production.',
    format: ['development', 'production'],
    default: 'development',
    env: 'DRAWBRIDGE_PROFILE',
  },
  listen: {
    host: {
      doc: 'Address the public WebSocket listener binds to.',
      format: 'non-empty-string',
      default: '0.0.0.0',
      env: 'DRAWBRIDGE_LISTEN_HOST',
    },
    port: {
      doc: 'Port of the public WebSocket listener (0 picks a free port).',
      format: 'port',
      default: 8080,
      env: 'DRAWBRIDGE_LISTEN_PORT',
    },
    proxyProtocol: {
      doc: 'Read a PROXY protocol header (from an L4 load balancer: HAProxy send-proxy, AWS NLB, a Kubernetes LoadBalancer) before anything else on the public WebSocket listener, before TLS too: off, v1, v2 or any. Its source address becomes the client address; a LOCAL header (a health check) is served as the peer. Every peer must be in listen.proxyProtocolFrom and send the header within ws.handshakeTimeout, or it is dropped.',
      format: ['off', 'v1', 'v2', 'any'],
      default: 'off',
      env: 'DRAWBRIDGE_LISTEN_PROXY_PROTOCOL',
    },
    proxyProtocolFrom: {
      doc: 'Load balancers (IP addresses or CIDR blocks) allowed to connect and send the PROXY header under listen.proxyProtocol; any other peer is dropped. Required when listen.proxyProtocol is on.',
      format: 'cidr-list',
      default: [],
      env: 'DRAWBRIDGE_LISTEN_PROXY_PROTOCOL_FROM',
    },
  },
  ws: {
    path: {
      doc: 'URL path that accepts WebSocket upgrades; any other path is answered 404.',
      format: 'url-path',
      default: '/mqtt',
      env: 'DRAWBRIDGE_WS_PATH',
    },
    subprotocols: {
      doc: "WebSocket subprotocols accepted, in no particular order; the first one in the client's offer that is listed here is chosen.",
      format: 'string-list',
      default: ['mqtt', 'mqttv3.1'],
      env: 'DRAWBRIDGE_WS_SUBPROTOCOLS',
    },
    requireSubprotocol: {
      doc: 'Refuse (400) an upgrade that offers none of ws.subprotocols. When false such a client is accepted without a Sec-WebSocket-Protocol answer.',
      format: 'bool',
      default: true,
      env: 'DRAWBRIDGE_WS_REQUIRE_SUBPROTOCOL',
    },
    maxPayload: {
      doc: 'Largest WebSocket message accepted from a client; a larger one is closed with 1009.',
      format: 'size',
      default: 16 * 1024 * 1024,
      env: 'DRAWBRIDGE_WS_MAX_PAYLOAD',
    },
    perMessageDeflate: {
      doc: 'Offer permessage-deflate compression. Off by default: MQTT payloads are often already compressed, and deflate costs CPU and about 300 KiB per connection.',
      format: 'bool',
      default: false,
      env: 'DRAWBRIDGE_WS_PER_MESSAGE_DEFLATE',
    },
    pingInterval: {
      doc: 'How often the gateway pings each client (0 = never). Keep it below the idle timeout of every proxy and load balancer on the path (often 30-60 s).',
      format: 'duration',
      default: 25_000,
      env: 'DRAWBRIDGE_WS_PING_INTERVAL',
    },
    pongTimeout: {
      doc: 'A client that has not answered a ping within this time is terminated (close 1006 on its side, logged as ping timeout).',
      format: 'duration',
      default: 10_000,
      env: 'DRAWBRIDGE_WS_PONG_TIMEOUT',
    },
    allowedOrigins: {
      doc: 'Browser origins allowed to open a WebSocket (scheme://host[:port], "*." as first label for subdomains, "null" for pages without an origin). Empty allows any origin. An upgrade whose Origin header is not listed is refused with 403, logged and counted (reason origin): this stops other sites from using a visitor\'s browser, cookies and client certificate to reach the broker.',
      format: 'origin-list',
      default: [],
      env: 'DRAWBRIDGE_WS_ALLOWED_ORIGINS',
    },
    requireOrigin: {
      doc: 'Refuse (403) upgrades that carry no Origin header. Non-browser clients (devices, MQTT.js in Node, paho) send none, so leave this off unless only browsers connect.',
      format: 'bool',
      default: false,
      env: 'DRAWBRIDGE_WS_REQUIRE_ORIGIN',
    },
    handshakeTimeout: {
      doc: 'A client connection that has not sent a complete upgrade request within this time is answered 408 and dropped.',
      format: 'duration',
      default: 10_000,
      env: 'DRAWBRIDGE_WS_HANDSHAKE_TIMEOUT',
    },
  },
  upstream: {
    brokers: {
      doc: 'MQTT brokers (plain TCP) as host:port, tried in order for each new connection (with upstream.affinity, in the order it picks for the client); the first that accepts is used.',
      format: 'host-port-list',
      default: ['127.0.0.1:1883'],
      env: 'DRAWBRIDGE_UPSTREAM_BROKERS',
    },
    connectTimeout: {
      doc: 'How long to wait for each broker to accept the TCP connection before trying the next one.',
      format: 'duration',
      default: 5_000,
      env: 'DRAWBRIDGE_UPSTREAM_CONNECT_TIMEOUT',
    },
    connectOn: {
      doc: "When the broker is dialled. upgrade: before the WebSocket 101 (an mqtts client: before any of its bytes are read), so a client whose broker is down is refused with HTTP 502/504 (mqtts: the TLS socket is closed). connect: after the client's CONNECT has been read and held (needs mqtt.inspect), so a client whose broker is down is answered in MQTT: CONNACK 3 Server unavailable (MQTT 3.1, 3.1.1) or 0x88 with a Reason String (MQTT 5), then WebSocket close 1013; and upstream.affinity can pick the broker from the CONNECT.",
      format: ['upgrade', 'connect'],
      default: 'upgrade',
      env: 'DRAWBRIDGE_UPSTREAM_CONNECT_ON',
    },
    affinity: {
      doc: 'With upstream.connectOn=connect, which CONNECT field orders upstream.brokers for a client: none (the configured order), clientId or username (rendezvous hashing of the field over the brokers, so the same value keeps reaching the same broker while it accepts; the next-ranked one when it refuses). An empty or missing field falls back to the configured order.',
      format: ['none', 'clientId', 'username'],
      default: 'none',
      env: 'DRAWBRIDGE_UPSTREAM_AFFINITY',
    },
    proxyProtocol: {
      doc: "PROXY protocol header each broker connection starts with, naming the client to the broker (its resolved address and port, the gateway address it reached, and with v2 over wss/mqtts its TLS version, cipher and verified certificate CN, plus the connection id): off, v1 (text) or v2 (binary, with TLVs). The broker's listener must expect it (Mosquitto 2.1: enable_proxy_protocol). The readiness check then sends a LOCAL header.",
      format: ['off', 'v1', 'v2'],
      default: 'off',
      env: 'DRAWBRIDGE_UPSTREAM_PROXY_PROTOCOL',
    },
    embedded: {
      doc: 'Start an in-process Aedes broker on the first upstream.brokers address (development only; refused in the production profile).',
      format: 'bool',
      default: false,
      env: 'DRAWBRIDGE_UPSTREAM_EMBEDDED',
    },
  },
  tls: {
    enabled: {
      doc: 'Serve wss:// (TLS) instead of ws:// on the public listener. Needs tls.cert and tls.key.',
      format: 'bool',
      default: false,
      env: 'DRAWBRIDGE_TLS_ENABLED',
    },
    cert: {
      doc: 'PEM file with the server certificate, followed by its intermediates. Watched: a replaced file is validated and served to new handshakes without a restart.',
      format: 'file-path',
      default: '',
      env: 'DRAWBRIDGE_TLS_CERT',
    },
    key: {
      doc: 'PEM file with the private key of tls.cert (watched like tls.cert).',
      format: 'file-path',
      default: '',
      env: 'DRAWBRIDGE_TLS_KEY',
    },
    passphrase: {
      doc: 'Passphrase of an encrypted tls.key (empty: the key is not encrypted).',
      format: 'optional-string',
      default: '',
      sensitive: true,
      env: 'DRAWBRIDGE_TLS_PASSPHRASE',
    },
    ca: {
      doc: 'PEM bundle of the CAs that client certificates must chain to. Needed when tls.clientAuth is optional or required.',
      format: 'file-path',
      default: '',
      env: 'DRAWBRIDGE_TLS_CA',
    },
    crl: {
      doc: 'PEM file with certificate revocation lists for tls.ca; a revoked client certificate is refused (empty: no revocation check).',
      format: 'file-path',
      default: '',
      env: 'DRAWBRIDGE_TLS_CRL',
    },
    closeRevoked: {
      doc: 'Close open sessions whose client certificate stops being valid: on every successful reload, those the new tls.crl revokes, and at least once a minute those whose certificate has expired (MQTT 5 clients first get DISCONNECT 0x87 Not authorized; then WebSocket close 1008 with the reason, mqtts: TLS close), logged and counted in drawbridge_tls_sessions_closed_total.',
      format: 'bool',
      default: true,
      env: 'DRAWBRIDGE_TLS_CLOSE_REVOKED',
    },
    clientAuth: {
      doc: 'Client certificates: none (not asked for), optional (no certificate is fine, an untrusted one is refused), required (a certificate trusted by tls.ca and not revoked is needed).',
      format: ['none', 'optional', 'required'],
      default: 'none',
      env: 'DRAWBRIDGE_TLS_CLIENT_AUTH',
    },
    minVersion: {
      doc: 'Oldest TLS version accepted.',
      format: ['TLSv1.2', 'TLSv1.3'],
      default: 'TLSv1.2',
      env: 'DRAWBRIDGE_TLS_MIN_VERSION',
    },
    ciphers: {
      doc: "OpenSSL cipher list for TLS 1.2 (empty: Node's default list).",
      format: 'optional-string',
      default: '',
      env: 'DRAWBRIDGE_TLS_CIPHERS',
    },
    expiryWarningDays: {
      doc: 'Log a warning at start-up and on every reload when the served certificate expires within this many days.',
      format: 'nat',
      default: 14,
      env: 'DRAWBRIDGE_TLS_EXPIRY_WARNING_DAYS',
    },
    watch: {
      doc: 'Watch the directories of tls.cert, tls.key, tls.ca and tls.crl and reload on change (Kubernetes Secret updates, certbot, editors). SIGHUP reloads either way.',
      format: 'bool',
      default: true,
      env: 'DRAWBRIDGE_TLS_WATCH',
    },
    reloadDebounce: {
      doc: 'Quiet time after the last change to a watched file before the TLS material is reloaded, so a certificate and key written one after the other are read together.',
      format: 'duration',
      default: 1_000,
      env: 'DRAWBRIDGE_TLS_RELOAD_DEBOUNCE',
    },
    generateDevCerts: {
      doc: 'When tls.cert and tls.key do not exist, generate a development CA, server and client certificate in their directory (development profile only; refused in production).',
      format: 'bool',
      default: false,
      env: 'DRAWBRIDGE_TLS_GENERATE_DEV_CERTS',
    },
    ticketKeys: {
      doc: 'File with the 48 bytes (raw, or base64 on one line) that encrypt TLS session tickets. Give every replica behind one load balancer the same file, so a client resumes its session (a cheaper handshake) on whichever replica it reaches after a reconnect or a rolling update. Empty: random keys made at start, kept across certificate reloads. Watched and reloaded like tls.cert; a new key ends resumption of older tickets. Rotate it (e.g. daily): whoever holds it can decrypt recorded sessions resumed with it.',
      format: 'file-path',
      default: '',
      sensitive: true,
      env: 'DRAWBRIDGE_TLS_TICKET_KEYS',
    },
    identityAs: {
      doc: "What the broker is told of a verified client certificate. none: nothing, the CONNECT goes on unchanged. username: the CONNECT's username is replaced by the certificate's identity (tls.identityFrom), for brokers that cannot read PROXY v2; a client without a verified certificate has any username it sent removed (below MQTT 5 its password with it). Needs mqtt.inspect, tls.enabled and tls.clientAuth optional or required.",
      format: ['none', 'username'],
      default: 'none',
      env: 'DRAWBRIDGE_TLS_IDENTITY_AS',
    },
    identityFrom: {
      doc: 'With tls.identityAs=username, the certificate field that becomes the username: cn (subject common name), or the first subjectAltName of a kind: san-dns, san-uri, san-email. A certificate without that field counts as none (the username is removed).',
      format: ['cn', 'san-dns', 'san-uri', 'san-email'],
      default: 'cn',
      env: 'DRAWBRIDGE_TLS_IDENTITY_FROM',
    },
  },
  auth: {
    mode: {
      doc: 'Token authentication at the edge. none: every client is let through to the broker as before. jwt: a client needs a JSON Web Token that passes every auth.* check (or, with auth.allowClientCert, a verified client certificate); see README "Authentication".',
      format: ['none', 'jwt'],
      default: 'none',
      env: 'DRAWBRIDGE_AUTH_MODE',
    },
    tokenFrom: {
      doc: 'Where the token is looked for, the first found wins, in this order: header (Authorization: Bearer), subprotocol (a Sec-WebSocket-Protocol entry bearer.<token> beside mqtt), query (the access_token parameter), cookie (auth.cookie), password (the CONNECT password; needs mqtt.inspect, and is the only source on the mqtts listener).',
      format: 'string-list',
      default: ['header', 'subprotocol', 'query', 'cookie', 'password'],
      env: 'DRAWBRIDGE_AUTH_TOKEN_FROM',
    },
    cookie: {
      doc: 'Name of the cookie that carries the token (auth.tokenFrom cookie).',
      format: 'non-empty-string',
      default: 'access_token',
      env: 'DRAWBRIDGE_AUTH_COOKIE',
    },
    jwksUrl: {
      doc: 'HTTPS URL of a JSON Web Key Set the token signatures are checked against. Fetched at start, cached, fetched again when a token names an unknown kid (at most every auth.jwksRefetchInterval); while the endpoint is down the cached keys are used. Empty: none (auth.keys or auth.secretFile instead).',
      format: 'optional-string',
      default: '',
      env: 'DRAWBRIDGE_AUTH_JWKS_URL',
    },
    jwksCa: {
      doc: "PEM file with the CA(s) that auth.jwksUrl's certificate must chain to (empty: the system CAs).",
      format: 'file-path',
      default: '',
      env: 'DRAWBRIDGE_AUTH_JWKS_CA',
    },
    jwksRefetchInterval: {
      doc: 'Least time between two fetches of auth.jwksUrl, so tokens with made-up kids cannot make the gateway hammer the key server.',
      format: 'duration',
      default: 30_000,
      env: 'DRAWBRIDGE_AUTH_JWKS_REFETCH_INTERVAL',
    },
    keys: {
      doc: 'Files with public keys the token signatures are checked against: PEM (SPKI) public keys, a JWK or a JWK Set (JSON). Read at start and again on SIGHUP or when a file changes; a file that fails to read keeps the keys loaded before.',
      format: 'string-list',
      default: [],
      env: 'DRAWBRIDGE_AUTH_KEYS',
    },
    secretFile: {
      doc: 'File holding the shared secret for HS256/HS384/HS512 tokens (its bytes, a trailing newline removed); reloaded like auth.keys. Empty: none.',
      format: 'file-path',
      default: '',
      env: 'DRAWBRIDGE_AUTH_SECRET_FILE',
    },
    algorithms: {
      doc: 'The signature algorithms a token may use (its alg header): RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, HS256, HS384, HS512. none is never accepted, and listing it fails start-up.',
      format: 'string-list',
      default: ['RS256', 'ES256'],
      env: 'DRAWBRIDGE_AUTH_ALGORITHMS',
    },
    issuer: {
      doc: 'The iss a token must carry (empty: not checked).',
      format: 'optional-string',
      default: '',
      env: 'DRAWBRIDGE_AUTH_ISSUER',
    },
    audience: {
      doc: 'The aud a token must carry (empty: not checked).',
      format: 'optional-string',
      default: '',
      env: 'DRAWBRIDGE_AUTH_AUDIENCE',
    },
    clockTolerance: {
      doc: 'Leeway for clock skew when exp and nbf are checked; a session is closed at exp plus this.',
      format: 'duration',
      default: 30_000,
      env: 'DRAWBRIDGE_AUTH_CLOCK_TOLERANCE',
    },
    maxTokenSize: {
      doc: 'Longest token accepted, in bytes. A longer one is refused unread: 431 in a header or cookie, 414 in the query, 401 in a subprotocol, CONNACK refused as a password.',
      format: 'size',
      default: 8 * 1024,
      env: 'DRAWBRIDGE_AUTH_MAX_TOKEN_SIZE',
    },
    allowClientCert: {
      doc: 'A client certificate verified by tls.ca stands in for a token (devices keep working without one). Needs tls.clientAuth optional or required.',
      format: 'bool',
      default: false,
      env: 'DRAWBRIDGE_AUTH_ALLOW_CLIENT_CERT',
    },
    usernameClaim: {
      doc: "The token claim whose value becomes the CONNECT's username (the broker's per-user ACLs apply to it); a token without it, as a string, is refused. Empty: the username is left as sent. Needs mqtt.inspect.",
      format: 'optional-string',
      default: 'sub',
      env: 'DRAWBRIDGE_AUTH_USERNAME_CLAIM',
    },
    clientIdPrefixClaim: {
      doc: 'When set, the token claim whose value a client id must start with; another client id is answered CONNACK 0x02 Identifier rejected (5: 0x85 Client Identifier not valid), then closed 1008. Needs mqtt.inspect.',
      format: 'optional-string',
      default: '',
      env: 'DRAWBRIDGE_AUTH_CLIENT_ID_PREFIX_CLAIM',
    },
    permissionsClaim: {
      doc: 'The token claim that grants topics, e.g. mqtt holding {"publish": [...], "subscribe": [...]}: MQTT topic filters, {sub} standing for the subject. A PUBLISH to a topic no publish filter matches, or a SUBSCRIBE to a filter not wholly inside the subscribe filters, is never forwarded: an MQTT 5 client is sent DISCONNECT 0x87 naming the topic, then every client is closed with 1008. A token without the claim is granted nothing; a malformed claim closes the connection. Empty: off. Needs auth.mode=jwt and mqtt.inspect.',
      format: 'optional-string',
      default: '',
      env: 'DRAWBRIDGE_AUTH_PERMISSIONS_CLAIM',
    },
  },
  http: {
    diagnostics: {
      doc: 'Serve the diagnostics page at GET / on the public listener: a self-test a user runs in their own browser (TLS, WebSocket upgrade, subprotocol, MQTT round trip, idle survival) with a report to copy into a support ticket. On in development, off in production.',
      format: 'bool',
      default: false,
      env: 'DRAWBRIDGE_HTTP_DIAGNOSTICS',
    },
    trustedProxies: {
      doc: 'Peers (IP addresses or CIDR blocks) whose X-Forwarded-For, Forwarded and X-Real-IP headers are believed. The client address is the rightmost address in those headers that is not itself a trusted proxy; from any other peer the headers are ignored. Empty (the default) believes no one.',
      format: 'cidr-list',
      default: [],
      env: 'DRAWBRIDGE_HTTP_TRUSTED_PROXIES',
    },
    routes: {
      doc: 'Backends served on the public listener next to MQTT, so a web app and its MQTT connection share one origin: a list of {"prefix": "/app/", "target": "http://web:8080", "ws": false, "stripPrefix": false, "timeout": "30s"}. A request whose path starts with a prefix (the longest wins) is proxied to its target; ws.path and the diagnostics page come first. In env, the list as JSON.',
      format: 'route-list',
      default: [],
      env: 'DRAWBRIDGE_HTTP_ROUTES',
    },
  },
  tcp: {
    enabled: {
      doc: 'Also serve MQTT over TLS on a plain TCP port (mqtts), with the same certificates and tls.clientAuth rules, piped to the same upstream brokers. Needs tls.enabled.',
      format: 'bool',
      default: false,
      env: 'DRAWBRIDGE_TCP_ENABLED',
    },
    port: {
      doc: 'Port of the mqtts listener (on listen.host; 0 picks a free port).',
      format: 'port',
      default: 8883,
      env: 'DRAWBRIDGE_TCP_PORT',
    },
  },
  limits: {
    maxConnections: {
      doc: 'Open WebSocket connections (plus upgrades in progress) above which new upgrades are refused with 503 and Retry-After.',
      format: 'nat',
      default: 10_000,
      env: 'DRAWBRIDGE_LIMITS_MAX_CONNECTIONS',
    },
    highWaterMark: {
      doc: 'Bytes buffered per connection per direction before the sending side is paused (backpressure); bounds memory per connection.',
      format: 'size',
      default: 256 * 1024,
      env: 'DRAWBRIDGE_LIMITS_HIGH_WATER_MARK',
    },
    perClientConnections: {
      doc: 'Open connections (both listeners together) one client address may have; past it a WebSocket upgrade gets 429 with Retry-After and an mqtts client is closed after its TLS handshake (0 = off).',
      format: 'nat',
      default: 0,
      env: 'DRAWBRIDGE_LIMITS_PER_CLIENT_CONNECTIONS',
    },
    perClientRate: {
      doc: 'New connections per second one client address may open (a token bucket of limits.perClientBurst); past it 429 with a Retry-After of the seconds until the next token (0 = off).',
      format: 'rate',
      default: 0,
      env: 'DRAWBRIDGE_LIMITS_PER_CLIENT_RATE',
    },
    perClientBurst: {
      doc: 'How many connections a client may open at once under limits.perClientRate (the size of its bucket; 0 = one second of limits.perClientRate, at least 1).',
      format: 'nat',
      default: 0,
      env: 'DRAWBRIDGE_LIMITS_PER_CLIENT_BURST',
    },
    ipv6Prefix: {
      doc: 'IPv6 clients are counted by this prefix of their address (one /64 is usually one subscriber); IPv4 clients by their whole address.',
      format: 'nat',
      default: 64,
      env: 'DRAWBRIDGE_LIMITS_IPV6_PREFIX',
    },
    trackedClients: {
      doc: 'Client addresses the per-client limits remember at most; past it the least recently seen is forgotten (drawbridge_limits_evicted_clients_total), so a flood from many addresses keeps memory bounded.',
      format: 'nat',
      default: 100_000,
      env: 'DRAWBRIDGE_LIMITS_TRACKED_CLIENTS',
    },
    acceptRate: {
      doc: 'New TCP connections per second each listener accepts (a token bucket of one second); past it connections are closed at accept, before TLS or HTTP, and counted (0 = off).',
      format: 'rate',
      default: 0,
      env: 'DRAWBRIDGE_LIMITS_ACCEPT_RATE',
    },
    messageRate: {
      doc: 'MQTT packets per second each connection may send toward the broker (needs mqtt.inspect); a faster client is paused, not dropped, until it is within the rate again (a bucket of one second; 0 = off).',
      format: 'rate',
      default: 0,
      env: 'DRAWBRIDGE_LIMITS_MESSAGE_RATE',
    },
    byteRate: {
      doc: 'Bytes per second each connection may send toward the broker; a faster client is paused, not dropped, until it is within the rate again (a bucket of one second; 0 = off).',
      format: 'size',
      default: 0,
      env: 'DRAWBRIDGE_LIMITS_BYTE_RATE',
    },
  },
  mqtt: {
    inspect: {
      doc: 'Read the MQTT packets of every connection (both listeners) and forward only packets that are well formed: a malformed one from the client closes the connection with 1002 before any of it reaches the broker, one from the broker with 1011. The stream stays byte for byte what was sent. false restores the blind byte pipe.',
      format: 'bool',
      default: true,
      env: 'DRAWBRIDGE_MQTT_INSPECT',
    },
    connectTimeout: {
      doc: 'With mqtt.inspect, a client that has not sent a complete CONNECT within this time after its connection opened is closed (1008) and its broker connection with it (0 = never).',
      format: 'duration',
      default: 10_000,
      env: 'DRAWBRIDGE_MQTT_CONNECT_TIMEOUT',
    },
    maxPacketSize: {
      doc: 'With mqtt.inspect, the largest MQTT packet a client may send, fixed header included. A larger one is refused as soon as its header is read, before any of it reaches the broker: an MQTT 5 client is sent DISCONNECT 0x95 (Packet too large), then every client is closed with 1009.',
      format: 'size',
      default: 16 * 1024 * 1024,
      env: 'DRAWBRIDGE_MQTT_MAX_PACKET_SIZE',
    },
  },
  shutdown: {
    grace: {
      doc: 'On SIGTERM/SIGINT, how long open connections get to close, counted from the start of the shutdown (shutdown.spread included), before the ones still open are cut.',
      format: 'duration',
      default: 10_000,
      env: 'DRAWBRIDGE_SHUTDOWN_GRACE',
    },
    spread: {
      doc: 'On SIGTERM/SIGINT, close the open connections evenly over this time instead of all at once (0), so the other replicas do not take every reconnect in the same second. Must be less than shutdown.grace: the last client is closed at about shutdown.spread and has the rest of shutdown.grace to go.',
      format: 'duration',
      default: 0,
      env: 'DRAWBRIDGE_SHUTDOWN_SPREAD',
    },
    serverReference: {
      doc: 'On SIGTERM/SIGINT, MQTT 5 clients are sent DISCONNECT 0x8B (Server shutting down) before the close 1001; when this is set, DISCONNECT 0x9C (Use another server) with this as its Server Reference instead: where the client may reconnect (e.g. mqtt-b.example.com:443; its meaning is up to the clients). Empty: none.',
      format: 'optional-string',
      default: '',
      env: 'DRAWBRIDGE_SHUTDOWN_SERVER_REFERENCE',
    },
  },
  admin: {
    enabled: {
      doc: 'Run the admin HTTP listener (/metrics, /healthz, /readyz, /connections). It is never served on the public port.',
      format: 'bool',
      default: true,
      env: 'DRAWBRIDGE_ADMIN_ENABLED',
    },
    host: {
      doc: 'Address the admin listener binds to. Loopback by default: /connections shows client addresses and can close connections, so expose it only with admin.token set.',
      format: 'non-empty-string',
      default: '127.0.0.1',
      env: 'DRAWBRIDGE_ADMIN_HOST',
    },
    port: {
      doc: 'Port of the admin listener (0 picks a free port). 9464 is the port registered for Prometheus exporters of this kind.',
      format: 'port',
      default: 9464,
      env: 'DRAWBRIDGE_ADMIN_PORT',
    },
    token: {
      doc: 'When set, every admin path except /healthz and /readyz needs "Authorization: Bearer <token>"; empty means no token is asked for.',
      format: String,
      default: '',
      sensitive: true,
      env: 'DRAWBRIDGE_ADMIN_TOKEN',
    },
    readinessInterval: {
      doc: 'How often /readyz checks that an upstream broker accepts a TCP connection; the gateway is ready only while the latest check (at most this old) succeeded.',
      format: 'duration',
      default: 5_000,
      env: 'DRAWBRIDGE_ADMIN_READINESS_INTERVAL',
    },
  },
  metrics: {
    perClient: {
      doc: 'Add series labelled by client identity (client certificate CN, else remote IP address). Off by default: the per-connection detail lives in /connections.',
      format: 'bool',
      default: false,
      env: 'DRAWBRIDGE_METRICS_PER_CLIENT',
    },
    maxClientSeries: {
      doc: 'With metrics.perClient, how many distinct client identities get their own series; later ones are counted under client="other", so a scrape stays bounded.',
      format: 'nat',
      default: 100,
      env: 'DRAWBRIDGE_METRICS_MAX_CLIENT_SERIES',
    },
  },
  log: {
    level: {
      doc: 'Log level of the JSON log lines on stdout.',
      format: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
      default: 'info',
      env: 'DRAWBRIDGE_LOG_LEVEL',
    },
  },
} satisfies convict.Schema<RawConfig>

/** The configuration as convict validates it: lists still hold the strings that were written. */
export interface RawConfig {
  profile: 'development' | 'production'
  listen: {
    host: string
    port: number
    proxyProtocol: ProxyProtocolIn
    proxyProtocolFrom: string[]
  }
  ws: {
    path: string
    subprotocols: string[]
    requireSubprotocol: boolean
    maxPayload: number
    perMessageDeflate: boolean
    pingInterval: number
    pongTimeout: number
    allowedOrigins: string[]
    requireOrigin: boolean
    handshakeTimeout: number
  }
  upstream: {
    brokers: string[]
    connectTimeout: number
    connectOn: ConnectOn
    affinity: Affinity
    proxyProtocol: ProxyProtocol
    embedded: boolean
  }
  tls: TlsConfig
  auth: AuthConfig
  http: { diagnostics: boolean; trustedProxies: string[]; routes: RouteSpec[] }
  tcp: { enabled: boolean; port: number }
  limits: {
    maxConnections: number
    highWaterMark: number
    perClientConnections: number
    perClientRate: number
    perClientBurst: number
    ipv6Prefix: number
    trackedClients: number
    acceptRate: number
    messageRate: number
    byteRate: number
  }
  mqtt: { inspect: boolean; connectTimeout: number; maxPacketSize: number }
  shutdown: { grace: number; spread: number; serverReference: string }
  admin: {
    enabled: boolean
    host: string
    port: number
    token: string
    readinessInterval: number
  }
  metrics: { perClient: boolean; maxClientSeries: number }
  log: { level: string }
}

/**
 * The validated configuration, as the rest of the code sees it: RawConfig with every list that
 * has a structure parsed once, by loadConfig, so no user parses it again (or differently).
 */
export interface Config extends Omit<RawConfig, 'listen' | 'ws' | 'upstream' | 'http' | 'auth'> {
  listen: Omit<RawConfig['listen'], 'proxyProtocolFrom'> & { proxyProtocolFrom: readonly Cidr[] }
  ws: Omit<RawConfig['ws'], 'allowedOrigins'> & { allowedOrigins: readonly OriginRule[] }
  upstream: Omit<RawConfig['upstream'], 'brokers'> & { brokers: readonly HostPort[] }
  http: Omit<RawConfig['http'], 'trustedProxies' | 'routes'> & {
    trustedProxies: readonly Cidr[]
    routes: readonly Route[]
  }
  auth: Omit<AuthConfig, 'tokenFrom'> & { tokenFrom: readonly TokenFromEntry[] }
}

export type ClientAuth = 'none' | 'optional' | 'required'

/** upstream.connectOn: dial the broker before the WebSocket 101, or once the CONNECT is read. */
export type ConnectOn = 'upgrade' | 'connect'

/** upstream.affinity: the CONNECT field that picks a client's broker order (connect mode). */
export type Affinity = 'none' | 'clientId' | 'username'

export interface TlsConfig {
  enabled: boolean
  cert: string
  key: string
  passphrase: string
  ca: string
  crl: string
  closeRevoked: boolean
  clientAuth: ClientAuth
  minVersion: 'TLSv1.2' | 'TLSv1.3'
  ciphers: string
  expiryWarningDays: number
  watch: boolean
  reloadDebounce: number
  generateDevCerts: boolean
  ticketKeys: string
  identityAs: IdentityAs
  identityFrom: IdentityFrom
}

/** tls.identityAs: whether the CONNECT's username becomes the client certificate's identity. */
export type IdentityAs = 'none' | 'username'

/** tls.identityFrom: the certificate field that becomes the username. */
export type IdentityFrom = 'cn' | 'san-dns' | 'san-uri' | 'san-email'

/** auth.mode: whether clients need a token. */
export type AuthMode = 'none' | 'jwt'

/** auth.tokenFrom entries, in the order they are looked at. */
export type TokenFromEntry = 'header' | 'subprotocol' | 'query' | 'cookie' | 'password'

export const TOKEN_FROM_ENTRIES: readonly TokenFromEntry[] = [
  'header',
  'subprotocol',
  'query',
  'cookie',
  'password',
]

/** The algorithms auth.algorithms may list (jose's JWS algorithms; never none). */
export const TOKEN_ALGORITHMS: readonly string[] = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'HS256',
  'HS384',
  'HS512',
]

export interface AuthConfig {
  mode: AuthMode
  /** As written; Config has them checked (TokenFromEntry). */
  tokenFrom: string[]
  cookie: string
  jwksUrl: string
  jwksCa: string
  jwksRefetchInterval: number
  keys: string[]
  secretFile: string
  algorithms: string[]
  issuer: string
  audience: string
  clockTolerance: number
  maxTokenSize: number
  allowClientCert: boolean
  usernameClaim: string
  clientIdPrefixClaim: string
  permissionsClaim: string
}

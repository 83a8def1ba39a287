// Drawbridge connection check: runs in the user's browser, served by the gateway at GET / when
// http.diagnostics is on. No dependencies: a minimal MQTT 3.1.1 encoder/decoder is inline.
// Query string: ?idle=SECONDS sets the idle test (default 20, 1-300).
;(() => {
  'use strict'

  const params = new URLSearchParams(location.search)
  const IDLE_SECONDS = Math.min(300, Math.max(1, Number(params.get('idle')) || 20))
  const STEP_TIMEOUT_MS = 10000

  const STEPS = [
    ['tls', 'TLS and page load'],
    ['upgrade', 'WebSocket upgrade'],
    ['subprotocol', 'Subprotocol'],
    ['connect', 'MQTT CONNECT / CONNACK'],
    ['roundtrip', 'Subscribe and publish round trip'],
    ['idle', `Idle connection (${IDLE_SECONDS} s)`],
  ]

  // MQTT 3.1.1 section 3.2.2.3.
  const CONNACK_CODES = {
    0: 'accepted',
    1: 'refused: unacceptable protocol version (the broker does not speak MQTT 3.1.1)',
    2: 'refused: client identifier rejected',
    3: 'refused: server unavailable (with upstream.connectOn=connect: the gateway reached no broker)',
    4: 'refused: bad user name or password',
    5: 'refused: not authorized (the broker wants credentials; the path to it works)',
  }

  // ---- MQTT 3.1.1, just what the check needs ------------------------------------------------

  const encoder = new TextEncoder()
  const decoder = new TextDecoder()

  function utf8(text) {
    const bytes = encoder.encode(text)
    return [bytes.length >> 8, bytes.length & 0xff, ...bytes]
  }

  function packet(type, flags, body) {
    const length = []
    let n = body.length
    do {
      let byte = n % 128
      n = Math.floor(n / 128)
      if (n > 0) byte |= 0x80
      length.push(byte)
    } while (n > 0)
    return new Uint8Array([(type << 4) | flags, ...length, ...body])
  }

  const mqtt = {
    // Clean session, keepalive 0: the broker expects no PINGREQ, so the idle test is truly idle.
    connect: (clientId) => packet(1, 0, [...utf8('MQTT'), 4, 0x02, 0, 0, ...utf8(clientId)]),
    subscribe: (id, topic) => packet(8, 2, [id >> 8, id & 0xff, ...utf8(topic), 1]),
    publish: (id, topic, payload) =>
      packet(3, 2, [...utf8(topic), id >> 8, id & 0xff, ...encoder.encode(payload)]),
    puback: (id) => packet(4, 0, [id >> 8, id & 0xff]),
    disconnect: () => packet(14, 0, []),
  }

  /** Splits a byte stream into MQTT packets (a frame may hold part of one, or several). */
  class PacketReader {
    constructor() {
      this.buffer = new Uint8Array(0)
    }

    push(bytes) {
      const joined = new Uint8Array(this.buffer.length + bytes.length)
      joined.set(this.buffer)
      joined.set(bytes, this.buffer.length)
      this.buffer = joined
      const packets = []
      for (;;) {
        let length = 0
        let multiplier = 1
        let i = 1
        for (; i < this.buffer.length && i <= 4; i++) {
          length += (this.buffer[i] & 0x7f) * multiplier
          multiplier *= 128
          if ((this.buffer[i] & 0x80) === 0) break
        }
        if (i >= this.buffer.length || this.buffer.length < i + 1 + length) return packets
        const first = this.buffer[0]
        packets.push({
          type: first >> 4,
          flags: first & 0x0f,
          body: this.buffer.slice(i + 1, i + 1 + length),
        })
        this.buffer = this.buffer.slice(i + 1 + length)
      }
    }
  }

  /** A WebSocket carrying MQTT, with "wait for the next packet of type T" and close tracking. */
  class MqttSocket {
    constructor(ws) {
      this.ws = ws
      this.reader = new PacketReader()
      this.queue = []
      this.waiters = []
      this.closed = null
      ws.binaryType = 'arraybuffer'
      ws.addEventListener('message', (event) => {
        if (typeof event.data === 'string') return
        for (const p of this.reader.push(new Uint8Array(event.data))) {
          // Acknowledge QoS 1 deliveries at once, as any client must.
          if (p.type === 3 && (p.flags & 0x06) === 0x02) this.send(mqtt.puback(publishOf(p).id))
          this.queue.push(p)
        }
        this.wake()
      })
      ws.addEventListener('close', (event) => {
        this.closed = { code: event.code, reason: event.reason, at: performance.now() }
        this.wake()
      })
    }

    send(bytes) {
      this.ws.send(bytes)
    }

    wake() {
      for (const waiter of [...this.waiters]) waiter()
    }

    next(type, what) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => done(new Error(`no ${what} within ${STEP_TIMEOUT_MS / 1000} s`)),
          STEP_TIMEOUT_MS,
        )
        const check = () => {
          const index = this.queue.findIndex((p) => p.type === type)
          if (index !== -1) return done(null, this.queue.splice(index, 1)[0])
          if (this.closed)
            return done(
              new Error(`connection closed before ${what}: ${describeClose(this.closed)}`),
            )
        }
        const done = (err, value) => {
          clearTimeout(timer)
          this.waiters = this.waiters.filter((w) => w !== check)
          if (err) reject(err)
          else resolve(value)
        }
        this.waiters.push(check)
        check()
      })
    }
  }

  function publishOf(p) {
    const topicLength = (p.body[0] << 8) | p.body[1]
    const topic = decoder.decode(p.body.slice(2, 2 + topicLength))
    const qos = (p.flags >> 1) & 0x03
    let offset = 2 + topicLength
    let id = 0
    if (qos > 0) {
      id = (p.body[offset] << 8) | p.body[offset + 1]
      offset += 2
    }
    return { topic, id, qos, payload: decoder.decode(p.body.slice(offset)) }
  }

  // ---- WebSocket close codes a user may see ---------------------------------------------------

  const CLOSE_CODES = {
    1000: 'normal closure',
    1001: 'going away (the gateway is shutting down)',
    1003: 'unsupported data (text frame)',
    1006: 'closed abnormally, without a close frame: the connection was refused or cut',
    1008: 'policy violation (closed by an operator or a rule)',
    1009: 'message too big',
    1011: 'server error (the broker connection failed)',
    1013: 'try again later (no broker accepted the connection the gateway opened for the CONNECT)',
  }

  function describeClose(closed) {
    const meaning = CLOSE_CODES[closed.code] || 'unknown code'
    return `close code ${closed.code} (${meaning})${closed.reason ? `, reason "${closed.reason}"` : ''}`
  }

  // ---- the page ------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id)
  const results = new Map()
  let gatewayInfo = null

  function render() {
    const list = $('steps')
    list.textContent = ''
    STEPS.forEach(([key, name], index) => {
      const r = results.get(key) || { status: 'pending', details: [] }
      const item = document.createElement('li')
      item.dataset.step = key
      item.dataset.status = r.status
      const head = document.createElement('div')
      head.className = 'head'
      const badge = document.createElement('span')
      badge.className = 'badge'
      badge.textContent = r.status.toUpperCase()
      const title = document.createElement('span')
      title.className = 'name'
      title.textContent = `${index + 1}. ${name}`
      const time = document.createElement('span')
      time.className = 'time'
      time.textContent = r.ms === undefined ? '' : `${Math.round(r.ms)} ms`
      head.append(badge, title, time)
      item.append(head)
      if (r.details.length > 0) {
        const details = document.createElement('ul')
        details.className = 'detail'
        for (const d of r.details) {
          const line = document.createElement('li')
          if (d.kind) line.className = d.kind
          line.textContent = d.text
          details.append(line)
        }
        item.append(details)
      }
      list.append(item)
    })
  }

  function set(key, status, details, ms) {
    results.set(key, {
      status,
      details: details.map((d) => (typeof d === 'string' ? { text: d } : d)),
      ms,
    })
    render()
  }

  const note = (text) => ({ kind: 'note', text })
  const error = (text) => ({ kind: 'error', text })

  async function timed(fn) {
    const start = performance.now()
    const value = await fn()
    return [value, performance.now() - start]
  }

  function randomToken() {
    const bytes = new Uint8Array(9)
    crypto.getRandomValues(bytes)
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')
  }

  // (a) What the gateway saw of this page's own HTTPS request.
  async function checkTls() {
    set('tls', 'running', [])
    const [info, ms] = await timed(async () => {
      const res = await fetch('/diagnostics.json', { cache: 'no-store' })
      if (!res.ok) throw new Error(`GET /diagnostics.json answered ${res.status}`)
      return res.json()
    })
    gatewayInfo = info
    const details = []
    let status = 'pass'
    const nav = performance.getEntriesByType('navigation')[0]
    if (nav && nav.secureConnectionStart > 0) {
      details.push(
        `TLS handshake for this page: ${Math.round(nav.connectEnd - nav.secureConnectionStart)} ms`,
      )
    }
    if (info.tls) {
      const cert = info.tls.certificate
      details.push(`Gateway TLS: ${info.tls.protocol}, ${info.tls.cipher}`)
      if (cert) {
        details.push(`Certificate served by the gateway: ${cert.subject}`)
        details.push(`Issued by: ${cert.issuer}`)
        details.push(`SHA-256 fingerprint: ${cert.fingerprint256}`)
        details.push(`Valid until: ${cert.validTo}`)
        details.push(
          note(
            'Compare with the certificate your browser shows (padlock > connection is secure > certificate): a different issuer means something between you and the gateway (a TLS-inspecting proxy or antivirus) replaced it.',
          ),
        )
      }
    } else if (location.protocol === 'https:') {
      details.push(
        'TLS ends before the gateway (a load balancer or proxy terminates it); the gateway itself speaks plain HTTP.',
      )
    } else {
      status = 'warn'
      details.push(
        note(
          'This page was loaded over plain http: browsers on most networks need wss:// on port 443.',
        ),
      )
    }
    details.push(
      `Your address as the gateway sees it: ${info.request.clientAddress} (TCP peer ${info.request.peerAddress})`,
    )
    const forwarded = Object.entries(info.request.forwardingHeaders)
    if (forwarded.length === 0) {
      details.push('Forwarding headers (Via, X-Forwarded-For, Forwarded): none')
    } else {
      for (const [name, value] of forwarded) details.push(`Received ${name}: ${value}`)
      if (info.tls) {
        status = 'warn'
        details.push(
          note(
            'These headers arrived inside the encrypted connection, so something decrypted your traffic before the gateway: a TLS-inspecting proxy, or a load balancer that terminates and re-encrypts TLS. If your operator runs no such load balancer, your network inspects TLS; it must pass WebSocket upgrades through unchanged.',
          ),
        )
      }
    }
    set('tls', status, details, ms)
    return true
  }

  // (b) + (c): the upgrade, and which subprotocol the gateway chose.
  async function openWebSocket(protocols, token) {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
    const url = `${scheme}//${location.host}${gatewayInfo.websocket.path}?diag=${token}`
    return new Promise((resolve) => {
      const started = performance.now()
      const ws = new WebSocket(url, protocols)
      const timer = setTimeout(() => {
        ws.close()
        resolve({
          ws,
          error: `no answer within ${STEP_TIMEOUT_MS / 1000} s`,
          ms: performance.now() - started,
          url,
        })
      }, STEP_TIMEOUT_MS)
      ws.addEventListener('open', () => {
        clearTimeout(timer)
        resolve({ ws, ms: performance.now() - started, url })
      })
      ws.addEventListener('close', (event) => {
        clearTimeout(timer)
        resolve({
          ws,
          closed: { code: event.code, reason: event.reason },
          ms: performance.now() - started,
          url,
        })
      })
    })
  }

  async function refusalFor(token) {
    try {
      const res = await fetch(`/diagnostics.json?refusal=${token}`, { cache: 'no-store' })
      return (await res.json()).refusal
    } catch {
      return null
    }
  }

  async function checkUpgrade() {
    set('upgrade', 'running', [])
    const token = randomToken()
    const attempt = await openWebSocket(['mqtt'], token)
    if (attempt.closed || attempt.error) {
      const details = [`URL: ${attempt.url}`]
      if (attempt.closed)
        details.push(error(`The browser reports ${describeClose(attempt.closed)}.`))
      else details.push(error(attempt.error))
      const refusal = await refusalFor(token)
      if (refusal) {
        details.push(
          error(
            `The gateway answered HTTP ${refusal.status} (${refusal.reason}): ${refusal.message}`,
          ),
        )
      } else {
        details.push(
          note(
            'The gateway has no record of refusing this upgrade, so it never reached it complete: a proxy or firewall on the way refused or cut it, or removed its Upgrade headers.',
          ),
        )
      }
      set('upgrade', 'fail', details, attempt.ms)
      return null
    }
    set(
      'upgrade',
      'pass',
      [`URL: ${attempt.url}`, 'The gateway accepted the upgrade (101 Switching Protocols).'],
      attempt.ms,
    )
    return attempt.ws
  }

  async function checkSubprotocol(ws) {
    const details = [
      `Offered: mqtt; the gateway accepts: ${gatewayInfo.websocket.subprotocols.join(', ')}`,
    ]
    if (ws.protocol !== 'mqtt') {
      details.push(
        error(
          `Negotiated: "${ws.protocol}". MQTT clients require "mqtt" [MQTT-6.0.0-4] and close the connection otherwise.`,
        ),
      )
      set('subprotocol', 'fail', details)
      return false
    }
    details.push('Negotiated: mqtt')
    // MQTT 3.1 clients (Paho with mqttVersion 3, old MQTT.js) offer only the informal "mqttv3.1".
    const legacy = await openWebSocket(['mqttv3.1'], randomToken())
    if (legacy.closed || legacy.error) {
      details.push(
        note(
          '"mqttv3.1" (MQTT 3.1 clients) is not accepted here: such clients must use MQTT 3.1.1.',
        ),
      )
    } else {
      details.push(`"mqttv3.1" (MQTT 3.1 clients): accepted as ${legacy.ws.protocol}`)
      legacy.ws.close(1000)
    }
    set('subprotocol', 'pass', details)
    return true
  }

  async function checkConnect(socket, clientId) {
    set('connect', 'running', [])
    try {
      const [connack, ms] = await timed(() => {
        socket.send(mqtt.connect(clientId))
        return socket.next(2, 'CONNACK')
      })
      const code = connack.body[1]
      const meaning = CONNACK_CODES[code] || 'unknown return code'
      const details = [`Client id: ${clientId}`, `CONNACK return code ${code}: ${meaning}`]
      set('connect', code === 0 ? 'pass' : 'fail', details, ms)
      return code === 0
    } catch (err) {
      set('connect', 'fail', [error(err.message)])
      return false
    }
  }

  async function roundTrip(socket, topic, packetId, payload) {
    socket.send(mqtt.publish(packetId, topic, payload))
    await socket.next(4, 'PUBACK')
    for (;;) {
      const message = publishOf(await socket.next(3, 'the published message back'))
      if (message.topic === topic && message.payload === payload) return
    }
  }

  async function checkRoundTrip(socket, topic) {
    set('roundtrip', 'running', [])
    try {
      const [suback, subMs] = await timed(() => {
        socket.send(mqtt.subscribe(1, topic))
        return socket.next(9, 'SUBACK')
      })
      const granted = suback.body[2]
      if (granted === 0x80) {
        set('roundtrip', 'fail', [
          `Topic: ${topic}`,
          error('The broker refused the subscription (SUBACK 0x80): it may restrict topics.'),
        ])
        return false
      }
      const [, ms] = await timed(() => roundTrip(socket, topic, 2, `check ${Date.now()}`))
      set(
        'roundtrip',
        'pass',
        [
          `Topic: ${topic}`,
          `SUBACK after ${Math.round(subMs)} ms (granted QoS ${granted})`,
          `QoS 1 publish to receive: ${Math.round(ms)} ms`,
        ],
        subMs + ms,
      )
      return true
    } catch (err) {
      set('roundtrip', 'fail', [`Topic: ${topic}`, error(err.message)])
      return false
    }
  }

  async function checkIdle(socket, topic) {
    const pingMs = gatewayInfo.websocket.pingIntervalMs
    const pings =
      pingMs > 0
        ? `the gateway pings every ${pingMs / 1000} s`
        : 'the gateway sends no pings (ws.pingInterval=0)'
    const start = performance.now()
    const tick = () => {
      const left = Math.max(0, IDLE_SECONDS - Math.floor((performance.now() - start) / 1000))
      set('idle', 'running', [`No MQTT traffic for ${IDLE_SECONDS} s (${left} s left); ${pings}.`])
    }
    tick()
    const ticker = setInterval(tick, 1000)
    let onClose
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, IDLE_SECONDS * 1000)
      onClose = () => {
        if (!socket.closed) return
        clearTimeout(timer)
        resolve()
      }
      socket.waiters.push(onClose)
    })
    socket.waiters = socket.waiters.filter((w) => w !== onClose)
    clearInterval(ticker)
    if (socket.closed) {
      const after = (socket.closed.at - start) / 1000
      set('idle', 'fail', [
        error(
          `The connection was closed after ${after.toFixed(1)} s without traffic: ${describeClose(socket.closed)}.`,
        ),
        note(
          `Something on the path cuts idle connections; ${pings}. The gateway's ws.pingInterval must be below the shortest idle timeout on the path (proxies and load balancers often use 30-60 s).`,
        ),
      ])
      return false
    }
    try {
      const [, ms] = await timed(() => roundTrip(socket, topic, 3, `after idle ${Date.now()}`))
      set(
        'idle',
        'pass',
        [
          `Still open after ${IDLE_SECONDS} s without MQTT traffic; ${pings}.`,
          `Round trip afterwards: ${Math.round(ms)} ms`,
        ],
        IDLE_SECONDS * 1000 + ms,
      )
      return true
    } catch (err) {
      set('idle', 'fail', [error(err.message)])
      return false
    }
  }

  function skipRest(from) {
    let skipping = false
    for (const [key] of STEPS) {
      if (key === from) skipping = true
      if (skipping && !results.has(key)) set(key, 'skipped', ['Not run: an earlier step failed.'])
    }
  }

  async function run() {
    results.clear()
    render()
    $('summary').dataset.state = 'running'
    $('summary').textContent = 'Running checks…'
    $('copy').disabled = true
    $('rerun').disabled = true
    const started = new Date()
    try {
      await checkTls()
      const ws = await checkUpgrade()
      if (ws) {
        const socket = new MqttSocket(ws)
        const token = randomToken()
        const topic = `drawbridge/diagnostics/${token}`
        const ok =
          (await checkSubprotocol(ws)) &&
          (await checkConnect(socket, `drawbridge-check-${token.slice(0, 10)}`)) &&
          (await checkRoundTrip(socket, topic)) &&
          (await checkIdle(socket, topic))
        if (ok) socket.send(mqtt.disconnect())
        ws.close(1000)
      }
    } catch (err) {
      const running = [...results.entries()].find(([, r]) => r.status === 'running')
      if (running) set(running[0], 'fail', [error(err.message)])
      else set('tls', 'fail', [error(err.message)])
    }
    skipRest('tls')
    finish(started)
  }

  function finish(started) {
    const statuses = STEPS.map(([key]) => results.get(key).status)
    const failed = statuses.filter((s) => s === 'fail').length
    const warned = statuses.filter((s) => s === 'warn').length
    const summary = $('summary')
    summary.dataset.state = 'done'
    summary.dataset.result = failed > 0 ? 'fail' : warned > 0 ? 'warn' : 'pass'
    summary.textContent =
      failed > 0
        ? `${failed} check${failed > 1 ? 's' : ''} failed: see the first red step.`
        : warned > 0
          ? 'MQTT works from this browser, with warnings.'
          : 'All checks passed: MQTT over WebSocket works from this browser and network.'
    $('report').value = report(started)
    $('copy').disabled = false
    $('rerun').disabled = false
  }

  function report(started) {
    const lines = [
      'Drawbridge connection check',
      `Time: ${started.toISOString()}`,
      `Page: ${location.href}`,
      `User agent: ${navigator.userAgent}`,
    ]
    if (gatewayInfo) {
      const r = gatewayInfo.request
      lines.push(`Gateway: ${gatewayInfo.gateway.name} ${gatewayInfo.gateway.version}`)
      lines.push(
        `Client address (as the gateway sees it): ${r.clientAddress}; TCP peer ${r.peerAddress}`,
      )
      const forwarded = Object.entries(r.forwardingHeaders).map(([k, v]) => `${k}: ${v}`)
      lines.push(`Forwarding headers received: ${forwarded.length ? forwarded.join('; ') : 'none'}`)
      if (gatewayInfo.tls) {
        const c = gatewayInfo.tls.certificate
        lines.push(`Gateway TLS: ${gatewayInfo.tls.protocol} ${gatewayInfo.tls.cipher}`)
        if (c)
          lines.push(
            `Gateway certificate: ${c.subject}; issuer ${c.issuer}; SHA-256 ${c.fingerprint256}; valid until ${c.validTo}`,
          )
      } else {
        lines.push('Gateway TLS: none (terminated before the gateway, or plain http)')
      }
      const w = gatewayInfo.websocket
      lines.push(
        `WebSocket: path ${w.path}; subprotocols ${w.subprotocols.join(', ')}; ping every ${w.pingIntervalMs} ms`,
      )
    }
    lines.push('')
    STEPS.forEach(([key, name], index) => {
      const r = results.get(key)
      const time = r.ms === undefined ? '' : ` (${Math.round(r.ms)} ms)`
      lines.push(`[${r.status.toUpperCase()}] ${index + 1}. ${name}${time}`)
      for (const d of r.details) lines.push(`    ${d.text}`)
    })
    lines.push('', $('summary').textContent)
    return lines.join('\n')
  }

  async function copyReport() {
    const text = $('report').value
    try {
      await navigator.clipboard.writeText(text)
    } catch {
      // Older browsers, or no clipboard permission: copy from the selected text area.
      $('report').select()
      document.execCommand('copy')
    }
    $('copied').textContent = 'Report copied.'
  }

  $('copy').addEventListener('click', () => void copyReport())
  $('rerun').addEventListener('click', () => void run())
  void run()
})()

// src/config/origin.ts: one grammar for ws.allowedOrigins entries and for a request's Origin.
// Before it there were two (the config format's and the handshake's), and compileOrigins
// dropped an entry the second could not split, so a list of such entries became empty and
// allowed every origin.
import t from 'tap'
import { loadConfig } from '../src/config/load.js'
import { compileOrigins, parseOrigin, parseOriginPattern } from '../src/config/origin.js'
import { originAllowed } from '../src/edge/handshake.js'
import { ConfigError } from '../src/errors.js'

function configAccepts(pattern: string): boolean {
  try {
    loadConfig({ env: { DRAWBRIDGE_WS_ALLOWED_ORIGINS: pattern } })
    return true
  } catch (err) {
    if (err instanceof ConfigError && err.key === 'ws.allowedOrigins') return false
    throw err
  }
}

function compiles(pattern: string): boolean {
  try {
    compileOrigins([pattern])
    return true
  } catch {
    return false
  }
}

t.test(
  'a wildcard before an IPv6 literal fails closed (it used to allow every origin)',
  async (t) => {
    // The config format accepted this and the handshake's grammar did not, so compileOrigins
    // dropped it: the allow-list came out empty and originAllowed() said yes to anyone.
    for (const pattern of ['https://*.[::1]', 'https://*.[::1]:8443']) {
      t.throws(() => loadConfig({ env: { DRAWBRIDGE_WS_ALLOWED_ORIGINS: pattern } }), {
        name: 'ConfigError',
        key: 'ws.allowedOrigins',
        code: 'DRAWBRIDGE_ERR_CONFIG',
      })
      t.throws(() => compileOrigins([pattern]), /is not an origin/, `${pattern}: compile throws`)
    }
  },
)

t.test('compileOrigins throws on an entry that does not parse, never drops it', async (t) => {
  t.throws(
    () => compileOrigins(['https://app.example.com', 'app.example.com']),
    /"app\.example\.com" is not an origin/,
  )
  t.throws(() => compileOrigins(['https://app.example.com/page']), /is not an origin/)
  t.same(compileOrigins([]), [], 'an empty list stays empty (allow any): nothing was dropped')
})

t.test('the config, the compiled rules and the request check agree on every pattern', async (t) => {
  const accepted = [
    'https://app.example.com',
    'HTTPS://App.Example.com',
    'http://localhost:8080',
    'https://192.0.2.7',
    'https://[::1]:8443',
    'https://[2001:db8::7]',
    'https://a_b.example.com',
    'https://*.example.org',
    'null',
  ]
  const refused = [
    'https://*.[::1]',
    'https://*.',
    'https://*..',
    'https://a..b',
    'https://.example.com',
    'https://[::::]',
    'https://[::1',
    'https://x.org:',
    'https://x.org:99999',
    'ftp://x.org',
    'app.example.com',
    'https://app.example.com/',
    'https://app.example.com/page',
    'https://user@app.example.com',
  ]
  for (const pattern of accepted) {
    t.ok(configAccepts(pattern), `${pattern}: config accepts`)
    t.ok(compiles(pattern), `${pattern}: compiles`)
    // A pattern without a wildcard is itself an origin a browser may send: the request-side
    // parser must read it, and it must match its own rule.
    if (!pattern.includes('*')) {
      t.ok(originAllowed(pattern, compileOrigins([pattern])), `${pattern}: matches itself`)
    }
  }
  for (const pattern of refused) {
    t.notOk(configAccepts(pattern), `${JSON.stringify(pattern)}: config refuses`)
    t.notOk(compiles(pattern), `${JSON.stringify(pattern)}: does not compile`)
    t.equal(parseOrigin(pattern), undefined, `${JSON.stringify(pattern)}: not a request origin`)
  }
})

t.test('rules and request origins', async (t) => {
  t.same(parseOriginPattern(' HTTPS://*.Example.org:8443 '), {
    scheme: 'https',
    host: '.example.org',
    port: '8443',
    anySubdomain: true,
  })
  t.same(parseOriginPattern('NULL'), 'null')
  t.same(parseOrigin('https://[::1]:8443'), { scheme: 'https', host: '[::1]', port: '8443' })
  t.equal(parseOrigin('null'), 'null')
  t.equal(parseOrigin('https://*.example.org'), undefined, 'a wildcard is pattern syntax only')
  t.notOk(originAllowed('https://*.example.org', compileOrigins(['https://*.example.org'])))
})

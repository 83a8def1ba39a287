// The README is part of the interface: its configuration reference is generated from the
// schema, and every error code and close code the gateway uses has a row (fastify's
// "all errors are documented" test).
import { readFileSync } from 'node:fs'
import t from 'tap'
import { CloseCode } from '../src/bridge/close-codes.js'
import { CONFIG_DOCS_END, CONFIG_DOCS_START, renderConfigReference } from '../src/config/docs.js'
import { ERROR_CODES } from '../src/errors.js'
import { DisconnectReasonCode } from '../src/mqtt/disconnect.js'

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')

t.test('the README opens with the two commands a new user runs', async (t) => {
  const firstBlock = /```sh\n([\s\S]*?)```/.exec(readme)?.[1] ?? ''
  t.match(firstBlock, /^npm install && npm start/m)
  t.match(firstBlock, /^npm install && npm test/m)
})

t.test('the configuration reference is generated from the schema', async (t) => {
  const start = readme.indexOf(CONFIG_DOCS_START)
  const end = readme.indexOf(CONFIG_DOCS_END)
  t.ok(start !== -1 && end > start, 'the README has the markers')
  t.equal(
    readme.slice(start, end + CONFIG_DOCS_END.length),
    renderConfigReference(),
    'README is up to date (run npm run docs:config)',
  )
})

t.test('every error code and close code is documented', async (t) => {
  // Table cells, whatever padding prettier gives them.
  const cell = (text: string): RegExp => new RegExp(`\\|\\s*${text}\\s*\\|`)
  for (const code of ERROR_CODES) t.match(readme, cell(`\`${code}\``), code)
  for (const [name, code] of Object.entries(CloseCode)) {
    t.match(readme, cell(String(code)), `${name} (${code})`)
  }
})

t.test('every DISCONNECT reason code the gateway sends has a row', async (t) => {
  const section = readme.slice(readme.indexOf('### MQTT 5 DISCONNECTs'))
  for (const [name, code] of Object.entries(DisconnectReasonCode)) {
    const hex = `0x${code.toString(16).toUpperCase()}`
    t.match(section, new RegExp(`^\\|\\s*\`${hex}\`\\s*\\|`, 'm'), `${name} (${hex})`)
  }
})

// Rewrites the configuration reference in README.md from the schema (run after `npm run build`).
import { readFileSync, writeFileSync } from 'node:fs'
import { CONFIG_DOCS_END, CONFIG_DOCS_START, renderConfigReference } from '../dist/config/docs.js'

const readmePath = new URL('../README.md', import.meta.url)
const readme = readFileSync(readmePath, 'utf8')
const start = readme.indexOf(CONFIG_DOCS_START)
const end = readme.indexOf(CONFIG_DOCS_END)
if (start === -1 || end === -1) {
  console.error('README.md has no configuration reference markers')
  process.exit(1)
}
const updated =
  readme.slice(0, start) + renderConfigReference() + readme.slice(end + CONFIG_DOCS_END.length)
writeFileSync(readmePath, updated)
console.log(updated === readme ? 'README.md already up to date' : 'README.md updated')

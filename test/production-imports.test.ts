// Production TLS never loads the development PKI (dev/certs.ts) or node-forge: a process imports
// the built module with a resolve hook that refuses either, so an import of dev/certs.js creeping
// back into edge/tls.ts (it once came for parsePemCerts) fails here. The hook watches resolution,
// not a list of names, so it also catches forge arriving through some other module.
import { spawnSync } from 'node:child_process'
import t from 'tap'

const DIST = new URL('../dist/', import.meta.url)

// Runs in the hooks thread: every resolved URL passes through, the forbidden ones throw.
const HOOKS = `
export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context)
  if (/\\/node_modules\\/node-forge\\/|\\/dist\\/dev\\//.test(resolved.url)) {
    throw new Error('development module loaded: ' + resolved.url + ' from ' + context.parentURL)
  }
  return resolved
}
`

/** Imports `specifier` (a URL, or a package name resolved from the package root) guarded. */
function importWithGuard(specifier: string): { status: number | null; stderr: string } {
  const script = [
    `import { register } from 'node:module'`,
    `register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(HOOKS)}`)})`,
    `await import(${JSON.stringify(specifier)})`,
  ].join('\n')
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: new URL('..', import.meta.url),
    encoding: 'utf8',
    timeout: 20_000,
  })
  return { status: result.status, stderr: result.stderr }
}

t.test('the guard catches node-forge and dev/ (control)', async (t) => {
  const dev = importWithGuard(new URL('dev/certs.js', DIST).href)
  t.not(dev.status, 0, 'importing dev/certs.js fails under the guard')
  t.match(dev.stderr, /development module loaded: .*\/dist\/dev\/certs\.js/)
  const forge = importWithGuard('node-forge')
  t.not(forge.status, 0, 'importing node-forge fails under the guard')
  t.match(forge.stderr, /development module loaded: .*\/node_modules\/node-forge\//)
})

t.test('edge/tls.js and gateway.js load without dev/ or node-forge', async (t) => {
  for (const module of ['edge/tls.js', 'edge/pem.js', 'gateway.js']) {
    const result = importWithGuard(new URL(module, DIST).href)
    t.equal(result.status, 0, `${module}: ${result.stderr}`)
  }
})

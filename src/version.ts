// The package version, for build_info and the start log line; from package.json one level above
// src/ or dist/.
import { readFileSync } from 'node:fs'

export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string
  }
  return pkg.version
}

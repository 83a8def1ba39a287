// Reads the admin listener the way Prometheus and an operator would: plain HTTP requests, and a
// small parser of the text exposition format
// (https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format).

export interface Scrape {
  /** `# TYPE` of every metric family, by family name. */
  types: Map<string, string>
  /** Sample value by canonical series key: name{a="1",b="2"} with labels sorted. */
  samples: Map<string, number>
  text: string
}

export async function adminGet(
  adminUrl: string,
  path: string,
  init: RequestInit = {},
): Promise<{ status: number; headers: Headers; body: string }> {
  const res = await fetch(`${adminUrl}${path}`, init)
  return { status: res.status, headers: res.headers, body: await res.text() }
}

export async function scrape(
  adminUrl: string,
  headers: Record<string, string> = {},
): Promise<Scrape> {
  const res = await adminGet(adminUrl, '/metrics', { headers })
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}: ${res.body}`)
  return parseExposition(res.body)
}

export function parseExposition(text: string): Scrape {
  const types = new Map<string, string>()
  const samples = new Map<string, number>()
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line)
    if (type) {
      types.set(type[1] ?? '', type[2] ?? '')
      continue
    }
    if (line === '' || line.startsWith('#')) continue
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!sample) throw new Error(`unparsable exposition line: ${line}`)
    const labels: Record<string, string> = {}
    for (const [, name, value] of (sample[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[name ?? ''] = value ?? ''
    }
    samples.set(seriesKey(sample[1] ?? '', labels), Number(sample[3]))
  }
  return { types, samples, text }
}

export function seriesKey(name: string, labels: Record<string, string> = {}): string {
  const parts = Object.keys(labels)
    .sort()
    .map((key) => `${key}="${labels[key] ?? ''}"`)
  return parts.length === 0 ? name : `${name}{${parts.join(',')}}`
}

/** A series' value; a series that is not exposed counts as 0 (a counter before its first event). */
export function value(s: Scrape, name: string, labels: Record<string, string> = {}): number {
  return s.samples.get(seriesKey(name, labels)) ?? 0
}

/** How much a series moved between two scrapes. */
export function delta(
  before: Scrape,
  after: Scrape,
  name: string,
  labels: Record<string, string> = {},
): number {
  return value(after, name, labels) - value(before, name, labels)
}

/** Polls `check` every `everyMs` until it returns true or `timeoutMs` passes (bounded). */
export async function eventually(
  check: () => Promise<boolean>,
  timeoutMs = 5_000,
  everyMs = 50,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return true
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
  return check()
}

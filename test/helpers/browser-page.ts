// The test page (test/fixtures/browser/page.html) served from a loopback static server, and a
// typed handle on the API its clients.js puts on window (MQTT.js and Paho behind one interface).
import type { Page } from 'playwright-core'
import type { Teardown } from './broker.js'
import { consoleOf, type Browser } from './chromium.js'
import { CLIENT_BUNDLES, startStaticServer, type StaticServer } from './static-server.js'

const fixture = (name: string): string =>
  new URL(`../fixtures/browser/${name}`, import.meta.url).pathname

export function startTestPageServer(t: Teardown): Promise<StaticServer> {
  return startStaticServer(t, {
    '/': { type: 'text/html; charset=utf-8', file: fixture('page.html') },
    '/clients.js': { type: 'text/javascript', file: fixture('clients.js') },
    ...CLIENT_BUNDLES,
  })
}

export type Library = 'mqttjs' | 'paho'

export interface Received {
  topic: string
  payload: string
  qos: number
}

export interface ClientState {
  closed: { at: number; reason: string } | null
  errors: string[]
}

/** What clients.js defines; only ever called inside page.evaluate (in the browser). */
interface PageApi {
  drawbridge: {
    mqttjs: (url: string, o: { protocolVersion: number; keepalive: number }) => Promise<number>
    paho: (url: string, o: { mqttVersion: number; keepAliveInterval: number }) => Promise<number>
    subscribe: (id: number, topic: string, qos: number) => Promise<number[]>
    publish: (id: number, topic: string, payload: string, qos: number) => Promise<void>
    received: (id: number) => Received[]
    state: (id: number) => ClientState
    end: (id: number) => void
  }
}

export interface BrowserClient {
  id: number
  subscribe: (topic: string, qos: number) => Promise<number[]>
  publish: (topic: string, payload: string, qos: number) => Promise<void>
  received: () => Promise<Received[]>
  /** Waits (bounded by the page's default timeout) until `count` messages arrived. */
  waitForMessages: (count: number) => Promise<Received[]>
  state: () => Promise<ClientState>
  /** Waits, up to `timeoutMs`, until the connection has closed; the state then. */
  waitForClose: (timeoutMs: number) => Promise<ClientState>
  end: () => Promise<void>
}

export interface ConnectOptions {
  /** MQTT protocol level: 3 (3.1), 4 (3.1.1), 5. */
  version: 3 | 4 | 5
  /** MQTT keepalive in seconds (0 = none). */
  keepalive?: number
}

/** Connects `library` in the page to `url`; rejects with the library's error when it fails. */
export async function connectInPage(
  page: Page,
  library: Library,
  url: string,
  { version, keepalive = 60 }: ConnectOptions,
): Promise<BrowserClient> {
  // page.evaluate serialises each arrow function and runs it in the page, where globalThis is
  // the window clients.js extended: nothing from this module's scope is visible there.
  const id = await page.evaluate(
    async ([library, url, version, keepalive]) => {
      const d = (globalThis as unknown as PageApi).drawbridge
      return library === 'mqttjs'
        ? d.mqttjs(url, { protocolVersion: version, keepalive })
        : d.paho(url, { mqttVersion: version, keepAliveInterval: keepalive })
    },
    [library, url, version, keepalive] as const,
  )
  const received = (): Promise<Received[]> =>
    page.evaluate((id) => (globalThis as unknown as PageApi).drawbridge.received(id), id)
  const state = (): Promise<ClientState> =>
    page.evaluate((id) => (globalThis as unknown as PageApi).drawbridge.state(id), id)
  return {
    id,
    subscribe: (topic, qos) =>
      page.evaluate(
        ([id, topic, qos]) =>
          (globalThis as unknown as PageApi).drawbridge.subscribe(id, topic, qos),
        [id, topic, qos] as const,
      ),
    publish: (topic, payload, qos) =>
      page.evaluate(
        ([id, topic, payload, qos]) =>
          (globalThis as unknown as PageApi).drawbridge.publish(id, topic, payload, qos),
        [id, topic, payload, qos] as const,
      ),
    received,
    waitForMessages: async (count) => {
      await page.waitForFunction(
        ([id, count]) => (globalThis as unknown as PageApi).drawbridge.received(id).length >= count,
        [id, count] as const,
        {
          polling: 50,
        },
      )
      return received()
    },
    state,
    waitForClose: async (timeoutMs) => {
      await page.waitForFunction(
        (id) => (globalThis as unknown as PageApi).drawbridge.state(id).closed !== null,
        id,
        { polling: 50, timeout: timeoutMs },
      )
      return state()
    },
    end: () => page.evaluate((id) => (globalThis as unknown as PageApi).drawbridge.end(id), id),
  }
}

export interface FailedConnect {
  /** The page, still open on `origin`, for what the test does next. */
  page: Page
  /** The connect's error message; undefined if it connected after all. */
  error: string | undefined
  /** What the page prints to its console, kept up to date (where Chromium says why). */
  devtools: string[]
}

/**
 * Opens a new page on `origin` and connects `library` to `url` where that is expected to fail:
 * the error and what DevTools printed, for the test to assert on.
 */
export async function connectFailsInPage(
  t: Teardown,
  browser: Browser,
  origin: string,
  library: Library,
  url: string,
  options: ConnectOptions,
): Promise<FailedConnect> {
  const page = await browser.page(t)
  const devtools = consoleOf(page)
  await page.goto(origin)
  let error: string | undefined
  try {
    const client = await connectInPage(page, library, url, options)
    await client.end()
  } catch (err) {
    error = err instanceof Error ? err.message : String(err)
  }
  return { page, error, devtools }
}

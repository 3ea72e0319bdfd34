/**
 * Announces the mirror to relays: `POST <relay>/xrpc/com.atproto.sync.requestCrawl`
 * with `{ hostname }`, the name under which relays reach this node's public HTTP
 * server (and its `subscribeRepos`). A relay that accepts then crawls the mirror
 * as it crawls a PDS.
 *
 * - Asked once when the node starts, then again every `intervalMs` (20 minutes, as
 *   the reference PDS re-announces itself): a relay that restarted or dropped an
 *   idle host learns of the mirror again. Relays take a repeated request as a no-op.
 * - Each relay is asked on its own; a refusal or an unreachable relay is logged
 *   (`relay`, `hostname`, what failed) and kept in `status()`, never thrown: the
 *   node runs on without the announcement.
 * - Outbound requests go through the address policy (src/http/policy.ts), like
 *   every other request the node makes. A redirect is an answer, not followed: a
 *   POST is not replayed to wherever a relay points.
 */
import { repeatingTask, type RepeatingTask } from '@libp2p/utils'
import { logger } from '@libp2p/logger'
import { ConfigError } from '../errors.ts'
import { describeFetchError, readTextLimited, type FetchLike } from '../http/fetch.ts'
import { defaultPolicyFetch } from '../http/policy.ts'
import { xrpcUrl } from '../http/xrpc.ts'
import type { CrawlRequestStatus } from '../mirror/api.ts'

const log = logger('atmirror:request-crawl')

const NSID = 'com.atproto.sync.requestCrawl'

export interface CrawlRequesterInit {
  /** Relay base URLs (`https://relay.example.com`). */
  relays: readonly string[]
  /** The hostname relays reach this mirror's public HTTP server under (no scheme, no path). */
  hostname: string
  /**
   * Milliseconds between announcements after the first.
   *
   * @default 1_200_000 (20 minutes)
   */
  intervalMs?: number
  /** Bounds each request. @default 10_000 */
  timeoutMs?: number
  /** Allow relays on loopback (tests). */
  allowLoopback?: boolean
  /** Allow relays on private networks. */
  allowPrivateNetwork?: boolean
  /** Overrides the policy fetch (tests). */
  fetch?: FetchLike
}

/** Relay announcements of one node; see the file header. */
export class CrawlRequester {
  readonly #relays: string[]
  readonly #hostname: string
  readonly #timeoutMs: number
  readonly #fetch: FetchLike
  readonly #task: RepeatingTask
  readonly #last = new Map<string, CrawlRequestStatus>()
  #passes = 0

  constructor (init: CrawlRequesterInit) {
    this.#hostname = checkHostname(init.hostname)
    this.#relays = init.relays.map(relay => checkRelayUrl(relay))
    this.#timeoutMs = init.timeoutMs ?? 10_000
    this.#fetch = init.fetch ?? defaultPolicyFetch({ allowLoopback: init.allowLoopback, allowPrivateNetwork: init.allowPrivateNetwork })
    this.#task = repeatingTask(async (options) => { await this.announce(options?.signal) }, init.intervalMs ?? 20 * 60_000, {
      runImmediately: true,
      timeout: this.#timeoutMs * 2
    })
  }

  start (): void {
    this.#task.start()
  }

  stop (): void {
    this.#task.stop()
  }

  /** Completed announcement passes (each asks every relay once). */
  get passes (): number {
    return this.#passes
  }

  /** The last outcome per relay, in the order the relays were given. */
  status (): CrawlRequestStatus[] {
    return this.#relays.flatMap(relay => this.#last.get(relay) ?? [])
  }

  /** Asks every relay once, at the same time; never throws. */
  async announce (signal?: AbortSignal): Promise<CrawlRequestStatus[]> {
    const results = await Promise.all(this.#relays.map(async relay => await this.#ask(relay, signal)))
    this.#passes++
    return results
  }

  async #ask (relay: string, signal?: AbortSignal): Promise<CrawlRequestStatus> {
    const url = xrpcUrl(relay, NSID)
    const at = new Date().toISOString()
    let status: CrawlRequestStatus
    try {
      const timeout = AbortSignal.timeout(this.#timeoutMs)
      const res = await this.#fetch(url, {
        signal: signal === undefined ? timeout : AbortSignal.any([signal, timeout]),
        method: 'POST',
        redirect: 'manual',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ hostname: this.#hostname })
      })
      const text = await readTextLimited(res, 64 * 1024).catch(() => '')
      if (res.ok) {
        status = { relay, at, ok: true }
        log('asked %s to crawl %s', relay, this.#hostname)
      } else {
        status = { relay, at, ok: false, error: `HTTP ${res.status}${xrpcErrorName(text)}` }
      }
    } catch (err) {
      status = { relay, at, ok: false, error: describeFetchError(err) }
    }
    if (!status.ok) log.error('requestCrawl refused or failed; relay=%s hostname=%s: %s', relay, this.#hostname, status.error)
    this.#last.set(relay, status)
    return status
  }
}

function xrpcErrorName (body: string): string {
  try {
    const parsed = JSON.parse(body) as { error?: unknown, message?: unknown }
    const parts = [parsed.error, parsed.message].filter((part): part is string => typeof part === 'string')
    return parts.length === 0 ? '' : ` ${parts.join(': ')}`
  } catch {
    return ''
  }
}

function checkRelayUrl (relay: string): string {
  let url: URL
  try {
    url = new URL(relay)
  } catch {
    throw new ConfigError(`requestCrawl: relay is not a URL; relay=${JSON.stringify(relay)}`)
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new ConfigError(`requestCrawl: relay must be http(s); relay=${relay}`)
  return url.origin
}

const HOSTNAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*(:\d{1,5})?$/i

function checkHostname (hostname: string): string {
  if (!HOSTNAME.test(hostname)) throw new ConfigError(`requestCrawl: hostname must be a host name (and port), without scheme or path; hostname=${JSON.stringify(hostname)}`)
  return hostname.toLowerCase()
}

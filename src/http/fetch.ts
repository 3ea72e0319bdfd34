/**
 * Bounded HTTP for identity and XRPC requests: every request gets a timeout,
 * combined with the caller's signal, and every body read has a size cap so a
 * hostile server cannot make us buffer without end.
 *
 * Redirects are followed here, one hop at a time (`redirect: 'manual'`), so each
 * hop goes through the same fetch and so the same address policy (policy.ts) as
 * the first request: at most `maxRedirects` hops, only to http(s), never from
 * https down to http. All our requests are GET queries (XRPC queries, DID
 * documents, handle lookups), which HTTP lets a server redirect; a PDS may send a
 * sync query elsewhere (a CDN for blobs), so refusing every redirect would break
 * real hosts, while three hops are more than any of them uses.
 */
import { isIP } from 'node:net'
import { BodyTooLargeError, RedirectRefusedError } from '../errors.ts'
import { defaultPolicyFetch } from './policy.ts'

/** A `fetch`-compatible function (injected in tests or to add a proxy). */
export type FetchLike = (input: string | URL, init?: RequestInit) => Promise<Response>

export interface BoundedFetchOptions {
  signal?: AbortSignal
  /** Abort the request (headers and body, every hop) after this long. @default 10_000 */
  timeoutMs?: number
  /**
   * The fetch every hop goes through. @default the address policy's fetch with
   * nothing relaxed (see policy.ts)
   */
  fetch?: FetchLike
  headers?: Record<string, string>
  /** Redirect hops followed. @default 3 */
  maxRedirects?: number
}

/** Default time budget of one request. */
export const DEFAULT_TIMEOUT_MS = 10_000

/** Default of {@link BoundedFetchOptions.maxRedirects}. */
export const DEFAULT_MAX_REDIRECTS = 3

const REDIRECTS = new Set([301, 302, 303, 307, 308])

/**
 * `fetch` bounded by `timeoutMs` and the caller's signal, following redirects hop
 * by hop (see the file header). The same signal keeps bounding the body read.
 * Errors are fetch's own (`TimeoutError`, `AbortError`, `TypeError`), the
 * policy's AddressNotAllowedError and RedirectRefusedError; callers rethrow the
 * caller's own abort (`signal.throwIfAborted()`) and map the rest.
 */
export async function boundedFetch (url: string | URL, options: BoundedFetchOptions = {}): Promise<Response> {
  const timeout = AbortSignal.timeout(options.timeoutMs ?? DEFAULT_TIMEOUT_MS)
  const signal = options.signal === undefined ? timeout : AbortSignal.any([options.signal, timeout])
  const doFetch = options.fetch ?? defaultPolicyFetch()
  const maxRedirects = options.maxRedirects ?? DEFAULT_MAX_REDIRECTS
  let current = new URL(url)
  for (let hop = 0; ; hop++) {
    const res = await doFetch(current, { signal, headers: options.headers, redirect: 'manual' })
    const location = REDIRECTS.has(res.status) ? res.headers.get('location') : null
    if (location === null) return res
    await res.body?.cancel().catch(() => {})
    let next: URL
    try {
      next = new URL(location, current)
    } catch {
      throw new RedirectRefusedError('not a URL', { url: current.href, location })
    }
    if (hop >= maxRedirects) throw new RedirectRefusedError(`more than ${maxRedirects} hops`, { url: current.href, location: next.href })
    if (next.protocol !== 'https:' && next.protocol !== 'http:') throw new RedirectRefusedError(`${next.protocol} is not http(s)`, { url: current.href, location: next.href })
    if (current.protocol === 'https:' && next.protocol === 'http:') throw new RedirectRefusedError('https to http', { url: current.href, location: next.href })
    current = next
  }
}

// Lives in errors.ts with every other error; re-exported here, where it was first defined.
export { BodyTooLargeError }

/** Reads a whole body, refusing more than `maxBytes`. */
export async function readBodyLimited (res: Response, maxBytes: number): Promise<Uint8Array> {
  const declared = Number(res.headers.get('content-length') ?? NaN)
  if (Number.isFinite(declared) && declared > maxBytes) {
    await res.body?.cancel().catch(() => {})
    throw new BodyTooLargeError(maxBytes)
  }
  if (res.body === null) return new Uint8Array(0)
  const chunks: Uint8Array[] = []
  let total = 0
  const reader = res.body.getReader()
  try {
    while (true) {
      const { done, value } = await reader.read()
      if (done) break
      total += value.byteLength
      if (total > maxBytes) {
        await reader.cancel().catch(() => {})
        throw new BodyTooLargeError(maxBytes)
      }
      chunks.push(value)
    }
  } finally {
    reader.releaseLock()
  }
  if (chunks.length === 1) return chunks[0] as Uint8Array
  const out = new Uint8Array(total)
  let offset = 0
  for (const chunk of chunks) {
    out.set(chunk, offset)
    offset += chunk.byteLength
  }
  return out
}

/** Reads a body as UTF-8 text, refusing more than `maxBytes`. */
export async function readTextLimited (res: Response, maxBytes: number): Promise<string> {
  return new TextDecoder('utf-8', { fatal: true }).decode(await readBodyLimited(res, maxBytes))
}

/**
 * TLDs the handle spec reserves (never resolved for handles; the DID spec applies
 * the same restriction to did:web). `.test` is allowed, for tests.
 */
const RESERVED_TLDS = new Set(['alt', 'arpa', 'example', 'internal', 'invalid', 'local', 'localhost', 'onion'])

/** The reserved TLD `hostname` ends in, or undefined. */
export function reservedTld (hostname: string): string | undefined {
  const tld = hostname.slice(hostname.lastIndexOf('.') + 1).toLowerCase()
  return RESERVED_TLDS.has(tld) ? tld : undefined
}

/** True for `localhost`: the only did:web host allowed a port and plain http (tests only). */
export function isLocalhost (hostname: string): boolean {
  return hostname === 'localhost'
}

/**
 * True for `localhost` and the loopback IP literals `127.0.0.0/8` and `[::1]`, as
 * WHATWG URL normalizes a `hostname` (IPv4 dotted, IPv6 compressed in brackets):
 * where a plain-http PDS is tolerated, on a local test network only.
 */
export function isLoopbackHost (hostname: string): boolean {
  if (hostname === 'localhost' || hostname === '[::1]') return true
  return isIP(hostname) === 4 && hostname.startsWith('127.')
}

/** A short reason for a failed request: timeout, network error, or the error's message. */
export function describeFetchError (err: unknown): string {
  const e = err as Error & { cause?: Error & { code?: string } }
  if (e?.name === 'TimeoutError') return 'timed out'
  if (e?.name === 'BodyTooLargeError' || e?.name === 'AddressNotAllowedError' || e?.name === 'RedirectRefusedError') return e.message
  if (e?.name === 'SyntaxError') return `invalid JSON (${e.message})`
  if (e instanceof TypeError && e.cause?.message === 'bad port') return 'fetch refuses this port (one of the ports browsers block, such as 1, 25 or 6000): use another'
  if (e instanceof TypeError && e.cause?.code === 'ECONNREFUSED') return 'connection refused: nothing listens there'
  if (e instanceof TypeError && e.cause !== undefined) return `${e.message}: ${e.cause.code ?? e.cause.message}`
  return e?.message ?? String(err)
}

/**
 * Bounded HTTP for identity and XRPC requests: every request gets a timeout,
 * combined with the caller's signal, and every body read has a size cap so a
 * hostile server cannot make us buffer without end.
 */

/** A `fetch`-compatible function (injected in tests or to add a proxy). */
export type FetchLike = (input: string | URL, init?: RequestInit) => Promise<Response>

export interface BoundedFetchOptions {
  signal?: AbortSignal
  /** Abort the request (headers and body) after this long. @default 10_000 */
  timeoutMs?: number
  fetch?: FetchLike
  headers?: Record<string, string>
}

/** Default time budget of one request. */
export const DEFAULT_TIMEOUT_MS = 10_000

/**
 * `fetch` bounded by `timeoutMs` and the caller's signal. The same signal keeps
 * bounding the body read. Errors are fetch's own (`TimeoutError`, `AbortError`,
 * `TypeError`); callers rethrow the caller's own abort (`signal.throwIfAborted()`)
 * and map the rest.
 */
export async function boundedFetch (url: string | URL, options: BoundedFetchOptions = {}): Promise<Response> {
  const timeout = AbortSignal.timeout(options.timeoutMs ?? DEFAULT_TIMEOUT_MS)
  const signal = options.signal === undefined ? timeout : AbortSignal.any([options.signal, timeout])
  const doFetch = options.fetch ?? fetch
  return await doFetch(url, { signal, headers: options.headers, redirect: 'follow' })
}

/** The body exceeded the size cap. */
export class BodyTooLargeError extends Error {
  readonly limit: number
  constructor (limit: number) {
    super(`response body larger than ${limit} bytes`)
    this.name = 'BodyTooLargeError'
    this.limit = limit
  }
}

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

/** True for `localhost` (the only host where plain http is tolerated, in tests). */
export function isLocalhost (hostname: string): boolean {
  return hostname === 'localhost'
}

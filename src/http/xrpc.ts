/**
 * A small XRPC client for PDS queries (`GET /xrpc/<nsid>`), shared by head
 * resolution and block fetching. Every request is bounded (timeout + caller
 * signal); failures come back as the PdsError family:
 *
 * - XRPC error names `RepoNotFound` (and getHead's `HeadNotFound`), `RepoTakendown`,
 *   `RepoSuspended`, `RepoDeactivated`, `BlockNotFound` → the matching class;
 * - `MethodNotImplemented`, 501, or a 404 without an XRPC error → MethodNotImplementedError;
 * - network failure, timeout, 5xx, 429 → PdsUnavailableError;
 * - an address the policy refuses, a redirect refused → AddressNotAllowedError,
 *   RedirectRefusedError (see policy.ts, fetch.ts);
 * - anything else that is not a valid answer (HTML, bad JSON, other 4xx) → PdsResponseError.
 *
 * The caller's own abort is rethrown untouched.
 */
import {
  AddressNotAllowedError,
  MethodNotImplementedError,
  PdsBlockNotFoundError,
  PdsError,
  PdsResponseError,
  PdsUnavailableError,
  RedirectRefusedError,
  RepoDeactivatedError,
  RepoNotFoundError,
  RepoSuspendedError,
  RepoTakendownError
} from '../errors.ts'
import { boundedFetch, describeFetchError, readBodyLimited, type FetchLike } from './fetch.ts'

export type { FetchLike } from './fetch.ts'

export interface XrpcRequestOptions {
  signal?: AbortSignal
  /** Bounds the whole request, body included. @default 10_000 */
  timeoutMs?: number
  fetch?: FetchLike
  /** Named in errors. */
  did?: string
  /** Sent as `accept`. @default 'application/json' */
  accept?: string
}

/** Largest JSON body read. @default 1 MiB */
export const XRPC_JSON_MAX_BYTES = 1024 * 1024

type PdsErrorClass = new (message: string, init?: { did?: string, url?: string, status?: number }, options?: { cause?: unknown }) => PdsError

const ERROR_CLASSES: Record<string, PdsErrorClass> = {
  RepoNotFound: RepoNotFoundError,
  // getHead's own name for "no such repo here": the same fact, so the same class
  // (and the same migration retry in PdsHeadResolver).
  HeadNotFound: RepoNotFoundError,
  RepoTakendown: RepoTakendownError,
  RepoSuspended: RepoSuspendedError,
  RepoDeactivated: RepoDeactivatedError,
  BlockNotFound: PdsBlockNotFoundError,
  MethodNotImplemented: MethodNotImplementedError
}

/** The URL of `nsid` on `serviceUrl`; array values repeat the parameter. */
export function xrpcUrl (serviceUrl: string, nsid: string, params: Record<string, string | readonly string[] | undefined> = {}): URL {
  const url = new URL(`/xrpc/${nsid}`, serviceUrl)
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined) continue
    if (typeof value === 'string') url.searchParams.append(key, value)
    else for (const item of value) url.searchParams.append(key, item)
  }
  return url
}

/**
 * `GET <serviceUrl>/xrpc/<nsid>?<params>`. Returns the response when it is 2xx
 * (its body still bounded by the same timeout); throws the mapped PdsError
 * otherwise.
 */
export async function xrpcGet (serviceUrl: string, nsid: string, params: Record<string, string | readonly string[] | undefined>, options: XrpcRequestOptions = {}): Promise<Response> {
  const url = xrpcUrl(serviceUrl, nsid, params)
  let res: Response
  try {
    res = await boundedFetch(url, { signal: options.signal, timeoutMs: options.timeoutMs, fetch: options.fetch, headers: { accept: options.accept ?? 'application/json' } })
  } catch (err) {
    throw mapFetchError(err, nsid, url, options)
  }
  if (res.ok) return res
  throw await xrpcErrorFromResponse(res, nsid, url, options)
}

/** Reads a 2xx XRPC response as a JSON object; HTML, bad JSON or non-objects → PdsResponseError. */
export async function readXrpcJson (res: Response, nsid: string, options: XrpcRequestOptions = {}): Promise<Record<string, unknown>> {
  const url = res.url === '' ? undefined : res.url
  const type = res.headers.get('content-type') ?? ''
  if (!/^application\/(.+\+)?json\b/i.test(type)) {
    await res.body?.cancel().catch(() => {})
    throw new PdsResponseError(`${nsid}: expected JSON, got ${JSON.stringify(type || 'no content-type')}`, { did: options.did, url, status: res.status })
  }
  let bytes: Uint8Array
  try {
    bytes = await readBodyLimited(res, XRPC_JSON_MAX_BYTES)
  } catch (err) {
    throw mapFetchError(err, nsid, url, options)
  }
  let body: unknown
  try {
    body = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch (err) {
    throw new PdsResponseError(`${nsid}: invalid JSON`, { did: options.did, url, status: res.status }, { cause: err })
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new PdsResponseError(`${nsid}: response is not a JSON object`, { did: options.did, url, status: res.status })
  }
  return body as Record<string, unknown>
}

/** Reads a 2xx response body as bytes, refusing more than `maxBytes`. */
export async function readXrpcBytes (res: Response, nsid: string, maxBytes: number, options: XrpcRequestOptions = {}): Promise<Uint8Array> {
  try {
    return await readBodyLimited(res, maxBytes)
  } catch (err) {
    throw mapFetchError(err, nsid, res.url === '' ? undefined : res.url, options)
  }
}

/**
 * Maps an error thrown by fetch or a body read: the caller's abort is returned as
 * it is (throw it), a size overflow is a bad response, the rest is "unavailable".
 */
export function mapFetchError (err: unknown, nsid: string, url: URL | string | undefined, options: XrpcRequestOptions = {}): unknown {
  if (options.signal?.aborted === true) return options.signal.reason ?? err
  if (err instanceof PdsError) return err
  // the address policy's answer is not the PDS being down: say what it is
  if (err instanceof AddressNotAllowedError || err instanceof RedirectRefusedError) return err
  const href = url?.toString()
  if ((err as Error)?.name === 'BodyTooLargeError') return new PdsResponseError(`${nsid}: ${(err as Error).message}`, { did: options.did, url: href }, { cause: err })
  return new PdsUnavailableError(`${nsid}: ${describeFetchError(err)}`, { did: options.did, url: href }, { cause: err })
}

/** The PdsError for a non-2xx response, from its XRPC error name or its status. */
export async function xrpcErrorFromResponse (res: Response, nsid: string, url: URL | string, options: XrpcRequestOptions = {}): Promise<unknown> {
  const href = url.toString()
  let body: { error?: unknown, message?: unknown } | undefined
  try {
    const text = new TextDecoder().decode(await readBodyLimited(res, 64 * 1024))
    if (/json/i.test(res.headers.get('content-type') ?? '')) body = JSON.parse(text)
  } catch (err) {
    if (options.signal?.aborted === true) return options.signal.reason ?? err
  }
  const name = typeof body?.error === 'string' ? body.error : undefined
  const message = typeof body?.message === 'string' ? body.message : undefined
  const init = { did: options.did, url: href, status: res.status }
  const what = `${nsid}: ${name ?? `HTTP ${res.status}`}${message !== undefined ? ` (${message})` : ''}`
  const known = name === undefined ? undefined : ERROR_CLASSES[name]
  if (known !== undefined) return new known(what, init)
  if (res.status === 501 || (res.status === 404 && (name === undefined || name === 'XRPCNotSupported'))) return new MethodNotImplementedError(what, init)
  if (res.status >= 500 || res.status === 429) return new PdsUnavailableError(what, init)
  return new PdsResponseError(what, init)
}

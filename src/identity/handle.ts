/**
 * Handle → DID (atproto.com/specs/handle): a DNS TXT record `_atproto.<handle>`
 * holding `did=<did>`, or `https://<handle>/.well-known/atproto-did`; or, when a
 * service is configured, `com.atproto.identity.resolveHandle` on it. This module
 * only finds the DID a handle points to: the caller checks that the DID document
 * claims the handle back before trusting it.
 */
import { Resolver as DnsResolver } from 'node:dns/promises'
import { logger } from '@libp2p/logger'
import { HandleNotFoundError, HandleResolutionError, InvalidIdentifierError } from '../errors.ts'
import { isValidDid, isValidHandle } from '../repo/syntax.ts'
import { boundedFetch, DEFAULT_TIMEOUT_MS, describeFetchError, readTextLimited, reservedTld, type FetchLike } from '../http/fetch.ts'

const log = logger('atmirror:identity')

export interface HandleLookupOptions {
  signal?: AbortSignal
  /** Per-request time budget. @default 10_000 */
  timeoutMs?: number
  fetch?: FetchLike
  /** DNS servers (`host` or `host:port`) instead of the system's. */
  dnsServers?: string[]
}

/** One method's answer: a DID, or why not (`failed`: an error rather than "there is none"). */
export type LookupResult = { did: string } | { did?: undefined, failed: boolean, reason: string }

/**
 * Lowercases a handle (dropping a leading `@`) and checks its syntax. Throws
 * {@link InvalidIdentifierError}.
 */
export function normalizeHandle (input: string): string {
  const handle = (input.startsWith('@') ? input.slice(1) : input).toLowerCase()
  if (!isValidHandle(handle)) throw new InvalidIdentifierError(input, 'not a valid handle')
  return handle
}

/**
 * DNS then HTTPS well-known, both started at once; the DNS answer wins when
 * there is one (the handle spec prefers DNS when the two disagree), and the HTTPS
 * request still in flight is then aborted. Handles under a reserved TLD are never
 * looked up. Throws {@link HandleNotFoundError} when neither names a DID, or
 * {@link HandleResolutionError} when a method failed (timeout, server error) —
 * listing both methods' reasons in `reasons` — or an answer is malformed.
 */
export async function resolveHandleDirect (handle: string, options: HandleLookupOptions = {}): Promise<string> {
  const tld = reservedTld(handle)
  if (tld !== undefined) throw new HandleNotFoundError(handle, `.${tld} is a reserved TLD`)
  const web = new AbortController()
  const signal = options.signal === undefined ? web.signal : AbortSignal.any([options.signal, web.signal])
  const httpsLookup = resolveHandleHttps(handle, { ...options, signal })
  // Keep an early HTTPS rejection from going unhandled while DNS runs.
  httpsLookup.catch(() => {})
  try {
    const dns = await resolveHandleDns(handle, options)
    if (dns.did !== undefined) return dns.did
    const https = await httpsLookup
    if (https.did !== undefined) return https.did
    const reason = `dns: ${dns.reason}; https: ${https.reason}`
    if (dns.failed || https.failed) {
      throw new HandleResolutionError(handle, reason, { reasons: [{ source: 'dns', reason: dns.reason }, { source: 'https', reason: https.reason }] })
    }
    throw new HandleNotFoundError(handle, reason)
  } finally {
    web.abort()
  }
}

/** `_atproto.<handle>` TXT → `did=…`. More than one distinct DID is an error. */
export async function resolveHandleDns (handle: string, options: HandleLookupOptions = {}): Promise<LookupResult> {
  options.signal?.throwIfAborted()
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS
  const resolver = new DnsResolver({ timeout: timeoutMs, tries: 2 })
  if (options.dnsServers !== undefined) resolver.setServers(options.dnsServers)
  const cancel = (): void => { resolver.cancel() }
  const timer = setTimeout(cancel, timeoutMs)
  options.signal?.addEventListener('abort', cancel, { once: true })
  let records: string[][]
  try {
    records = await resolver.resolveTxt(`_atproto.${handle}`)
  } catch (err) {
    options.signal?.throwIfAborted()
    const code = (err as { code?: string }).code ?? ''
    log('dns lookup of _atproto.%s: %s', handle, code)
    if (code === 'ENOTFOUND' || code === 'ENODATA' || code === 'NXDOMAIN') return { failed: false, reason: `no TXT record (${code})` }
    return { failed: true, reason: `DNS ${code === 'ECANCELLED' ? 'timed out' : code || (err as Error).message}` }
  } finally {
    clearTimeout(timer)
    options.signal?.removeEventListener('abort', cancel)
  }
  const dids = new Set<string>()
  for (const chunks of records) {
    const text = chunks.join('')
    if (text.startsWith('did=')) dids.add(text.slice(4).trim())
  }
  if (dids.size === 0) return { failed: false, reason: 'no did= TXT record' }
  if (dids.size > 1) throw new HandleResolutionError(handle, `DNS names ${dids.size} different DIDs`)
  const [did] = dids as unknown as [string]
  if (!isValidDid(did)) throw new HandleResolutionError(handle, `DNS names an invalid DID ${JSON.stringify(did)}`)
  return { did }
}

/** `https://<handle>/.well-known/atproto-did` → the DID as plain text. */
export async function resolveHandleHttps (handle: string, options: HandleLookupOptions = {}): Promise<LookupResult> {
  const url = `https://${handle}/.well-known/atproto-did`
  let res: Response
  try {
    res = await boundedFetch(url, options)
  } catch (err) {
    options.signal?.throwIfAborted()
    const reason = describeFetchError(err)
    // A host that does not exist or refuses us simply has no such file.
    return { failed: reason === 'timed out', reason }
  }
  if (!res.ok) {
    await res.body?.cancel().catch(() => {})
    return { failed: res.status >= 500, reason: `HTTP ${res.status}` }
  }
  let text: string
  try {
    text = (await readTextLimited(res, 2048)).trim()
  } catch (err) {
    options.signal?.throwIfAborted()
    return { failed: true, reason: describeFetchError(err) }
  }
  if (!isValidDid(text)) throw new HandleResolutionError(handle, `${url} is not a DID`, { url })
  return { did: text }
}

/**
 * `com.atproto.identity.resolveHandle` on `serviceUrl` (a PDS, an AppView, or
 * any service that resolves handles).
 */
export async function resolveHandleXrpc (serviceUrl: string, handle: string, options: HandleLookupOptions = {}): Promise<string> {
  const url = new URL('/xrpc/com.atproto.identity.resolveHandle', serviceUrl)
  url.searchParams.set('handle', handle)
  let res: Response
  let text: string
  try {
    res = await boundedFetch(url, { ...options, headers: { accept: 'application/json' } })
    text = await readTextLimited(res, 64 * 1024)
  } catch (err) {
    options.signal?.throwIfAborted()
    throw new HandleResolutionError(handle, describeFetchError(err), { url: url.href }, { cause: err })
  }
  let body: { did?: unknown, error?: unknown } | undefined
  try {
    body = JSON.parse(text)
  } catch {}
  if (res.ok) {
    if (typeof body?.did !== 'string' || !isValidDid(body.did)) throw new HandleResolutionError(handle, 'resolveHandle answered no valid DID', { url: url.href })
    return body.did
  }
  if (res.status === 400 && (body?.error === 'HandleNotFound' || body?.error === 'InvalidRequest')) {
    throw new HandleNotFoundError(handle, `${url.origin} says ${String(body.error)}`)
  }
  throw new HandleResolutionError(handle, `resolveHandle answered HTTP ${res.status}${typeof body?.error === 'string' ? ` ${body.error}` : ''}`, { url: url.href })
}

/**
 * did-resolver method resolvers for the two DID methods atproto blesses:
 * `did:plc` (through a PLC directory) and `did:web` (hostname-level only).
 *
 * They follow did-resolver's contract: outcomes come back as
 * `didResolutionMetadata.error` (`invalidDid`, `notFound`, `internalError`) with a
 * `message`, the request `url` and the underlying `cause`; only the caller's own
 * abort is thrown.
 */
import { logger } from '@libp2p/logger'
import type { DIDDocument, DIDResolutionOptions, DIDResolutionResult, DIDResolver, ParsedDID, ResolverRegistry } from 'did-resolver'
import { boundedFetch, describeFetchError, isLocalhost, readTextLimited, reservedTld, type FetchLike } from '../http/fetch.ts'

const log = logger('atmirror:identity')

/** The public PLC directory. */
export const DEFAULT_PLC_URL = 'https://plc.directory'

/** DID documents are small; anything past this is refused. */
export const DID_DOCUMENT_MAX_BYTES = 256 * 1024

export interface DidResolversInit {
  /** PLC directory base URL. @default 'https://plc.directory' */
  plcUrl?: string
  /** Per-request time budget. @default 10_000 */
  timeoutMs?: number
  /** Allow `did:web:localhost%3APORT` over plain http (tests and development only). @default false */
  allowHttpLocalhost?: boolean
  fetch?: FetchLike
}

/** Resolution options: did-resolver's, plus the caller's abort signal. */
export interface DidResolutionOptions extends DIDResolutionOptions {
  signal?: AbortSignal
}

// did:plc identifiers are 24 characters of lowercase base32 (RFC 4648 alphabet a-z, 2-7).
const PLC_DID = /^did:plc:[a-z2-7]{24}$/

/** True for a syntactically valid `did:plc` (24 lowercase base32 characters). */
export function isPlcDid (did: string): boolean {
  return PLC_DID.test(did)
}
// A DNS name of letters, digits and hyphens (what atproto allows for handles
// and did:web), lowercase as DIDs are case-sensitive and these methods are not.
const HOSTNAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/

/** did-resolver registry `{ plc, web }` for `new Resolver(getResolver(init))`. */
export function getResolver (init: DidResolversInit = {}): ResolverRegistry {
  return { plc: plcResolver(init), web: webResolver(init) }
}

/** `did:plc`: `GET <plcUrl>/<did>`. */
export function plcResolver (init: DidResolversInit = {}): DIDResolver {
  const base = (init.plcUrl ?? DEFAULT_PLC_URL).replace(/\/+$/, '')
  return async (did: string, _parsed: ParsedDID, _resolver, options: DidResolutionOptions) => {
    if (!isPlcDid(did)) return failure('invalidDid', 'did:plc must be 24 base32 characters')
    return await fetchDocument(did, `${base}/${did}`, init, options, 'plc')
  }
}

/** `did:web`: `GET https://<host>/.well-known/did.json`; paths are not supported by atproto. */
export function webResolver (init: DidResolversInit = {}): DIDResolver {
  return async (did: string, parsed: ParsedDID, _resolver, options: DidResolutionOptions) => {
    const target = webDocumentUrl(parsed.id, init.allowHttpLocalhost === true)
    if (typeof target !== 'string') return failure('invalidDid', target.error)
    return await fetchDocument(did, target, init, options, 'web')
  }
}

/**
 * The URL of a did:web document, or why there is none. Only hostname-level DIDs
 * are valid in atproto, under the same TLD restrictions as handles (no `.arpa`,
 * `.local`, …); a port (`%3A`) only for `localhost`, and only when http to
 * localhost is allowed.
 */
export function webDocumentUrl (id: string, allowHttpLocalhost = false): string | { error: string } {
  if (id.includes(':')) return { error: 'path-based did:web is not supported by atproto' }
  let host: string
  try {
    host = decodeURIComponent(id)
  } catch {
    return { error: 'bad percent-encoding' }
  }
  const [hostname = '', port, ...rest] = host.split(':')
  if (rest.length > 0) return { error: 'bad host' }
  if (isLocalhost(hostname)) {
    if (!allowHttpLocalhost) return { error: 'did:web:localhost is only allowed in tests (allowHttpLocalhost)' }
    if (port !== undefined && !/^[0-9]{1,5}$/.test(port)) return { error: 'bad port' }
    return `http://${host}/.well-known/did.json`
  }
  if (port !== undefined) return { error: 'a port is only allowed for localhost' }
  if (!HOSTNAME.test(hostname)) return { error: 'not a valid hostname' }
  const tld = reservedTld(hostname)
  if (tld !== undefined) return { error: `.${tld} is a reserved TLD` }
  return `https://${hostname}/.well-known/did.json`
}

/** How a PLC directory says a DID does not exist (`{"message":"DID not registered: did:plc:…"}`). */
export const PLC_NOT_REGISTERED = /DID not registered/

async function fetchDocument (did: string, url: string, init: DidResolversInit, options: DidResolutionOptions, method: 'plc' | 'web'): Promise<DIDResolutionResult> {
  let res: Response
  try {
    res = await boundedFetch(url, { signal: options.signal, timeoutMs: init.timeoutMs, fetch: init.fetch, headers: { accept: 'application/did+ld+json, application/json' } })
  } catch (err) {
    options.signal?.throwIfAborted()
    log('fetching %s failed: %e', url, err)
    return failure('internalError', describeFetchError(err), url, err)
  }
  if (res.status === 404) {
    // any other server (a PDS, a web server) 404s too: only a PLC directory's own
    // answer says the DID does not exist
    const body = method === 'plc' ? await readTextLimited(res, 4096).catch(() => '') : await res.body?.cancel().catch(() => {})
    if (method === 'plc' && !PLC_NOT_REGISTERED.test(body ?? '')) {
      return failure('internalError', 'not a PLC directory: it answered 404 without "DID not registered"', url)
    }
    return failure('notFound', 'not found', url)
  }
  if (res.status === 410) {
    // PLC answers 410 for a tombstoned DID.
    await res.body?.cancel().catch(() => {})
    return { ...failure('notFound', 'deactivated (410 Gone)', url), didDocumentMetadata: { deactivated: true } }
  }
  if (!res.ok) {
    await res.body?.cancel().catch(() => {})
    return failure('internalError', `HTTP ${res.status}`, url)
  }
  let doc: unknown
  try {
    doc = JSON.parse(await readTextLimited(res, DID_DOCUMENT_MAX_BYTES))
  } catch (err) {
    options.signal?.throwIfAborted()
    return failure('internalError', `bad DID document body: ${describeFetchError(err)}`, url, err)
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return failure('internalError', 'DID document is not a JSON object', url)
  const id = (doc as { id?: unknown }).id
  if (id !== did) return failure('internalError', `DID document id ${JSON.stringify(id)} does not match`, url)
  return {
    didResolutionMetadata: { contentType: res.headers.get('content-type') ?? 'application/did+ld+json', url },
    didDocument: doc as DIDDocument,
    didDocumentMetadata: {}
  }
}

function failure (error: string, message: string, url?: string, cause?: unknown): DIDResolutionResult {
  return { didResolutionMetadata: { error, message, url, cause }, didDocument: null, didDocumentMetadata: {} }
}


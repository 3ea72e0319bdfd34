/**
 * DID or handle → {@link Identity}: the signing key, the PDS and the handle
 * (checked both ways), from a DID document resolved through did-resolver with one
 * method resolver per blessed method (did:plc, did:web).
 *
 * Caching. A DID document holds the key every commit is verified against, and a
 * key rotates when it is compromised, so documents are reused for a short window
 * only (`cacheTtlMs`, one minute by default): that window is the longest a running
 * node can accept a commit signed by a key the DID has rotated out without having
 * seen the rotation. Whatever the node has seen it acts on at once: `refresh(did)`
 * replaces the cached document, which head resolution does when a signature fails
 * (an honest PDS signs with the new key, so its first commit after a rotation
 * triggers it) and before it reports an account status; every later resolution,
 * and every head that is then picked, goes by the refreshed key. Handle answers
 * (handle → DID) carry no key and are kept longer (`handleCacheTtlMs`), a failed
 * handle check for `failureCacheTtlMs` only.
 *
 * Without the services. With an {@link IdentityStore} (a node's), a DID still
 * resolves when its directory or host cannot be reached (see plc-logs.ts): a
 * did:plc from its stored verified operation log or from peers' logs
 * (`PlcLogKeeper.resolveOffline`), a did:web from the last document fetched over
 * HTTPS (a did:web has no log that certifies itself, so that is only the last
 * known state, and `source` says so). A handle that cannot be checked right now
 * counts as verified when it is the one last verified both ways. Only a failure to
 * reach the service falls back; a DID the directory says does not exist does not.
 * `Identity.source` says where the document came from.
 */
import { logger } from '@libp2p/logger'
import { Resolver, type DIDResolutionResult } from 'did-resolver'
import {
  DidNotFoundError,
  DidResolutionError,
  HandleNotFoundError,
  HandleResolutionError,
  InvalidIdentifierError
} from '../errors.ts'
import type { PublicKey } from '../repo/keys.ts'
import { isValidDid } from '../repo/syntax.ts'
import { parseAtprotoDocument, type DidDocument } from './did-document.ts'
import { DEFAULT_PLC_URL, getResolver, webDocumentUrl, type DidResolutionOptions } from './did-resolvers.ts'
import { normalizeHandle, resolveHandleDirect, resolveHandleXrpc } from './handle.ts'
import type { FetchLike } from '../http/fetch.ts'
import { defaultPolicyFetch } from '../http/policy.ts'
import { PlcLogKeeper, type IdentityStore, type PlcLogSource } from './plc-logs.ts'

const log = logger('atmirror:identity')

/** What a mirror needs to know about an account. */
export interface Identity {
  did: string
  /** The handle: the one asked for, or the document's primary handle. */
  handle?: string
  /** True only when the handle resolves to this DID and the document claims it. */
  handleVerified: boolean
  /** The current `#atproto` key. */
  signingKey: PublicKey
  /** `signingKey` as `did:key:…`. */
  didKey: string
  /** The PDS origin URL, e.g. `https://pds.example.com`. */
  pds: string
  document: DidDocument
  /**
   * Where the document came from: `plc:<directory>`, `web:<url>`, `stored-log` or
   * `peer:<peer id>` (a verified did:plc log, the directory being unreachable), or
   * `stored-web:<fetched at>` (the last did:web document, its host being down).
   */
  source?: string
  /** When the handle was last verified both ways (set when `handleVerified`). */
  handleVerifiedAt?: string
}

export interface ResolveIdentityOptions {
  signal?: AbortSignal
  /**
   * When resolving a DID, also resolve its handle to check it points back (one
   * more lookup). Without it `handleVerified` is false.
   * @default true
   */
  verifyHandle?: boolean
}

/** Resolves DIDs and handles to identities. */
export interface IdentityResolver {
  /** A DID (`did:…`) or a handle (`alice.example.com`, `@alice.example.com`). */
  resolve: (didOrHandle: string, options?: ResolveIdentityOptions) => Promise<Identity>
  /** Resolves the DID again, ignoring and replacing any cached identity. */
  refresh: (did: string, options?: ResolveIdentityOptions) => Promise<Identity>
  /**
   * The fetch, with its address policy, that the hosts these identities name (their
   * PDS) are reached through; PDS clients built on this resolver use it unless given
   * their own.
   */
  readonly fetch?: FetchLike
}

export interface AtprotoIdentityResolverInit {
  /** PLC directory. @default 'https://plc.directory' */
  plcUrl?: string
  /**
   * A service answering `com.atproto.identity.resolveHandle` (a PDS, an AppView).
   * When set, handles resolve through it instead of DNS and HTTPS.
   */
  handleResolverUrl?: string
  /**
   * How long a resolved DID document (signing key, PDS) is reused: the window in
   * which a key rotation the node has not seen goes unnoticed (see the file header).
   * Each pinned DID costs at most one directory lookup per window.
   * @default 60_000
   */
  cacheTtlMs?: number
  /** How long a handle's DID (an answer, found or not) is reused. @default 600_000 */
  handleCacheTtlMs?: number
  /**
   * How long the result of a handle check that failed (timeout, DNS or server
   * error) is reused before the handle is looked up again. The DID document is
   * still cached for `cacheTtlMs`; only `handleVerified: false` is short-lived, so a
   * transient failure does not mark the handle unverified for the full TTL.
   * @default 30_000
   */
  failureCacheTtlMs?: number
  /** Most identities kept; the oldest go first. @default 10_000 */
  cacheSize?: number
  /** Per-request time budget. @default 10_000 */
  timeoutMs?: number
  fetch?: FetchLike
  /**
   * A local test network: allow `did:web:localhost%3APORT` over plain http, and
   * plain-http `#atproto_pds` endpoints on `localhost` or a loopback IP. An http
   * PDS on any other host is refused either way.
   * @default false
   */
  allowHttpLocalhost?: boolean
  /**
   * Allow outbound requests to private, loopback and link-local addresses (a PDS or
   * PLC on a private network). Without it only a local test network
   * (`allowHttpLocalhost`) may use loopback, and nothing may use the rest (see
   * src/http/policy.ts). Ignored when `fetch` is given.
   * @default false
   */
  allowPrivateNetwork?: boolean
  /** DNS servers for handle TXT lookups instead of the system's. */
  dnsServers?: string[]
  /** The clock cache expiry is measured with (tests pass a fake one). @default Date.now */
  now?: () => number
  /**
   * Where verified PLC logs, did:web documents and verified handles are kept, for
   * resolving while the services are down (a node's store). @default none
   */
  store?: IdentityStore
  /** Peers' PLC logs, asked when the directory is down (can be set later: `plcLogs.setPeers`). */
  peerLogs?: PlcLogSource
}

interface CacheEntry<T> {
  value: T
  expires: number
}

interface CachedIdentity {
  identity: Identity
  /** Until when `identity.handleVerified` holds; 0 when the handle was not checked. */
  handleCheckedUntil: number
}

/** Default of {@link AtprotoIdentityResolverInit.cacheTtlMs}. */
export const DEFAULT_CACHE_TTL_MS = 60_000

/** Default of {@link AtprotoIdentityResolverInit.failureCacheTtlMs}. */
export const DEFAULT_FAILURE_CACHE_TTL_MS = 30_000

/** {@link IdentityResolver} for did:plc and did:web, with handles by DNS/HTTPS or a resolver service. */
export class AtprotoIdentityResolver implements IdentityResolver {
  readonly plcUrl: string
  readonly handleResolverUrl?: string
  private readonly didResolver: Resolver
  private readonly ttl: number
  private readonly handleTtl: number
  private readonly failureTtl: number
  private readonly maxEntries: number
  private readonly timeoutMs?: number
  readonly fetch: FetchLike
  private readonly dnsServers?: string[]
  private readonly allowHttpLocalhost: boolean
  private readonly now: () => number
  private readonly identities = new Map<string, CacheEntry<CachedIdentity>>()
  /** Verified did:plc logs: fetched, stored, and asked of peers when the directory is down. */
  readonly plcLogs: PlcLogKeeper
  private readonly identityStore?: IdentityStore
  private readonly handles = new Map<string, CacheEntry<string>>()

  constructor (init: AtprotoIdentityResolverInit = {}) {
    this.plcUrl = init.plcUrl ?? DEFAULT_PLC_URL
    this.handleResolverUrl = init.handleResolverUrl
    this.ttl = init.cacheTtlMs ?? DEFAULT_CACHE_TTL_MS
    this.handleTtl = init.handleCacheTtlMs ?? 600_000
    this.failureTtl = Math.min(init.failureCacheTtlMs ?? DEFAULT_FAILURE_CACHE_TTL_MS, this.ttl)
    this.maxEntries = init.cacheSize ?? 10_000
    this.timeoutMs = init.timeoutMs
    this.dnsServers = init.dnsServers
    this.allowHttpLocalhost = init.allowHttpLocalhost === true
    // one address policy for PLC, did:web, handles and, through `fetch`, the PDS
    this.fetch = init.fetch ?? defaultPolicyFetch({
      allowLoopback: this.allowHttpLocalhost,
      allowPrivateNetwork: init.allowPrivateNetwork,
      // the configured services are reached wherever they are
      allowEndpoints: [this.plcUrl, ...(this.handleResolverUrl === undefined ? [] : [this.handleResolverUrl])]
    })
    this.now = init.now ?? Date.now
    this.identityStore = init.store
    this.plcLogs = new PlcLogKeeper({ store: init.store, peers: init.peerLogs, fetch: this.fetch }, { plcUrl: this.plcUrl, timeoutMs: init.timeoutMs, now: this.now })
    this.didResolver = new Resolver(getResolver({
      plcUrl: this.plcUrl,
      timeoutMs: init.timeoutMs,
      fetch: this.fetch,
      allowHttpLocalhost: this.allowHttpLocalhost
    }))
  }

  async resolve (didOrHandle: string, options: ResolveIdentityOptions = {}): Promise<Identity> {
    if (didOrHandle.startsWith('did:')) {
      const cached = this.cached(this.identities, didOrHandle)
      if (cached === undefined) return await this.load(didOrHandle, options)
      if (options.verifyHandle === false || cached.handleCheckedUntil > this.now()) return cached.identity
      // The document is still fresh; only the handle needs (re)checking.
      return await this.checkHandle(cached.identity, options)
    }
    const handle = normalizeHandle(didOrHandle)
    const did = await this.resolveHandle(handle, options)
    let identity = this.cached(this.identities, did)?.identity ?? await this.load(did, { ...options, verifyHandle: false })
    if (identity.handle !== handle) {
      // The handle may have just moved to this DID: look again before refusing.
      identity = await this.load(did, { ...options, verifyHandle: false })
    }
    // The spec's primary handle (first valid at:// entry) is the only one the DID
    // claims; a later alsoKnownAs entry naming this handle does not count.
    if (identity.handle !== handle) {
      throw new HandleResolutionError(handle, identity.handle === undefined
        ? 'the DID document claims no handle'
        : `the DID document claims ${identity.handle} instead`, { did })
    }
    const verified = { ...identity, handleVerified: true, handleVerifiedAt: await this.keepVerifiedHandle(did, handle) }
    // the document keeps its own expiry: resolving by handle must not stretch the key window
    this.store(this.identities, did, { identity: verified, handleCheckedUntil: this.now() + this.ttl }, this.identities.get(did)?.expires)
    return verified
  }

  async refresh (did: string, options: ResolveIdentityOptions = {}): Promise<Identity> {
    this.identities.delete(did)
    return await this.load(did, options)
  }

  /** The DID a handle points to (not yet checked against the DID document). */
  async resolveHandle (handle: string, options: { signal?: AbortSignal } = {}): Promise<string> {
    const cached = this.cached(this.handles, handle)
    if (cached !== undefined) return cached
    const lookup = { signal: options.signal, timeoutMs: this.timeoutMs, fetch: this.fetch, dnsServers: this.dnsServers }
    const did = this.handleResolverUrl !== undefined
      ? await resolveHandleXrpc(this.handleResolverUrl, handle, lookup)
      : await resolveHandleDirect(handle, lookup)
    this.store(this.handles, handle, did, this.now() + this.handleTtl)
    return did
  }

  /** The raw DID document (uncached). Throws the identity error family. */
  async resolveDidDocument (did: string, options: { signal?: AbortSignal } = {}): Promise<DidDocument> {
    if (!isValidDid(did)) throw new InvalidIdentifierError(did, 'not a valid DID')
    const resolutionOptions: DidResolutionOptions = { signal: options.signal }
    const result: DIDResolutionResult = await this.didResolver.resolve(did, resolutionOptions)
    const meta = result.didResolutionMetadata
    if (meta.error === undefined && result.didDocument !== null) return result.didDocument
    const url = typeof meta.url === 'string' ? meta.url : undefined
    const message = typeof meta.message === 'string' ? meta.message : String(meta.error)
    switch (meta.error) {
      case 'invalidDid': throw new InvalidIdentifierError(did, message)
      case 'unsupportedDidMethod': throw new InvalidIdentifierError(did, 'unsupported DID method (atproto uses did:plc and did:web)')
      case 'notFound': throw new DidNotFoundError(did, { url, tombstoned: result.didDocumentMetadata?.deactivated === true })
      default: throw new DidResolutionError(did, message, { url }, meta.cause === undefined ? undefined : { cause: meta.cause })
    }
  }

  /** Forgets every cached identity and handle. */
  clear (): void {
    this.identities.clear()
    this.handles.clear()
  }

  private async load (did: string, options: ResolveIdentityOptions): Promise<Identity> {
    const { document, source, fetchedFrom } = await this.fetchDocument(did, options)
    const parsed = parseAtprotoDocument(did, document, { allowHttpLocalhost: this.allowHttpLocalhost })
    // a did:web document is kept for when its host is down once it proved usable:
    // one that does not parse never replaces the last good one
    if (fetchedFrom !== undefined) {
      await this.identityStore?.putWebDocument({ did, document, fetchedAt: new Date(this.now()).toISOString(), url: fetchedFrom.url })
    }
    const identity: Identity = { ...parsed, handleVerified: false, document, source }
    if (options.verifyHandle === false) {
      this.store(this.identities, did, { identity, handleCheckedUntil: 0 })
      return identity
    }
    return await this.checkHandle(identity, options)
  }

  /** The DID document from its service, or (that unreachable) from what is kept: see the file header. */
  private async fetchDocument (did: string, options: ResolveIdentityOptions): Promise<{ document: DidDocument, source: string, fetchedFrom?: { url?: string } }> {
    try {
      const document = await this.resolveDidDocument(did, options)
      if (did.startsWith('did:plc:')) return { document, source: `plc:${this.plcUrl}` }
      const url = webDocumentUrl(did.slice('did:web:'.length), this.allowHttpLocalhost)
      const fetchedFrom = { url: typeof url === 'string' ? url : undefined }
      return { document, source: `web:${fetchedFrom.url ?? did}`, fetchedFrom }
    } catch (err) {
      options.signal?.throwIfAborted()
      if (!(err instanceof DidResolutionError)) throw err
      if (did.startsWith('did:plc:')) {
        const offline = await this.plcLogs.resolveOffline(did, { signal: options.signal, directoryError: err })
        return { document: offline.document, source: offline.source }
      }
      const kept = await this.identityStore?.getWebDocument(did)
      if (kept === undefined) throw err
      log('%s: the web host is down (%s); using the document fetched at %s', did, err.message, kept.fetchedAt)
      return { document: kept.document, source: `stored-web:${kept.fetchedAt}` }
    }
  }

  /**
   * Looks the document's handle up and caches the identity with the outcome: an
   * answer (the handle's DID, or "no DID") for the full TTL, a failed lookup for
   * `failureTtl` only.
   */
  private async checkHandle (identity: Identity, options: ResolveIdentityOptions): Promise<Identity> {
    let handleVerified = false
    let handleVerifiedAt: string | undefined
    let checkedFor = this.ttl
    if (identity.handle !== undefined) {
      let resolved: string | undefined
      try {
        resolved = await this.resolveHandle(identity.handle, options)
      } catch (err) {
        options.signal?.throwIfAborted()
        if (!(err instanceof HandleNotFoundError)) {
          checkedFor = this.failureTtl
          // cannot be checked now: the handle last verified both ways still counts
          const kept = await this.identityStore?.getHandle(identity.did)
          if (kept?.handle === identity.handle) {
            handleVerified = true
            handleVerifiedAt = kept.verifiedAt
          }
        }
        log('handle %s of %s does not verify now (%s): %e', identity.handle, identity.did, handleVerified ? `last verified ${handleVerifiedAt ?? ''}` : 'never verified', err)
      }
      // outside the try: a failed store write is not a failed handle check
      if (resolved === identity.did) {
        handleVerified = true
        handleVerifiedAt = await this.keepVerifiedHandle(identity.did, identity.handle)
      }
    }
    const checked: Identity = { ...identity, handleVerified, handleVerifiedAt }
    // The document keeps its own expiry; only the handle check gets `checkedFor`.
    const expires = this.identities.get(identity.did)?.expires
    this.store(this.identities, identity.did, { identity: checked, handleCheckedUntil: this.now() + checkedFor }, expires)
    return checked
  }

  /** Stamps a handle just verified both ways and keeps it, for when its service is down; returns the stamp. */
  private async keepVerifiedHandle (did: string, handle: string): Promise<string> {
    const verifiedAt = new Date(this.now()).toISOString()
    await this.identityStore?.putHandle({ did, handle, verifiedAt })
    return verifiedAt
  }

  private cached<T> (map: Map<string, CacheEntry<T>>, key: string): T | undefined {
    const entry = map.get(key)
    if (entry === undefined) return undefined
    if (entry.expires <= this.now()) {
      map.delete(key)
      return undefined
    }
    return entry.value
  }

  private store<T> (map: Map<string, CacheEntry<T>>, key: string, value: T, expires = this.now() + this.ttl): void {
    map.delete(key)
    map.set(key, { value, expires })
    if (map.size > this.maxEntries) {
      const oldest = map.keys().next().value
      if (oldest !== undefined) map.delete(oldest)
    }
  }
}

/**
 * Every error atmirror throws. Errors are grouped under a few bases so callers can
 * catch a family (`err instanceof RepoVerificationError`) or one case (`err.name`).
 * Each carries the data it is about (`cid`, `did`, `url`, `rpath`, `rev`) and says it
 * in its message as `what failed; key=value …` so a log line is enough to act on.
 *
 * "Not found" errors are kept apart from "failed" errors: a missing block or repo is
 * a fact about the world, a failed request is a fact about the network.
 */

/** Anything that can name a CID: a multiformats CID or its string form. */
export interface CidLike { toString: () => string }

type Details = Record<string, string | number | boolean | CidLike | null | undefined>

function describe (message: string, details: Details): string {
  const parts: string[] = []
  for (const [key, value] of Object.entries(details)) {
    if (value === undefined || value === null || value === '') continue
    parts.push(`${key}=${String(value)}`)
  }
  return parts.length > 0 ? `${message}; ${parts.join(' ')}` : message
}

export interface AtmirrorErrorOptions {
  cause?: unknown
}

/** Base of every atmirror error. */
export class AtmirrorError extends Error {
  readonly #summary: string
  #details: Details

  constructor (message: string, details: Details = {}, options: AtmirrorErrorOptions = {}) {
    super(describe(message, details), options.cause === undefined ? undefined : { cause: options.cause })
    this.name = new.target.name
    this.#summary = message
    this.#details = details
  }

  /**
   * Adds details the error did not have yet (a set key is kept) and rebuilds the
   * message, and the stack's first line, from them. For context that is only
   * known where the error is caught, so that it need not be wrapped.
   */
  protected addDetails (details: Details): void {
    const before = this.message
    const merged: Details = { ...this.#details }
    for (const [key, value] of Object.entries(details)) {
      const old = merged[key]
      if (old === undefined || old === null || old === '') merged[key] = value
    }
    this.#details = merged
    this.message = describe(this.#summary, merged)
    if (typeof this.stack === 'string' && this.message !== before) {
      this.stack = this.stack.replace(before, () => this.message)
    }
  }
}

// ---------------------------------------------------------------------------
// Repository format and verification (src/repo)
// ---------------------------------------------------------------------------

/**
 * The data is not a valid atproto repository (or part of one). Errors raised
 * once a repo's commit has been decoded (by verifyRepo / verifyRepoCar) name the
 * repo: `did` and `rev` are set and the message ends in `did=… rev=…`.
 */
export class RepoVerificationError extends AtmirrorError {
  /** DID of the repository the failure was found in, when known. */
  did?: string
  /** Revision of the commit being verified, when known. */
  rev?: string

  /**
   * Names the repository the failure was found in: sets `did` and `rev` where
   * they are unset and adds them to the message. Returns the same error: the
   * context is added where it is known, without wrapping.
   */
  nameRepo (repo: { did: string, rev: string }): this {
    this.did ??= repo.did
    this.rev ??= repo.rev
    this.addDetails({ did: repo.did, rev: repo.rev })
    return this
  }
}

/** Bytes are not valid DAG-CBOR in atproto's strict profile (DRISL). */
export class CborDecodeError extends RepoVerificationError {
  readonly cid?: string
  constructor (reason: string, init: { cid?: CidLike } = {}, options?: AtmirrorErrorOptions) {
    super(`invalid DAG-CBOR: ${reason}`, { cid: init.cid }, options)
    this.cid = init.cid?.toString()
  }
}

/** A CID that atproto repositories do not use (version, codec or hash). */
export class UnsupportedCidError extends RepoVerificationError {
  readonly cid: string
  constructor (cid: CidLike | string, reason: string) {
    super(`unsupported CID: ${reason}`, { cid: cid.toString() })
    this.cid = cid.toString()
  }
}

/** A block's bytes do not hash to its CID. */
export class CidMismatchError extends RepoVerificationError {
  readonly cid: string
  readonly actual: string
  constructor (cid: CidLike, actual: CidLike) {
    super('block bytes do not match CID', { cid, actual })
    this.cid = cid.toString()
    this.actual = actual.toString()
  }
}

/** A CAR file is malformed (header, varint, section or CID). */
export class CarParseError extends RepoVerificationError {
  readonly offset?: number
  /**
   * The input ended inside a structure (header, varint, section): a cut-off
   * stream as much as a malformed file. A download reader reports it as an
   * interrupted download.
   */
  readonly truncated: boolean
  constructor (reason: string, init: { offset?: number, truncated?: boolean } = {}, options?: AtmirrorErrorOptions) {
    super(`malformed CAR: ${reason}`, { offset: init.offset }, options)
    this.offset = init.offset
    this.truncated = init.truncated === true
  }
}

/** A block the repository needs is absent (from a CAR or a store). */
export class MissingBlockError extends RepoVerificationError {
  readonly cid: string
  readonly rpath?: string
  constructor (cid: CidLike, init: { rpath?: string, what?: string } = {}) {
    super(`missing ${init.what ?? 'block'}`, { cid, rpath: init.rpath })
    this.cid = cid.toString()
    this.rpath = init.rpath
  }
}

/** The commit object is malformed (fields, types, version). */
export class CommitInvalidError extends RepoVerificationError {
  readonly cid?: string
  constructor (reason: string, init: { cid?: CidLike, did?: string, rev?: string } = {}, options?: AtmirrorErrorOptions) {
    super(`invalid commit: ${reason}`, { did: init.did, rev: init.rev, cid: init.cid }, options)
    this.cid = init.cid?.toString()
    this.did = init.did
    this.rev = init.rev
  }
}

/** The commit's signature does not verify against the DID's signing key. */
export class CommitSignatureError extends RepoVerificationError {
  readonly cid?: string
  declare readonly did: string
  constructor (init: { did: string, rev?: string, cid?: CidLike, reason?: string }, options?: AtmirrorErrorOptions) {
    super(`commit signature invalid${init.reason !== undefined ? ` (${init.reason})` : ''}`, { did: init.did, rev: init.rev, cid: init.cid }, options)
    this.cid = init.cid?.toString()
    this.did = init.did
    this.rev = init.rev
  }
}

/** The commit belongs to another DID than the one asked for. */
export class CommitDidMismatchError extends RepoVerificationError {
  /** The DID that was asked for (`actual` is the commit's). */
  declare readonly did: string
  readonly actual: string
  constructor (expected: string, actual: string, init: { cid?: CidLike } = {}) {
    super('commit is for another DID', { did: expected, actual, cid: init.cid })
    this.did = expected
    this.actual = actual
  }
}

/** An MST node breaks the structure rules (order, heights, prefixes, empty nodes). */
export class MstInvalidError extends RepoVerificationError {
  readonly cid?: string
  readonly rpath?: string
  constructor (reason: string, init: { cid?: CidLike, rpath?: string } = {}, options?: AtmirrorErrorOptions) {
    super(`invalid MST: ${reason}`, { cid: init.cid, rpath: init.rpath }, options)
    this.cid = init.cid?.toString()
    this.rpath = init.rpath
  }
}

/** A record path is not `collection/rkey` with a valid NSID and record key. */
export class InvalidRecordPathError extends RepoVerificationError {
  readonly rpath: string
  constructor (rpath: string, reason: string) {
    super(`invalid record path: ${reason}`, { rpath: JSON.stringify(rpath) })
    this.rpath = rpath
  }
}

/** A value breaks the atproto data model (a float, a bad `$type`, a malformed blob, `$link` or `$bytes`). */
export class InvalidDataModelError extends RepoVerificationError {
  /** Where in the value, as a dotted path (`rcrd.$type`, `arr.2`); empty for the top level. */
  readonly path: string
  constructor (reason: string, init: { path?: string } = {}) {
    super(`invalid data model value: ${reason}`, { path: init.path })
    this.path = init.path ?? ''
  }
}

/** A sync 1.1 commit proof (ops inverted against the new tree) does not hold. */
export class CommitProofError extends RepoVerificationError {
  readonly cid?: string
  readonly rpath?: string
  constructor (reason: string, init: { cid?: CidLike, rpath?: string, did?: string, rev?: string } = {}, options?: AtmirrorErrorOptions) {
    super(`commit proof invalid: ${reason}`, { did: init.did, rev: init.rev, rpath: init.rpath, cid: init.cid }, options)
    this.cid = init.cid?.toString()
    this.rpath = init.rpath
    this.did = init.did
    this.rev = init.rev
  }
}

/** A public key or signature is malformed or of an unsupported kind. */
export class InvalidKeyError extends RepoVerificationError {
  constructor (reason: string, details: Details = {}, options?: AtmirrorErrorOptions) {
    super(`invalid key: ${reason}`, details, options)
  }
}

// ---------------------------------------------------------------------------
// Identity (src/identity)
// ---------------------------------------------------------------------------

/** Base of DID and handle failures. */
export class IdentityError extends AtmirrorError {}

/** Not a syntactically valid DID or handle, or an unsupported DID method. */
export class InvalidIdentifierError extends IdentityError {
  readonly identifier: string
  constructor (identifier: string, reason: string) {
    super(`invalid identifier: ${reason}`, { identifier: JSON.stringify(identifier) })
    this.identifier = identifier
  }
}

/**
 * The DID does not resolve (the directory or host says so). `tombstoned` is set only
 * when the answer says the DID was deactivated for good (410 Gone, as PLC answers for
 * a tombstoned DID); a plain 404 may be a misconfigured directory and proves nothing.
 */
export class DidNotFoundError extends IdentityError {
  readonly did: string
  readonly url?: string
  readonly tombstoned: boolean
  constructor (did: string, init: { url?: string, tombstoned?: boolean } = {}) {
    super(init.tombstoned === true ? 'DID tombstoned (410 Gone)' : 'DID not found', { did, url: init.url })
    this.did = did
    this.url = init.url
    this.tombstoned = init.tombstoned === true
  }
}

/** Resolving the DID failed (network, timeout, bad response). */
export class DidResolutionError extends IdentityError {
  readonly did: string
  readonly url?: string
  constructor (did: string, reason: string, init: { url?: string } = {}, options?: AtmirrorErrorOptions) {
    super(`DID resolution failed: ${reason}`, { did, url: init.url }, options)
    this.did = did
    this.url = init.url
  }
}

/**
 * The DID document lacks or has a malformed `#atproto` key or `#atproto_pds` service
 * (or names a PDS URL this resolver refuses: `url`).
 */
export class DidDocumentError extends IdentityError {
  readonly did: string
  readonly url?: string
  constructor (did: string, reason: string, init: { url?: string } = {}, options?: AtmirrorErrorOptions) {
    super(`DID document unusable: ${reason}`, { did, url: init.url }, options)
    this.did = did
    this.url = init.url
  }
}

/** The handle resolves to no DID. */
export class HandleNotFoundError extends IdentityError {
  readonly handle: string
  constructor (handle: string, reason = 'no DID found') {
    super(`handle not found: ${reason}`, { handle })
    this.handle = handle
  }
}

/**
 * Resolving the handle failed, or its DID document does not claim it back. When
 * every method failed (DNS and HTTPS), `reasons` lists each method's reason.
 */
export class HandleResolutionError extends IdentityError {
  readonly handle: string
  readonly did?: string
  readonly url?: string
  readonly reasons?: ReadonlyArray<{ source: string, reason: string }>
  constructor (handle: string, reason: string, init: { did?: string, url?: string, reasons?: ReadonlyArray<{ source: string, reason: string }> } = {}, options?: AtmirrorErrorOptions) {
    super(`handle resolution failed: ${reason}`, { handle, did: init.did, url: init.url }, options)
    this.handle = handle
    this.did = init.did
    this.url = init.url
    this.reasons = init.reasons
  }
}

/** A did:plc operation log that cannot be used: `index` and `cid` name the entry, `reason` what failed. */
export abstract class PlcLogError extends IdentityError {
  readonly did: string
  /** What failed, without the details. */
  readonly reason: string
  readonly index?: number
  readonly cid?: string
  readonly source?: string
  constructor (message: string, did: string, reason: string, init: { index?: number, cid?: string, source?: string } = {}) {
    super(message, { did, index: init.index, cid: init.cid, source: init.source })
    this.did = did
    this.reason = reason
    this.index = init.index
    this.cid = init.cid
    this.source = init.source
  }
}

/** A did:plc operation log fails verification (src/identity/plc-log.ts). */
export class PlcLogInvalidError extends PlcLogError {
  constructor (did: string, reason: string, init: { index?: number, cid?: string, source?: string } = {}) {
    super(`PLC log invalid: ${reason}`, did, reason, init)
  }
}

/**
 * A valid did:plc log that cannot replace the stored one: shorter (truncated), or
 * leaving out or rewriting stored entries other than by a valid recovery.
 */
export class PlcLogConflictError extends PlcLogError {
  constructor (did: string, reason: string, init: { index?: number, cid?: string, source?: string } = {}) {
    super(`PLC log refused: ${reason}`, did, reason, init)
  }
}

// ---------------------------------------------------------------------------
// PDS and other HTTP services (src/head, src/blocks)
// ---------------------------------------------------------------------------

/** An HTTP response body is larger than the cap its reader allows (`limit` bytes). */
export class BodyTooLargeError extends AtmirrorError {
  readonly limit: number
  constructor (limit: number) {
    super(`response body larger than ${limit} bytes`, { limit })
    this.limit = limit
  }
}

/**
 * An outbound request was not made because the address it would connect to is in a
 * range the address policy refuses (loopback, private, link-local, …; see
 * src/http/policy.ts). `host` is what was asked for, `address` what it resolved to.
 */
export class AddressNotAllowedError extends AtmirrorError {
  readonly host: string
  readonly address: string
  readonly range: string
  constructor (host: string, address: string, range: string) {
    super('outbound address refused by the address policy', { host, address, range })
    this.host = host
    this.address = address
    this.range = range
  }
}

/** A redirect was not followed: too many hops, a scheme other than http(s), or https → http. */
export class RedirectRefusedError extends AtmirrorError {
  readonly url: string
  readonly location: string
  constructor (reason: string, init: { url: string, location: string }) {
    super(`redirect refused: ${reason}`, { url: init.url, location: init.location })
    this.url = init.url
    this.location = init.location
  }
}

/** Base of failures talking to a PDS (or any atproto XRPC service). */
export class PdsError extends AtmirrorError {
  readonly did?: string
  readonly url?: string
  readonly status?: number
  constructor (message: string, init: { did?: string, url?: string, status?: number, cid?: CidLike } = {}, options?: AtmirrorErrorOptions) {
    super(message, { did: init.did, cid: init.cid, status: init.status, url: init.url }, options)
    this.did = init.did
    this.url = init.url
    this.status = init.status
  }
}

/** The PDS does not host this repo (`RepoNotFound`). */
export class RepoNotFoundError extends PdsError {}
/** The repo was taken down (`RepoTakendown`). */
export class RepoTakendownError extends PdsError {}
/** The account is suspended (`RepoSuspended`). */
export class RepoSuspendedError extends PdsError {}
/** The account is deactivated (`RepoDeactivated`). */
export class RepoDeactivatedError extends PdsError {}
/** The PDS does not implement the method (404/501 `MethodNotImplemented`). */
export class MethodNotImplementedError extends PdsError {}
/** A block the PDS was asked for is not there (`BlockNotFound`). */
export class PdsBlockNotFoundError extends PdsError {}
/** The PDS does not have (or no longer serves: a takedown) a blob (`BlobNotFound`, or the reference PDS's "Blob not found"). */
export class PdsBlobNotFoundError extends PdsError {}
/** The PDS could not be reached, timed out, or failed (5xx). */
export class PdsUnavailableError extends PdsError {}
/** The PDS answered something that is not a valid response (HTML, wrong JSON, bad CAR). */
export class PdsResponseError extends PdsError {}
/**
 * A download went past a limit (src/mirror/download-guard.ts): more blocks or bytes
 * than a repo may have, or more blocks not reachable from the commit than allowed,
 * or a getBlocks answer full of blocks nobody asked for. `limit` names the limit,
 * `max` its value.
 */
export class DownloadLimitError extends PdsError {
  /** What went past the limit, e.g. `more than 10000 blocks not reachable from the commit`. */
  readonly what: string
  readonly limit: string
  readonly max: number
  constructor (what: string, init: { did?: string, url?: string, limit: string, max: number }, options?: AtmirrorErrorOptions) {
    super(`download limit: ${what} (${init.limit})`, { did: init.did, url: init.url }, options)
    this.what = what
    this.limit = init.limit
    this.max = init.max
  }
}

/**
 * A frame of an event stream (`com.atproto.sync.subscribeRepos`) that is not a
 * valid event: not two DRISL values, a header or body of the wrong shape, or
 * larger than allowed. `url` names the stream.
 */
export class FirehoseFrameError extends PdsError {}

/**
 * A well-formed firehose event that is refused: a commit for a DID the host does
 * not serve, a rev not newer than the stored one, a `#sync` to an older rev.
 * `reason` says which, in a word (`host`, `rollback`, `stale`).
 */
export class FirehoseEventRefusedError extends PdsError {
  readonly reason: string
  constructor (message: string, init: { did?: string, url?: string, reason: string, cid?: CidLike }, options?: AtmirrorErrorOptions) {
    super(message, { did: init.did, url: init.url, cid: init.cid }, options)
    this.reason = init.reason
  }
}

/** An event stream could not be opened or broke off (refused, closed by the host, an error frame, too slow a reader). */
export class FirehoseConnectionError extends PdsUnavailableError {}

// ---------------------------------------------------------------------------
// Heads (src/head)
// ---------------------------------------------------------------------------

/** Base of head-resolution failures that are not a single source's error. */
export class HeadError extends AtmirrorError {}

/** No source could give a verified head; `errors` lists each source's reason. */
export class HeadUnavailableError extends HeadError {
  readonly did: string
  readonly errors: ReadonlyArray<{ source: string, error: Error }>
  constructor (did: string, errors: ReadonlyArray<{ source: string, error: Error }>) {
    super(`no verified head from any source (${errors.map(e => `${e.source}: ${e.error.message}`).join(' | ') || 'no sources'})`, { did })
    this.did = did
    this.errors = errors
  }
}

// ---------------------------------------------------------------------------
// Blocks (src/blocks)
// ---------------------------------------------------------------------------

/** Base of block fetch failures. */
export class BlockFetchError extends AtmirrorError {}

/** The block is not in any source that was asked. */
export class BlockNotFoundError extends BlockFetchError {
  readonly cid: string
  constructor (cid: CidLike, init: { source?: string } = {}) {
    super('block not found', { cid, source: init.source })
    this.cid = cid.toString()
  }
}

/** A blob's bytes do not hash to its CID (raw 0x55, sha2-256): refused, nothing stored. */
export class BlobMismatchError extends BlockFetchError {
  readonly cid: string
  readonly actual: string
  readonly did?: string
  readonly url?: string
  constructor (cid: CidLike, init: { actual: CidLike, did?: string, url?: string, source?: string }) {
    super('blob bytes do not match CID', { did: init.did, cid, actual: init.actual, source: init.source, url: init.url })
    this.cid = cid.toString()
    this.actual = init.actual.toString()
    this.did = init.did
    this.url = init.url
  }
}

/** A blob is larger than the mirror's cap (`--max-blob-size`): refused, nothing stored. */
export class BlobTooLargeError extends BlockFetchError {
  readonly cid: string
  readonly did?: string
  /** The size that went past the cap: declared by the record or the server, or counted while streaming. */
  readonly size: number
  readonly max: number
  constructor (cid: CidLike, init: { size: number, max: number, did?: string, url?: string }) {
    super('blob over the size cap', { did: init.did, cid, size: init.size, max: init.max, url: init.url })
    this.cid = cid.toString()
    this.did = init.did
    this.size = init.size
    this.max = init.max
  }
}

/** `verify`: blobs a stored repo references are damaged or missing on disk and were not refetched. */
export class StoredBlobsDamagedError extends AtmirrorError {
  readonly did: string
  /** The blobs, by CID. */
  readonly cids: readonly string[]
  constructor (did: string, cids: readonly string[]) {
    super('stored blobs damaged or missing, not refetched', { did, count: cids.length, cids: cids.slice(0, 5).join(',') + (cids.length > 5 ? ',…' : '') })
    this.did = did
    this.cids = cids
  }
}

/** Every source failed for this block; `errors` lists each source's reason. */
export class AllSourcesFailedError extends BlockFetchError {
  readonly cid: string
  readonly errors: ReadonlyArray<{ source: string, error: Error }>
  constructor (cid: CidLike, errors: ReadonlyArray<{ source: string, error: Error }>) {
    super(`every source failed (${errors.map(e => `${e.source}: ${e.error.message}`).join(' | ') || 'no sources'})`, { cid })
    this.cid = cid.toString()
    this.errors = errors
  }
}

// ---------------------------------------------------------------------------
// Peers: head exchange, mirrors on the DHT (src/net, src/net/peer-head-resolver.ts)
// ---------------------------------------------------------------------------

/** Base of failures talking to another atmirror peer. */
export class PeerError extends AtmirrorError {
  readonly peer?: string
  constructor (message: string, init: { peer?: CidLike | string, did?: string } = {}, options?: AtmirrorErrorOptions) {
    super(message, { did: init.did, peer: init.peer?.toString() }, options)
    this.peer = init.peer?.toString()
  }
}

/** The peer broke the wire protocol: oversized or malformed frame, wrong field types, early end. */
export class PeerProtocolError extends PeerError {
  constructor (reason: string, init: { peer?: CidLike | string, did?: string } = {}, options?: AtmirrorErrorOptions) {
    super(`peer protocol violation: ${reason}`, init, options)
  }
}

/** The peer did not answer within the per-stream time limit. */
export class PeerTimeoutError extends PeerError {
  constructor (init: { peer?: CidLike | string, did?: string, ms?: number } = {}) {
    super(`peer did not answer in time${init.ms !== undefined ? ` (${init.ms} ms)` : ''}`, init)
  }
}

/** The peer answered that it holds no head for the DID. */
export class PeerHeadNotFoundError extends PeerError {}

/** A verified head is older than the one already stored here, so it cannot move the repo back. */
export class HeadStaleError extends HeadError {
  readonly did: string
  readonly rev: string
  readonly storedRev: string
  constructor (did: string, rev: string, storedRev: string, init: { source?: string } = {}) {
    super('head is older than the stored rev', { did, rev, storedRev, source: init.source })
    this.did = did
    this.rev = rev
    this.storedRev = storedRev
  }
}

/** A multiaddr given in configuration (`--listen`, `--bootstrap`) is malformed or unusable here. */
export class InvalidMultiaddrError extends AtmirrorError {
  readonly multiaddr: string
  constructor (multiaddr: string, reason: string, options?: AtmirrorErrorOptions) {
    super(`invalid multiaddr: ${reason}`, { multiaddr: JSON.stringify(multiaddr) }, options)
    this.multiaddr = multiaddr
  }
}

/** The node cannot listen on a configured address (`code`: EADDRINUSE, …). */
export class ListenError extends AtmirrorError {
  readonly address: string
  readonly code?: string
  constructor (reason: string, init: { address: string, code?: string }, options?: AtmirrorErrorOptions) {
    super(`cannot listen: ${reason}`, { address: init.address, code: init.code }, options)
    this.address = init.address
    this.code = init.code
  }
}

// ---------------------------------------------------------------------------
// Mirror state, daemon and control API (src/mirror, src/server)
// ---------------------------------------------------------------------------

/** Base of local-state failures. */
export class MirrorError extends AtmirrorError {}

/** Another process holds the data directory. */
export class DataDirLockedError extends MirrorError {
  readonly path: string
  constructor (path: string, init: { pid?: number } = {}) {
    super('data directory is in use by another atmirror process', { path, pid: init.pid })
    this.path = path
  }
}

/**
 * The data directory cannot be used: it cannot be created or written, or the path
 * names a file. `code` is the system error code (EACCES, ENOTDIR, EROFS, …).
 */
export class DataDirError extends MirrorError {
  readonly path: string
  readonly code?: string
  constructor (path: string, reason: string, init: { code?: string } = {}, options?: AtmirrorErrorOptions) {
    super(`data directory not usable: ${reason}`, { path, code: init.code }, options)
    this.path = path
    this.code = init.code
  }
}

/**
 * The data directory keeps its blocks in another kind of blockstore than the one
 * asked for (`--blockstore`): a data directory keeps the kind it was made with.
 */
export class BlockstoreKindError extends MirrorError {
  readonly path: string
  readonly recorded: string
  readonly requested: string
  constructor (path: string, recorded: string, requested: string) {
    super(`data directory uses the ${recorded} blockstore, not ${requested}`, { path, recorded, requested })
    this.path = path
    this.recorded = recorded
    this.requested = requested
  }
}

/** The DID is not pinned here. */
export class NotPinnedError extends MirrorError {
  readonly did: string
  constructor (did: string) {
    super('not pinned', { did })
    this.did = did
  }
}

/** Nothing is stored for this DID yet. */
export class RepoNotMirroredError extends MirrorError {
  readonly did: string
  constructor (did: string) {
    super('repo not mirrored here', { did })
    this.did = did
  }
}

/** A blob is not mirrored here for that repo: its current commit does not reference it, or it is not stored (yet, or refused). */
export class BlobNotMirroredError extends MirrorError {
  readonly did: string
  readonly cid: string
  constructor (did: string, cid: CidLike) {
    super('blob not mirrored', { did, cid })
    this.did = did
    this.cid = cid.toString()
  }
}

/**
 * A stored block's bytes do not hash to its CID (a damaged disk, or a file edited
 * behind the store's back). The file is removed when this is found, so the block is
 * never served; `cause` says why it could not be refetched, when it was tried.
 */
export class DamagedBlockError extends MirrorError {
  readonly cid: string
  readonly did?: string
  constructor (cid: CidLike, init: { did?: string, actual?: CidLike, repaired?: false } = {}, options?: AtmirrorErrorOptions) {
    super(init.repaired === false ? 'stored block is damaged and could not be refetched' : 'stored block is damaged', { cid, actual: init.actual, did: init.did }, options)
    this.cid = cid.toString()
    this.did = init.did
  }
}

/** `<dataDir>/daemon.json` is there but not what a daemon writes (hand-edited, or another program's). */
export class DaemonInfoError extends MirrorError {
  readonly path: string
  constructor (path: string, reason: string) {
    super(`daemon.json is malformed: ${reason}`, { path })
    this.path = path
  }
}

/** A setting from a config file or the environment is wrong (unknown key, wrong type). */
export class ConfigError extends MirrorError {
  readonly path?: string
  constructor (message: string, init: { path?: string } = {}, options?: AtmirrorErrorOptions) {
    super(message, { path: init.path }, options)
    this.path = init.path
  }
}

/** The stored repo has no record at this path. */
export class RecordNotFoundError extends MirrorError {
  readonly uri: string
  constructor (uri: string, init: { rev?: string } = {}) {
    super('record not found in the stored repo', { uri, rev: init.rev })
    this.uri = uri
  }
}

/** A control API request failed (daemon down, 401, bad answer). */
export class ControlApiError extends MirrorError {
  readonly url?: string
  readonly status?: number
  constructor (message: string, init: { url?: string, status?: number } = {}, options?: AtmirrorErrorOptions) {
    super(message, { status: init.status, url: init.url }, options)
    this.url = init.url
    this.status = init.status
  }
}

/**
 * An error a running daemon answered with, under the name it had there (e.g.
 * `DidNotFoundError`) and with its message, so that a verb fails alike with and
 * without a daemon. `status` is the HTTP status of the answer.
 */
export class DaemonError extends MirrorError {
  readonly url?: string
  readonly status?: number
  constructor (name: string, message: string, init: { url?: string, status?: number } = {}) {
    super(message)
    this.name = name
    this.url = init.url
    this.status = init.status
  }
}

/** The control API server refused a request's input (path, body): answered with 400. */
export class BadRequestError extends MirrorError {}

/** The control API server refused a request body over its limit: answered with 413. */
export class PayloadTooLargeError extends MirrorError {
  readonly limit: number
  constructor (limit: number) {
    super('request body too large', { limit })
    this.limit = limit
  }
}

/** The control API has no such route: answered with 404. */
export class RouteNotFoundError extends MirrorError {
  readonly path: string
  constructor (path: string) {
    super('no such route', { path })
    this.path = path
  }
}

/** A control API route asked with a method it does not take: answered with 405. */
export class MethodNotAllowedError extends MirrorError {
  readonly method: string
  readonly allowed: readonly string[]
  constructor (method: string, allowed: readonly string[]) {
    super(`method not allowed; use ${allowed.join(' or ')}`, { method })
    this.method = method
    this.allowed = allowed
  }
}

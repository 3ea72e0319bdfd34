/**
 * Head from the account's PDS: `com.atproto.sync.getLatestCommit` (or, where it is
 * not implemented, the deprecated `getHead`, whose `root` is the commit CID),
 * then the commit block through `getBlocks`, hash-checked, decoded, checked for
 * the DID and verified against the DID's signing key.
 *
 * The identity is the caller's (one per sync) unless none is given. It is refreshed
 * once, and the refreshed one returned with the head, when:
 * - the signature fails: keys rotate, and a head signed by the new key must be
 *   taken at the first attempt;
 * - the PDS answers with an account status (`RepoNotFound`, `RepoDeactivated`,
 *   `RepoSuspended`, `RepoTakendown`): accounts move, and a status counts only from
 *   the PDS the current DID document names. When the refreshed document names
 *   another PDS, that one is asked; when the refresh fails, its error is thrown
 *   rather than a status nobody could confirm.
 */
import { logger } from '@libp2p/logger'
import {
  CommitDidMismatchError,
  CommitSignatureError,
  MethodNotImplementedError,
  PdsBlockNotFoundError,
  PdsResponseError,
  RepoDeactivatedError,
  RepoNotFoundError,
  RepoSuspendedError,
  RepoTakendownError
} from '../errors.ts'
import { readCar } from '../repo/car.ts'
import { DAG_CBOR, parseCid, type CID } from '../repo/cid.ts'
import { decodeCommit, verifyCommitSignature } from '../repo/commit.ts'
import { publicKeyEquals } from '../repo/keys.ts'
import { isValidTid } from '../repo/syntax.ts'
import type { FetchLike } from '../http/fetch.ts'
import type { Identity, IdentityResolver } from '../identity/resolver.ts'
import type { Head, HeadResolver, ResolveHeadOptions } from './head-resolver.ts'
import { readXrpcBytes, readXrpcJson, xrpcGet, type XrpcRequestOptions } from '../http/xrpc.ts'

const log = logger('atmirror:head')

/** A commit block in a one-block CAR is a few hundred bytes; this is generous. */
const COMMIT_CAR_MAX_BYTES = 64 * 1024

export interface PdsHeadResolverComponents {
  identity: IdentityResolver
}

export interface PdsHeadResolverInit {
  /** Per-request time budget. @default 10_000 */
  timeoutMs?: number
  /** @default the identity resolver's (its address policy) */
  fetch?: FetchLike
}

/** {@link HeadResolver} asking the DID's PDS. */
export class PdsHeadResolver implements HeadResolver {
  readonly name = 'pds'
  private readonly identity: IdentityResolver
  private readonly timeoutMs?: number
  private readonly fetchFn?: FetchLike

  constructor (components: PdsHeadResolverComponents, init: PdsHeadResolverInit = {}) {
    this.identity = components.identity
    this.timeoutMs = init.timeoutMs
    this.fetchFn = init.fetch ?? components.identity.fetch
  }

  async resolveHead (did: string, options: ResolveHeadOptions = {}): Promise<Head> {
    const identity = options.identity ?? await this.identity.resolve(did, { signal: options.signal, verifyHandle: false })
    try {
      return await this.fromPds(identity, options)
    } catch (err) {
      if (err instanceof CommitSignatureError) {
        const fresh = await this.refresh(identity, options, err)
        if (publicKeyEquals(fresh.signingKey, identity.signingKey) && fresh.pds === identity.pds) throw err
        log('signature failed for %s; retrying with refreshed key %s', identity.did, fresh.didKey)
        return await this.fromPds(fresh, options)
      }
      if (isAccountStatus(err)) {
        // only the PDS the DID document names now speaks for the account
        const fresh = await this.refresh(identity, options)
        if (fresh.pds === identity.pds) throw err
        log('%s moved from %s to %s', identity.did, identity.pds, fresh.pds)
        return await this.fromPds(fresh, options)
      }
      throw err
    }
  }

  /**
   * The identity resolved again. When that fails, `original` (if given) is the error
   * worth reporting; otherwise the refresh's own error is thrown.
   */
  private async refresh (identity: Identity, options: ResolveHeadOptions, original?: Error): Promise<Identity> {
    try {
      return await this.identity.refresh(identity.did, { signal: options.signal, verifyHandle: false })
    } catch (err) {
      options.signal?.throwIfAborted()
      log('refreshing %s failed: %e', identity.did, err)
      throw original ?? err
    }
  }

  /** The verified head of `identity`'s repo on `identity.pds`. */
  private async fromPds (identity: Identity, options: ResolveHeadOptions): Promise<Head> {
    const { did, pds } = identity
    const request: XrpcRequestOptions = { signal: options.signal, timeoutMs: this.timeoutMs, fetch: this.fetchFn, did }
    const latest = await this.latestCommit(pds, did, request)
    const bytes = await this.commitBlock(pds, did, latest.cid, request)
    const commit = decodeCommit(bytes, latest.cid)
    if (commit.did !== did) throw new CommitDidMismatchError(did, commit.did, { cid: latest.cid })
    if (latest.rev !== undefined && latest.rev !== commit.rev) {
      throw new PdsResponseError(`getLatestCommit said rev ${latest.rev} but the commit has rev ${commit.rev}`, { did, url: pds, cid: latest.cid })
    }
    verifyCommitSignature(commit, identity.signingKey, { cid: latest.cid })
    return { did, cid: latest.cid, rev: commit.rev, data: commit.data, commit, bytes, source: `pds:${pds}`, identity }
  }

  private async latestCommit (pds: string, did: string, request: XrpcRequestOptions): Promise<{ cid: CID, rev?: string }> {
    let body: Record<string, unknown>
    try {
      const res = await xrpcGet(pds, 'com.atproto.sync.getLatestCommit', { did }, request)
      body = await readXrpcJson(res, 'com.atproto.sync.getLatestCommit', request)
    } catch (err) {
      if (!(err instanceof MethodNotImplementedError)) throw err
      log('%s has no getLatestCommit; falling back to getHead', pds)
      const res = await xrpcGet(pds, 'com.atproto.sync.getHead', { did }, request)
      const head = await readXrpcJson(res, 'com.atproto.sync.getHead', request)
      return { cid: responseCid(head.root, 'com.atproto.sync.getHead', 'root', pds, did) }
    }
    const cid = responseCid(body.cid, 'com.atproto.sync.getLatestCommit', 'cid', pds, did)
    if (!isValidTid(body.rev)) {
      throw new PdsResponseError(`com.atproto.sync.getLatestCommit: rev ${JSON.stringify(body.rev)} is not a TID`, { did, url: pds })
    }
    return { cid, rev: body.rev }
  }

  /** The commit block, through getBlocks (a CAR); every block's hash is checked as it is read. */
  private async commitBlock (pds: string, did: string, cid: CID, request: XrpcRequestOptions): Promise<Uint8Array> {
    const nsid = 'com.atproto.sync.getBlocks'
    const res = await xrpcGet(pds, nsid, { did, cids: [cid.toString()] }, { ...request, accept: 'application/vnd.ipld.car' })
    const car = await readXrpcBytes(res, nsid, COMMIT_CAR_MAX_BYTES, request)
    try {
      const reader = await readCar(car, { signal: request.signal, allowNoRoots: true })
      for await (const block of reader.blocks) {
        if (block.cid.equals(cid)) return block.bytes
      }
    } catch (err) {
      request.signal?.throwIfAborted()
      throw new PdsResponseError(`${nsid}: bad CAR (${(err as Error).message})`, { did, url: pds, cid }, { cause: err })
    }
    throw new PdsBlockNotFoundError(`${nsid}: the commit block is not in the CAR`, { did, url: pds, cid })
  }
}

/** An answer about the account rather than the request: it may come from a PDS the account has left. */
function isAccountStatus (err: unknown): boolean {
  return err instanceof RepoNotFoundError || err instanceof RepoDeactivatedError || err instanceof RepoSuspendedError || err instanceof RepoTakendownError
}

function responseCid (value: unknown, nsid: string, field: string, pds: string, did: string): CID {
  if (typeof value !== 'string') throw new PdsResponseError(`${nsid}: ${field} is not a string`, { did, url: pds })
  let cid: CID
  try {
    cid = parseCid(value)
  } catch (err) {
    throw new PdsResponseError(`${nsid}: ${field} ${JSON.stringify(value.slice(0, 100))} is not a repo CID`, { did, url: pds }, { cause: err })
  }
  if (cid.code !== DAG_CBOR) throw new PdsResponseError(`${nsid}: ${field} ${value} is not a DAG-CBOR CID`, { did, url: pds })
  return cid
}

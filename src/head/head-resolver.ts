/**
 * A repo's head: its latest signed commit, verified against the DID's key. Where
 * it comes from (the PDS, peers) is a {@link HeadResolver}; a composite asks the
 * PDS and the peers at once and takes the PDS's answer when it has one.
 *
 * A head carries the {@link Identity} it was verified against: the one the caller
 * passed in, or the refreshed one when a signature failed (keys rotate) or the PDS
 * no longer hosts the repo (accounts move). Whoever syncs from the head uses that
 * identity, and no other, for the PDS it downloads from and the key it verifies with.
 */
import type { CID } from '../repo/cid.ts'
import type { Commit } from '../repo/commit.ts'
import type { Identity } from '../identity/resolver.ts'

/** A verified head commit. */
export interface Head {
  did: string
  /** CID of the commit block. */
  cid: CID
  rev: string
  /** MST root of the commit. */
  data: CID
  commit: Commit
  /** The commit block's bytes (they hash to `cid`). */
  bytes: Uint8Array
  /** Where it came from, e.g. `pds:https://pds.example.com`. */
  source: string
  /** The identity whose signing key verified the commit (and whose PDS to sync from). */
  identity: Identity
}

export interface ResolveHeadOptions {
  signal?: AbortSignal
  /**
   * The identity to verify against, resolved once by the caller for the whole sync.
   * A resolver refreshes it when it fails (bad signature, the repo gone from its PDS)
   * and returns the refreshed one in {@link Head.identity}. @default resolved by the resolver
   */
  identity?: Identity
}

/** Finds a repo's latest commit and verifies its signature and DID. */
export interface HeadResolver {
  /** Names the source in aggregate errors. */
  readonly name?: string
  resolveHead: (did: string, options?: ResolveHeadOptions) => Promise<Head>
}

/** Compares revs (TIDs sort as strings): negative when `a` is older. */
export function compareRevs (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

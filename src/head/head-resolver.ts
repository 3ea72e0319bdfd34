/**
 * A repo's head: its latest signed commit, verified against the DID's key. Where
 * it comes from (the PDS, peers) is a {@link HeadResolver}; a composite asks
 * several and keeps the highest verified rev.
 */
import type { CID } from '../repo/cid.ts'
import type { Commit } from '../repo/commit.ts'

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
}

export interface ResolveHeadOptions {
  signal?: AbortSignal
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

/**
 * Damaged disks: refetching blocks that a stored repo holds, and checking stored
 * repos end to end.
 *
 * A block file whose bytes no longer hash to its name is found by a checked read
 * (MirrorStore.getVerified: export, Bitswap serving, `verify`), which removes the
 * file so it is never served, and hands the block here. The repairer asks the fetch
 * chain for it (peers over Bitswap when the node has a network, then the PDS of a
 * repo that holds it: the block is content-addressed, so any source will do) and
 * stores the good bytes in place (hash-checked, temp file + rename, as every write).
 * Every repair, and every failed one, is logged.
 *
 * `verifyStoredRepo` is the `atmirror verify` check of one stored repo, like fsck: it
 * reads every block of the repo hash-checked, checks the commit's signature against
 * the DID's current key, the MST's structure and every record (decoded as strict
 * DRISL), and refetches whatever is damaged or missing on the way; then, given the
 * blob mirror, re-hashes every stored blob the repo references and refetches those
 * damaged or missing (BlobMirror.verifyStored).
 */
import { logger } from '@libp2p/logger'
import { AtmirrorError, RepoNotMirroredError, StoredBlobsDamagedError } from '../errors.ts'
import type { BlockFetcher } from '../blocks/fetcher.ts'
import { CID, cidKey } from '../repo/cid.ts'
import type { PublicKey } from '../repo/keys.ts'
import { verifyRepo, type RepoSummary } from '../repo/verify.ts'
import type { BlobVerifyReport } from './blobs.ts'
import { type BlockRepairSource, type MirrorStore } from './store.ts'

const log = logger('atmirror:mirror:repair')
const repoLog = logger('atmirror:repo')

export interface BlockRepairerComponents {
  store: MirrorStore
  /** The fetch chain (local → bitswap → PDS); fetched blocks are stored by the repairer, not by it. */
  fetcher: BlockFetcher
}

export interface BlockRepairerInit {
  /**
   * Repos asked about one block in turn, when the caller names none (a block shared
   * by many repos needs only one of their PDSes to answer).
   *
   * @default 4
   */
  maxRepos?: number
}

export class BlockRepairer implements BlockRepairSource {
  readonly #store: MirrorStore
  readonly #fetcher: BlockFetcher
  readonly #maxRepos: number
  readonly #inflight = new Map<string, Promise<Uint8Array>>()

  constructor (components: BlockRepairerComponents, init: BlockRepairerInit = {}) {
    this.#store = components.store
    this.#fetcher = components.fetcher
    this.#maxRepos = Math.max(1, init.maxRepos ?? 4)
  }

  /**
   * Refetches `cid` and stores it; the good bytes. One refetch per block at a time:
   * concurrent callers share it. `did` names the repo it is read for; without it, the
   * repos that hold the block are asked in turn.
   *
   * @throws AtmirrorError when no stored repo holds the block (nothing to ask);
   * the fetch chain's AllSourcesFailedError when no source has it
   */
  async repair (cid: CID, options: { did?: string, signal?: AbortSignal } = {}): Promise<Uint8Array> {
    const key = cidKey(cid)
    let running = this.#inflight.get(key)
    if (running === undefined) {
      running = this.#repair(cid, options).finally(() => { this.#inflight.delete(key) })
      this.#inflight.set(key, running)
    }
    return await running
  }

  async #repair (cid: CID, options: { did?: string, signal?: AbortSignal }): Promise<Uint8Array> {
    const { signal } = options
    // garbage collection waits meanwhile: it must not find the block absent and drop its holds' last file
    const release = await this.#store.beginWrite()
    try {
      const dids = options.did !== undefined ? [options.did] : await this.#store.holds.holders(cid, { limit: this.#maxRepos })
      if (dids.length === 0) {
        const error = new AtmirrorError('no stored repo holds the block; not refetched', { cid })
        log.error('cannot repair %c: %s', cid, error.message)
        throw error
      }
      let failure: unknown
      for (const did of dids) {
        signal?.throwIfAborted()
        try {
          const [block] = await this.#fetcher.fetchAll([cid], { did, store: false, signal })
          // put hash-checks again and writes through a temp file + rename
          await this.#store.blockstore.put(cid, block.bytes, { signal })
          log('repaired block %c of %s from %s', cid, did, block.source)
          return block.bytes
        } catch (err) {
          if (signal?.aborted === true) throw err
          failure = err
        }
      }
      log.error('cannot repair %c (asked for %s): %e', cid, dids.join(', '), failure)
      throw failure
    } finally {
      await release()
    }
  }
}

/** What `verify` found in one stored repo. */
export interface StoredRepoReport {
  did: string
  rev?: string
  commit?: string
  /** Everything holds now (after any repairs). */
  ok: boolean
  records?: number
  blocks?: number
  /** `verified` against the DID's current key, or `unchecked` when the key could not be resolved. */
  signature?: 'verified' | 'unchecked'
  /** Blocks that were damaged or missing and were refetched. */
  repaired: Array<{ cid: string, was: 'damaged' | 'missing' }>
  /** The blobs the repo references, when they were checked (the repo verified and a blob mirror was given). */
  blobs?: BlobVerifyReport
  /** Why the repo is not ok. */
  error?: Error
}

export interface VerifyStoredOptions {
  signal?: AbortSignal
  /** The DID's signing key; without it the signature is not checked. */
  key?: PublicKey
  /**
   * Refetch damaged and missing blocks through the store's repairer; with `false`
   * they are only reported (a damaged block's file is removed all the same).
   *
   * @default true
   */
  repair?: boolean
  /** Checks (and repairs) the stored blobs too (BlobMirror). @default blobs not checked */
  blobs?: { verifyStored: (did: string, options: { repair?: boolean, pds?: string, signal?: AbortSignal }) => Promise<BlobVerifyReport> }
}

/**
 * Checks the stored copy of `did`'s repo end to end and repairs what a refetch can:
 * every block hash-checked as it is read (a damaged or missing one is refetched
 * through the store's repairer), the commit's form, DID and signature (with `key`), the
 * MST's structure and every record decoded. A repo that still fails is reported
 * with the error; one whose state holds no blocks (taken down, deleted) is skipped
 * as ok with nothing checked.
 */
export async function verifyStoredRepo (store: MirrorStore, did: string, options: VerifyStoredOptions = {}): Promise<StoredRepoReport> {
  const { signal } = options
  const repair = options.repair ?? true
  const state = await store.getState(did)
  if (state === undefined) throw new RepoNotMirroredError(did)
  if (state.status === 'takendown' || state.status === 'deleted') return { did, rev: state.rev, commit: state.commit, ok: true, repaired: [] }
  const repaired: StoredRepoReport['repaired'] = []
  const release = await store.beginWrite()
  try {
    const blocks = store.verifiedBlocks({
      did,
      signal,
      repair: repair ? 'wait' : false,
      fetchMissing: repair,
      onRepaired: (cid, was) => { repaired.push({ cid: cid.toString(), was }) }
    })
    let summary: RepoSummary
    try {
      summary = await verifyRepo(blocks, CID.parse(state.commit), {
        did,
        key: options.key,
        signal,
        records: 'decode',
        // getVerified has hash-checked every block it answers with
        trusted: true,
        log: repoLog
      })
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err
      log.error('%s: stored repo at rev %s fails its check: %e', did, state.rev, err)
      return { did, rev: state.rev, commit: state.commit, ok: false, repaired, error: err instanceof Error ? err : new Error(String(err)) }
    }
    if (repaired.length > 0) log('%s: stored repo at rev %s verified after refetching %d blocks', did, state.rev, repaired.length)
    const report: StoredRepoReport = {
      did,
      rev: summary.rev,
      commit: summary.commit.toString(),
      ok: true,
      records: summary.records,
      blocks: summary.blocks,
      signature: summary.signature,
      repaired
    }
    if (options.blobs !== undefined) {
      report.blobs = await options.blobs.verifyStored(did, { repair, pds: state.pds, signal })
      if (report.blobs.failed.length > 0) {
        report.ok = false
        report.error = new StoredBlobsDamagedError(did, report.blobs.failed.map(({ cid }) => cid))
        log.error('%s: %e', did, report.error)
      }
    }
    return report
  } finally {
    await release()
  }
}

/**
 * Blob mirroring: which blobs a pinned repo references, and fetching them.
 *
 * References come from the records (`$type: blob` links, src/repo/blob-refs.ts).
 * A sync sees every block it downloads: {@link BlobScan} looks at each as it
 * passes (a byte search, so nearly free; only blocks holding a raw link are
 * decoded), and at the advance {@link blobDelta} turns the records that changed
 * into a change of the DID's references: from the MST diff for an incremental
 * sync, from every record of the new tree for a full one (records the download did
 * not bring are read back from the store). The change is written in the advance's
 * batch (blob-store.ts), so references always describe the stored commit. A repo
 * whose references describe another commit (stored before blobs were mirrored) is
 * recounted from its whole tree.
 *
 * After the advance, {@link BlobMirror.fetchWanted} fetches what the repo
 * references and the store lacks, through the blob chain (local → Bitswap → the
 * PDS's getBlob, hash-checked while streaming, capped by `maxBlobSize`), a few at
 * once. It runs as a writer of the store, so garbage collection never deletes a
 * blob under it. A failure leaves the blob wanted for the next sync; a blob over
 * the cap, or one the PDS says it does not have while a record references it (a
 * takedown), is recorded as gone, logged, not fetched again, and a copy of a
 * taken-down blob is removed. A blob taken down after it was stored is found by
 * asking the PDS about stored blobs (headers only): all of them for an explicit
 * check, a bounded round per repo for a daemon's re-checks. `verify` re-hashes the
 * stored blobs and refetches the damaged and missing ones ({@link BlobMirror.verifyStored}).
 * References are counted whatever the setting; with blobs off (the node, or one
 * pin) nothing is fetched.
 */
import { logger } from '@libp2p/logger'
import { BlobTooLargeError, PdsBlobNotFoundError, AllSourcesFailedError } from '../errors.ts'
import { eachParallel } from '../blocks/parallel.ts'
import type { BlobFetcher } from '../blocks/blob-fetch.ts'
import type { Block, ReadonlyBlockStore } from '../repo/block-store.ts'
import { blobRefsOf, mayReferenceBlobs, type BlobRef } from '../repo/blob-refs.ts'
import { CID, cidKey } from '../repo/cid.ts'
import { diffMst, type MstRecordOp } from '../repo/mst/diff.ts'
import { walkMstBatches } from '../repo/mst/walk.ts'
import type { BlobDelta } from './blob-store.ts'
import { DigestTable } from './digest-table.ts'
import type { MirrorStore } from './store.ts'

const log = logger('atmirror:mirror:blobs')

/** The default cap on one blob: 100 MiB. */
export const DEFAULT_MAX_BLOB_SIZE = 100 * 1024 * 1024

/** Stored blobs a takedown re-check round asks about per repo, by default. */
export const DEFAULT_BLOB_RECHECK = 25

/**
 * The blob references of the blocks a sync sees pass. For a full sync it also
 * remembers which blocks it saw, so that at the advance only records the download
 * did not bring are read back; by multihash, in a {@link DigestTable} (no object
 * per block: a string key per block of a 100,000-record repo cost ~10 MB of heap
 * and young-generation growth with it).
 */
export class BlobScan {
  readonly #refs = new Map<string, BlobRef[]>()
  readonly #seen: DigestTable | undefined

  constructor (options: { remember: boolean }) {
    this.#seen = options.remember ? new DigestTable() : undefined
  }

  see (block: Block): void {
    this.#seen?.add(block.cid.multihash.bytes, 1)
    if (!mayReferenceBlobs(block.bytes)) return
    const refs = blobRefsOf(block.bytes)
    if (refs.length > 0) this.#refs.set(cidKey(block.cid), refs)
  }

  /** The references of a record, from what passed or read from `blocks`. */
  async refsOf (cid: CID, blocks: ReadonlyBlockStore, options: { signal?: AbortSignal } = {}): Promise<BlobRef[]> {
    const known = this.#refs.get(cidKey(cid))
    if (known !== undefined) return known
    if (this.#seen?.has(cid.multihash.bytes) === true) return []
    const bytes = await blocks.get(cid, options)
    return bytes === undefined ? [] : blobRefsOf(bytes)
  }
}

function addRefs (delta: BlobDelta, refs: readonly BlobRef[], sign: 1 | -1): void {
  for (const ref of refs) {
    const key = ref.cid.toString()
    const entry = delta.get(key) ?? { change: 0 }
    entry.change += sign
    if (ref.size !== undefined && sign > 0) entry.size = ref.size
    delta.set(key, entry)
  }
}

/**
 * How `did`'s blob references change from the tree at `before` (whose references
 * the index holds; `null`: it holds none) to the tree at `after`. `recordOps`: the
 * record changes from `before` to `after` when the caller has them already (an
 * incremental verification found them), so the trees are not diffed again.
 */
export async function blobDelta (blocks: ReadonlyBlockStore, scan: BlobScan, before: CID | null, after: CID, options: { signal?: AbortSignal, recordOps?: readonly MstRecordOp[] } = {}): Promise<BlobDelta> {
  const delta: BlobDelta = new Map()
  if (before === null) {
    for await (const leaves of walkMstBatches(blocks, after, { signal: options.signal })) {
      for (const leaf of leaves) addRefs(delta, await scan.refsOf(leaf.cid, blocks, options), 1)
    }
    return delta
  }
  const recordOps = options.recordOps ?? (await diffMst(blocks, before, after, { signal: options.signal })).recordOps
  for (const op of recordOps) {
    if (op.oldValue !== null) addRefs(delta, await scan.refsOf(op.oldValue, blocks, options), -1)
    if (op.newValue !== null) addRefs(delta, await scan.refsOf(op.newValue, blocks, options), 1)
  }
  return delta
}

/** A recount: `did`'s whole tree at `data` against what the index holds for it now. */
export async function blobRecount (store: MirrorStore, blocks: ReadonlyBlockStore, did: string, data: CID, options: { signal?: AbortSignal } = {}): Promise<BlobDelta> {
  return await withoutStoredRefs(store, did, await blobDelta(blocks, new BlobScan({ remember: false }), null, data, options))
}

/** Turns a whole tree's references (`delta`) into a change from what the index holds for `did`. */
export async function withoutStoredRefs (store: MirrorStore, did: string, delta: BlobDelta): Promise<BlobDelta> {
  for (const [cid, count] of await store.blobs.refs(did)) {
    const entry = delta.get(cid) ?? { change: 0 }
    entry.change -= count
    delta.set(cid, entry)
  }
  return delta
}

/** What one fetch pass did. */
export interface BlobPassResult {
  /** Blobs the repo references that were not stored when the pass began. */
  wanted: number
  /** Stored by this pass, by source. */
  fetched: { local: number, bitswap: number, pds: number }
  /** Bytes stored by this pass. */
  bytes: number
  /** Failed this time; asked for again on the next sync. */
  failed: number
  /** Refused for good: over the cap, or taken down. */
  refused: number
}

/** What asking a repo's PDS about its blobs did. */
export interface BlobCheckResult {
  /** Blobs asked about: those stored, and those gone as taken down. */
  checked: number
  /** Stored ones the PDS no longer serves: removed (taken down). */
  removed: number
  /** Taken down ones the PDS serves again: wanted again (the next fetch pass gets them). */
  restored: number
}

/** What `verify` found among the blobs a stored repo references. */
export interface BlobVerifyReport {
  /** Stored blobs re-hashed and found intact. */
  checked: number
  /** Their bytes. */
  bytes: number
  /** Damaged (did not hash to their CID) or missing, and refetched. */
  repaired: Array<{ cid: string, was: 'damaged' | 'missing' }>
  /** Damaged or missing, and not refetched (repair off, or every source failed). */
  failed: Array<{ cid: string, was: 'damaged' | 'missing' }>
  /** Damaged or missing, and the PDS no longer serves them: recorded as gone (taken down). */
  gone: string[]
}

/** Progress of a fetch pass. */
export interface BlobProgress {
  did: string
  /** Blobs stored so far by this pass. */
  blobs: number
  /** Bytes stored so far by this pass (partial downloads included). */
  blobBytes: number
}

export interface BlobMirrorComponents {
  store: MirrorStore
  fetcher: BlobFetcher
}

export interface BlobMirrorInit {
  /** Fetch blobs at all (references are counted either way). @default true */
  enabled?: boolean
  /** The largest blob fetched, in bytes. @default 104857600 (100 MiB) */
  maxBlobSize?: number
  /** Blobs downloaded (or asked about) at once per repo. @default 4 */
  concurrency?: number
  /**
   * Stored blobs a periodic re-check asks the repo's PDS about, per repo and round
   * ({@link BlobMirror.recheckStored}); 0 for none. A repo with more stored blobs
   * has them all asked about once per `recheckIntervalMs` × (blobs ÷ this).
   *
   * @default 25
   */
  recheckBlobs?: number
  /**
   * The least time between two such rounds of one repo.
   *
   * @default 3600000 (an hour, as the slow poll of a followed repo)
   */
  recheckIntervalMs?: number
}

export class BlobMirror {
  readonly #store: MirrorStore
  readonly #fetcher: BlobFetcher
  readonly enabled: boolean
  readonly maxBlobSize: number
  readonly #concurrency: number
  readonly #recheckBlobs: number
  readonly #recheckIntervalMs: number
  /** When each DID's blobs were last re-checked (Date.now()). */
  readonly #recheckedAt = new Map<string, number>()

  constructor (components: BlobMirrorComponents, init: BlobMirrorInit = {}) {
    this.#store = components.store
    this.#fetcher = components.fetcher
    this.enabled = init.enabled ?? true
    this.maxBlobSize = init.maxBlobSize ?? DEFAULT_MAX_BLOB_SIZE
    this.#concurrency = Math.max(1, init.concurrency ?? 4)
    this.#recheckBlobs = Math.max(0, init.recheckBlobs ?? DEFAULT_BLOB_RECHECK)
    this.#recheckIntervalMs = Math.max(0, init.recheckIntervalMs ?? 3_600_000)
  }

  /**
   * Fetches the blobs `did` references that are not stored (none when blobs are off
   * for the node or the pin). Failures are logged and counted, never thrown, but an
   * abort is.
   */
  async fetchWanted (did: string, options: { pds?: string, signal?: AbortSignal, onProgress?: (progress: BlobProgress) => void } = {}): Promise<BlobPassResult> {
    const result: BlobPassResult = { wanted: 0, fetched: { local: 0, bitswap: 0, pds: 0 }, bytes: 0, failed: 0, refused: 0 }
    if (!this.enabled || await this.#store.blobs.isOff(did)) return result
    const wanted = await this.#store.blobs.wanted(did)
    if (wanted.length === 0) return result
    const progress: BlobProgress = { did, blobs: 0, blobBytes: 0 }
    const release = await this.#store.beginWrite()
    try {
      await eachParallel(wanted, async ({ cid, size }) => {
        if (await this.#store.blobs.has(cid)) {
          await this.#store.blobs.fetched(did, cid)
          return
        }
        result.wanted++
        await this.#fetchOne(did, cid, size, result, progress, options)
      }, this.#concurrency)
    } finally {
      await release()
    }
    if (result.wanted > 0) log('%s: blobs: %d wanted, %d from pds, %d from bitswap, %d bytes; %d failed, %d refused', did, result.wanted, result.fetched.pds, result.fetched.bitswap, result.bytes, result.failed, result.refused)
    return result
  }
  /** Fetches one blob into the store, counting into `result`; failures are logged and recorded, never thrown (an abort is). The caller is a writer. */
  async #fetchOne (did: string, cid: CID, size: number | undefined, result: BlobPassResult, progress: BlobProgress, options: { pds?: string, signal?: AbortSignal, onProgress?: (progress: BlobProgress) => void }): Promise<void> {
    const blobs = this.#store.blobs
    let counted = 0
    try {
      const got = await this.#fetcher.fetch(cid, async (chunks) => await blobs.write(cid, chunks, { signal: options.signal }), {
        did,
        pds: options.pds,
        size,
        maxBytes: this.maxBlobSize,
        signal: options.signal,
        onBytes: (n) => {
          progress.blobBytes += n - counted
          counted = n
          options.onProgress?.({ ...progress })
        }
      })
      await blobs.fetched(did, cid)
      if (got.source === 'local' || got.source === 'bitswap' || got.source === 'pds') result.fetched[got.source]++
      result.bytes += got.bytes
      progress.blobs++
      options.onProgress?.({ ...progress })
    } catch (err) {
      if (options.signal?.aborted === true) throw err
      progress.blobBytes -= counted
      if (err instanceof BlobTooLargeError) {
        result.refused++
        log.error('%s: blob %c not mirrored: %d bytes, over the cap of %d (did=%s cid=%s size=%d)', did, cid, err.size, err.max, did, cid.toString(), err.size)
        await blobs.markGone(did, cid, { reason: 'too-large', at: new Date().toISOString(), size: err.size, max: err.max })
        return
      }
      const notFound = err instanceof AllSourcesFailedError ? err.errors.find(({ error }) => error instanceof PdsBlobNotFoundError)?.error : undefined
      if (notFound !== undefined) {
        result.refused++
        log.error('%s: blob %c is referenced but its PDS does not serve it (taken down or deleted): %s', did, cid, notFound.message)
        await blobs.markGone(did, cid, { reason: 'not-found', at: new Date().toISOString() })
        return
      }
      result.failed++
      log.error('%s: blob %c not fetched (asked again on the next sync): %e', did, cid, err)
    }
  }

  /**
   * The blob part of `verify`: re-hashes every stored blob `did` references,
   * streamed (a damaged copy is removed by the read), and finds those that should be
   * stored and are not (referenced, neither still to fetch nor gone). With `repair`
   * (the default) each of them is refetched through the blob chain, whatever the
   * pin's blob setting, as a fetch pass would; one the PDS no longer serves is
   * recorded as gone. A blob that fails here is wanted again, so the next sync
   * tries once more.
   */
  async verifyStored (did: string, options: { repair?: boolean, pds?: string, signal?: AbortSignal } = {}): Promise<BlobVerifyReport> {
    const { signal } = options
    const blobs = this.#store.blobs
    const report: BlobVerifyReport = { checked: 0, bytes: 0, repaired: [], failed: [], gone: [] }
    const skip = new Set([...(await blobs.gone(did)).keys(), ...(await blobs.wanted(did)).map(({ cid }) => cid.toString())])
    const bad: Array<{ cid: CID, was: 'damaged' | 'missing', size?: number }> = []
    let cursor: string | undefined
    while (true) {
      const page = await blobs.list(did, { cursor, limit: 500 })
      if (page.length === 0) break
      cursor = page[page.length - 1]
      for (const key of page) {
        signal?.throwIfAborted()
        if (skip.has(key)) continue
        const cid = CID.parse(key)
        const stream = await blobs.read(cid, { signal })
        if (stream === undefined) {
          log.error('%s: blob %c is missing from the store', did, cid)
          bad.push({ cid, was: 'missing' })
          continue
        }
        let bytes = 0
        try {
          for await (const chunk of stream.chunks) bytes += chunk.byteLength
          report.checked++
          report.bytes += bytes
        } catch (err) {
          if ((err as Error).name !== 'BlobMismatchError') throw err
          bad.push({ cid, was: 'damaged', size: stream.size })
        }
      }
    }
    if (bad.length === 0) return report
    if (options.repair === false) {
      for (const { cid, was } of bad) report.failed.push({ cid: cid.toString(), was })
    } else {
      const result: BlobPassResult = { wanted: 0, fetched: { local: 0, bitswap: 0, pds: 0 }, bytes: 0, failed: 0, refused: 0 }
      const progress: BlobProgress = { did, blobs: 0, blobBytes: 0 }
      const release = await this.#store.beginWrite()
      try {
        await eachParallel(bad, async ({ cid, was, size }) => {
          await this.#fetchOne(did, cid, size, result, progress, { pds: options.pds, signal })
          if (await blobs.has(cid)) {
            log('%s: refetched %s blob %c', did, was, cid)
            report.repaired.push({ cid: cid.toString(), was })
          } else if (await blobs.isGone(did, cid)) {
            report.gone.push(cid.toString())
          } else {
            report.failed.push({ cid: cid.toString(), was })
          }
        }, this.#concurrency)
      } finally {
        await release()
      }
    }
    // what is still not stored is fetched by the next sync's pass
    for (const { cid } of report.failed) await blobs.rewant(did, CID.parse(cid))
    return report
  }

  /**
   * Asks the DID's PDS whether it still serves each blob of `did` stored here (and
   * stops at the headers): one it no longer serves while a record references it
   * was taken down (or deleted), and is removed and recorded as gone. One recorded
   * as taken down that the PDS serves again is wanted again. For explicit
   * checks (`atmirror mirror` of an unchanged repo); a daemon's re-checks use
   * {@link BlobMirror.recheckStored}, which is bounded.
   */
  async checkStored (did: string, options: { pds?: string, signal?: AbortSignal } = {}): Promise<BlobCheckResult> {
    return await this.#probe(did, [...(await this.#store.blobs.refs(did)).keys()], options)
  }

  /**
   * A bounded {@link BlobMirror.checkStored}, for the daemon's periodic re-checks:
   * at most once per `recheckIntervalMs` for a DID, it asks the PDS about the next
   * `recheckBlobs` blobs the repo references (in CID order, from where the last
   * round stopped, kept in the index, wrapping round), so every stored blob is
   * asked about in turn at a bounded rate and nothing is downloaded. Why probes
   * and not `listBlobs`: the reference PDS keeps listing a blob it has taken down
   * (listBlobs reads the record references), only `getBlob` refuses it.
   */
  async recheckStored (did: string, options: { pds?: string, signal?: AbortSignal } = {}): Promise<BlobCheckResult> {
    const none = { checked: 0, removed: 0, restored: 0 }
    if (this.#recheckBlobs === 0) return none
    const last = this.#recheckedAt.get(did)
    if (last !== undefined && Date.now() - last < this.#recheckIntervalMs) return none
    this.#recheckedAt.set(did, Date.now())
    const blobs = this.#store.blobs
    const cursor = await blobs.probeCursor(did)
    const round = await blobs.list(did, { cursor, limit: this.#recheckBlobs })
    if (round.length < this.#recheckBlobs && cursor !== undefined) {
      // past the last one: on from the first, up to where this round began
      round.push(...(await blobs.list(did, { limit: this.#recheckBlobs - round.length })).filter(cid => cid <= cursor))
    }
    if (round.length === 0) return none
    const out = await this.#probe(did, round, options)
    await blobs.setProbeCursor(did, round[round.length - 1])
    if (out.checked > 0) log('%s: asked its PDS about %d blobs: %d removed (taken down), %d served again', did, out.checked, out.removed, out.restored)
    return out
  }

  async #probe (did: string, cids: readonly string[], options: { pds?: string, signal?: AbortSignal }): Promise<BlobCheckResult> {
    const pds = this.#fetcher.source('pds')
    const out = { checked: 0, removed: 0, restored: 0 }
    if (pds?.has === undefined) return out
    const has = pds.has.bind(pds)
    const blobs = this.#store.blobs
    await eachParallel(cids, async (key) => {
      const cid = CID.parse(key)
      const gone = await blobs.goneOf(did, cid)
      // over the cap: nothing to ask; stored for no one: nothing to check
      if (gone?.reason === 'too-large' || (gone === undefined && !await blobs.has(cid))) return
      out.checked++
      let served: boolean
      try {
        served = await has(cid, { did, pds: options.pds, maxBytes: this.maxBlobSize, signal: options.signal })
      } catch (err) {
        if (options.signal?.aborted === true) throw err
        log('%s: cannot check blob %c at its PDS: %e', did, cid, err)
        return
      }
      if (gone !== undefined) {
        if (!served) return
        // taken down before, served again: the takedown was reversed
        log('%s: blob %c is served by its PDS again; fetching it again', did, cid)
        await blobs.restore(did, cid)
        out.restored++
        return
      }
      if (served) return
      log.error('%s: blob %c is referenced but its PDS no longer serves it (taken down or deleted); removing it', did, cid)
      await blobs.markGone(did, cid, { reason: 'not-found', at: new Date().toISOString() })
      out.removed++
    }, this.#concurrency)
    return out
  }
}

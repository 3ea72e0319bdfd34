/**
 * Where mirrored blobs live, and the index that says which repos reference them.
 *
 * Storage is routed by size. A blob up to `fileThreshold` (64 KiB by default) is a
 * block like any other and goes into the block store (a file system block is at
 * least 4 KiB, a packed store is made for small values); a larger one gets a file
 * of its own under `<data>/blobs/`, named by its CID and sharded like the blocks
 * (`blobs/<next-to-last two characters>/<cid>`), where a file's few KiB of slack
 * are a few percent at most, and a packed store never copies it around. A download
 * is held in memory only while it is below the threshold; past it, it goes to a
 * temp file (`blobs/.tmp/<pid>-<n>`), fsynced when the store's fsync option is on,
 * and is renamed into place only once its hash has matched (see blob-fetch.ts). A
 * process killed mid-download leaves at most a temp file, and every temp file is
 * deleted when the store opens (the data directory is locked to one process, which
 * has started no download yet).
 *
 * The index, in the datastore, kept per repo by the record references of its
 * current commit (src/mirror/blobs.ts computes them), and written in the same batch
 * as the repo's advance or release:
 *
 *   /atmirror/blobs/refs/<did>/<cid>   → references in the DID's current repo (decimal)
 *   /atmirror/blobs/held/<cid>/<did>   → '' (the same, by blob: "does anyone hold it")
 *   /atmirror/blobs/want/<did>/<cid>   → the size the record declares ('' unknown): to fetch
 *   /atmirror/blobs/gone/<did>/<cid>   → why it is not fetched (JSON: taken down, over the cap)
 *   /atmirror/blobs/gc/<cid>           → '' (lost a reference; collected when no one holds it)
 *   /atmirror/blobs/repo/<did>         → the commit the DID's references describe
 *   /atmirror/blobs/off/<did>          → '' (pinned with blobs off)
 *   /atmirror/blobs/size/<cid>         → a stored blob's size (decimal; for disk usage without reading it)
 *   /atmirror/blobs/probe/<did>        → the last blob a bounded takedown re-check asked its PDS about (blobs.ts)
 *
 * Collection runs with the block collection (MirrorStore, never while a writer is
 * in: the blob fetch pass enters as one), so a blob is never deleted under a
 * download that has just found it missing or present.
 */
import { createReadStream, existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs'
import { open as openFile, rename, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { logger } from '@libp2p/logger'
import { CID } from 'multiformats/cid'
import { hashChecked, type BlobStream } from '../blocks/blob-fetch.ts'
import { RAW } from '../repo/cid.ts'
import { wholeBytes } from './blockstore.ts'
import { shardedFilesUsage } from './fs-blockstore.ts'

const log = logger('atmirror:mirror:blobs')

/** Blobs up to this size are blocks in the block store; larger ones are files. */
export const DEFAULT_BLOB_FILE_THRESHOLD = 64 * 1024

const PREFIX = '/atmirror/blobs'
const EMPTY = new Uint8Array(0)
const utf8 = new TextEncoder()
const fromUtf8 = new TextDecoder()
const CHUNK = 500

/** Datastore keys of the blob index. */
export const blobKeys = {
  refs: (did: string, cid: string) => `${PREFIX}/refs/${did}/${cid}`,
  refsPrefix: (did: string) => `${PREFIX}/refs/${did}/`,
  held: (cid: string, did: string) => `${PREFIX}/held/${cid}/${did}`,
  heldPrefix: (cid: string) => `${PREFIX}/held/${cid}/`,
  want: (did: string, cid: string) => `${PREFIX}/want/${did}/${cid}`,
  wantPrefix: (did: string) => `${PREFIX}/want/${did}/`,
  gone: (did: string, cid: string) => `${PREFIX}/gone/${did}/${cid}`,
  gonePrefix: (did: string) => `${PREFIX}/gone/${did}/`,
  candidate: (cid: string) => `${PREFIX}/gc/${cid}`,
  candidatePrefix: `${PREFIX}/gc/`,
  repo: (did: string) => `${PREFIX}/repo/${did}`,
  off: (did: string) => `${PREFIX}/off/${did}`,
  size: (cid: string) => `${PREFIX}/size/${cid}`,
  probe: (did: string) => `${PREFIX}/probe/${did}`
}

/** The datastore's LevelDB, as far as the index uses it. */
export interface BlobIndexDb {
  get: (key: string) => Promise<Uint8Array | undefined>
  getMany: (keys: string[]) => Promise<Array<Uint8Array | undefined>>
  put: (key: string, value: Uint8Array) => Promise<void>
  del: (key: string) => Promise<void>
  batch: () => { put: (key: string, value: Uint8Array) => unknown, del: (key: string) => unknown, write: () => Promise<void>, close: () => Promise<void> }
  keys: (options: { gte: string, lt: string, limit?: number }) => { all: () => Promise<string[]>, [Symbol.asyncIterator]: () => AsyncIterator<string> }
  iterator: (options: { gte: string, lt: string }) => AsyncIterable<[string, Uint8Array]>
}

/** A batch being built (the repo's advance or release). */
export interface BlobPlanBatch {
  put: (key: string, value: Uint8Array) => unknown
  del: (key: string) => unknown
}

/** The block store, as far as small blobs use it. */
export interface SmallBlobBlocks {
  put: (cid: CID, bytes: Uint8Array) => Promise<unknown> | unknown
  has: (cid: CID) => Promise<boolean> | boolean
  get: (cid: CID) => AsyncIterable<Uint8Array> | Iterable<Uint8Array>
  delete: (cid: CID) => Promise<void> | void
}

/** How a repo's blob references change: per blob CID (string), the change and the size a record declares. */
export type BlobDelta = Map<string, { change: number, size?: number }>

export interface BlobStoreComponents {
  db: BlobIndexDb
  blocks: SmallBlobBlocks
  /** Whether a repo holds a block of the same multihash (then a small blob's block stays). */
  blockHeld: (cid: CID) => Promise<boolean>
}

export interface BlobStoreInit {
  /** fsync a blob file before it is renamed into place. @default false */
  fsync?: boolean
  /** Blobs up to this many bytes go into the block store. @default 65536 */
  fileThreshold?: number
}

/** Why a referenced blob is not fetched. */
export interface GoneBlob {
  reason: 'not-found' | 'too-large'
  at: string
  size?: number
  max?: number
}

/** A stored blob's size and where it is. */
export interface BlobStat {
  size: number
  in: 'file' | 'blocks'
}

export class BlobStore {
  readonly dir: string
  readonly #db: BlobIndexDb
  readonly #blocks: SmallBlobBlocks
  readonly #blockHeld: (cid: CID) => Promise<boolean>
  readonly #fsync: boolean
  readonly #threshold: number
  readonly #tmpDir: string
  #tmpCounter = 0

  constructor (dir: string, components: BlobStoreComponents, init: BlobStoreInit = {}) {
    this.dir = dir
    this.#db = components.db
    this.#blocks = components.blocks
    this.#blockHeld = components.blockHeld
    this.#fsync = init.fsync ?? false
    this.#threshold = init.fileThreshold ?? DEFAULT_BLOB_FILE_THRESHOLD
    this.#tmpDir = join(dir, '.tmp')
  }

  /** Creates the directory and deletes the temp files a killed download left. */
  async open (): Promise<void> {
    mkdirSync(this.#tmpDir, { recursive: true })
    let removed = 0
    for (const name of readdirSync(this.#tmpDir)) {
      rmSync(join(this.#tmpDir, name), { force: true })
      removed++
    }
    if (removed > 0) log('removed %d partial blob downloads left by an earlier process', removed)
  }

  /** The file a large blob lives in. */
  pathOf (cid: CID): string {
    const name = cid.toString()
    return join(this.dir, name.slice(-3, -1), name)
  }

  /** Whether the blob is stored, how large, and where. */
  async stat (cid: CID): Promise<BlobStat | undefined> {
    try {
      return { size: statSync(this.pathOf(cid)).size, in: 'file' }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    const raw = asRaw(cid)
    if (!await this.#blocks.has(raw)) return undefined
    // the size recorded when it was stored, else its bytes (a block of the same hash stored as a block)
    const recorded = await this.#db.get(blobKeys.size(raw.toString()))
    if (recorded !== undefined) return { size: Number(fromUtf8.decode(recorded)), in: 'blocks' }
    const bytes = await this.#blockBytes(raw)
    return bytes === undefined ? undefined : { size: bytes.byteLength, in: 'blocks' }
  }

  async has (cid: CID): Promise<boolean> {
    return existsSync(this.pathOf(cid)) || await this.#blocks.has(asRaw(cid))
  }

  async #blockBytes (cid: CID): Promise<Uint8Array | undefined> {
    try {
      return await wholeBytes(this.#blocks.get(cid))
    } catch (err) {
      if ((err as Error).name === 'NotFoundError') return undefined
      throw err
    }
  }

  /**
   * The stored blob as a stream, hash-checked as it is read: the stream throws
   * BlobMismatchError at its end when the stored bytes do not match (and the damaged
   * copy is removed, so it is never served again). `undefined` when not stored.
   */
  async read (cid: CID, options: { signal?: AbortSignal } = {}): Promise<BlobStream | undefined> {
    const raw = asRaw(cid)
    const path = this.pathOf(raw)
    let size: number
    let chunks: AsyncIterable<Uint8Array>
    try {
      size = statSync(path).size
      // opened when read: an answer that is never read (a HEAD) holds no file
      chunks = (async function * () { yield * createReadStream(path, { signal: options.signal, highWaterMark: 256 * 1024 }) })()
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      const bytes = await this.#blockBytes(raw)
      if (bytes === undefined) return undefined
      size = bytes.byteLength
      chunks = (async function * () { yield bytes })()
    }
    const checked = hashChecked(raw, chunks, { maxBytes: Number.MAX_SAFE_INTEGER, source: 'local' })
    const remove = async (): Promise<void> => { await this.#remove(raw) }
    return {
      size,
      chunks: (async function * () {
        try {
          yield * checked
        } catch (err) {
          if ((err as Error).name === 'BlobMismatchError') {
            log.error('blob %c is damaged on disk (%s); removed it so it is never served', raw, (err as Error).message)
            await remove()
          }
          throw err
        }
      })()
    }
  }

  /** The whole blob, hash-checked, when it is stored and at most `maxBytes` (for Bitswap). */
  async getBytes (cid: CID, maxBytes: number, options: { signal?: AbortSignal } = {}): Promise<Uint8Array | undefined> {
    const stat = await this.stat(cid)
    if (stat === undefined || stat.size > maxBytes) return undefined
    const stream = await this.read(cid, options)
    if (stream === undefined) return undefined
    try {
      return await wholeBytes(stream.chunks)
    } catch (err) {
      if ((err as Error).name === 'BlobMismatchError') return undefined
      throw err
    }
  }

  /**
   * Stores a blob from hash-checked chunks (blob-fetch.ts's `hashChecked`, which
   * throws before its end when the bytes do not match): kept in memory up to the
   * threshold, in a temp file past it; put or renamed into place only once the
   * chunks have ended without an error.
   */
  async write (cid: CID, chunks: AsyncIterable<Uint8Array>, options: { signal?: AbortSignal } = {}): Promise<BlobStat> {
    const raw = asRaw(cid)
    let buffered: Uint8Array[] = []
    let size = 0
    let file: Awaited<ReturnType<typeof openFile>> | undefined
    let tmp: string | undefined
    try {
      for await (const chunk of chunks) {
        options.signal?.throwIfAborted()
        size += chunk.byteLength
        if (file === undefined) {
          buffered.push(chunk)
          if (size <= this.#threshold) continue
          tmp = join(this.#tmpDir, `${process.pid}-${++this.#tmpCounter}`)
          file = await openFile(tmp, 'w')
          for (const part of buffered) await file.write(part)
          buffered = []
        } else {
          await file.write(chunk)
        }
      }
      if (file === undefined) {
        await this.#blocks.put(raw, buffered.length === 1 ? buffered[0] : Buffer.concat(buffered))
        await this.#db.put(blobKeys.size(raw.toString()), utf8.encode(String(size)))
        return { size, in: 'blocks' }
      }
      if (this.#fsync) await file.sync()
      await file.close()
      file = undefined
      const path = this.pathOf(raw)
      mkdirSync(join(path, '..'), { recursive: true })
      await rename(tmp as string, path)
      tmp = undefined
      await this.#db.put(blobKeys.size(raw.toString()), utf8.encode(String(size)))
      return { size, in: 'file' }
    } finally {
      await file?.close().catch(() => {})
      if (tmp !== undefined) await unlink(tmp).catch(() => {})
    }
  }

  /** Deletes a stored blob (file, or block unless a repo holds a block of the same hash). */
  async #remove (cid: CID): Promise<boolean> {
    let removed = false
    try {
      await unlink(this.pathOf(cid))
      removed = true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    if (await this.#blocks.has(cid) && !await this.#blockHeld(cid)) {
      await this.#blocks.delete(cid)
      removed = true
    }
    await this.#db.del(blobKeys.size(cid.toString()))
    return removed
  }

  // --- the index --------------------------------------------------------------

  /**
   * Adds to `batch` what applies `delta` to `did`'s references and records that
   * they now describe `commit`: a blob newly referenced is wanted (fetched by the
   * next pass), one no longer referenced by the DID becomes a candidate. Returns
   * the candidates added.
   */
  async planAdvance (did: string, delta: BlobDelta, commit: string, batch: BlobPlanBatch): Promise<number> {
    let candidates = 0
    const entries = [...delta].filter(([, { change }]) => change !== 0)
    for (let i = 0; i < entries.length; i += CHUNK) {
      const chunk = entries.slice(i, i + CHUNK)
      const current = await this.#db.getMany(chunk.map(([cid]) => blobKeys.refs(did, cid)))
      for (let j = 0; j < chunk.length; j++) {
        const [cid, { change, size }] = chunk[j]
        const before = current[j] === undefined ? 0 : Number(fromUtf8.decode(current[j]))
        const after = Math.max(0, before + change)
        if (after > 0) {
          batch.put(blobKeys.refs(did, cid), utf8.encode(String(after)))
          if (before === 0) {
            batch.put(blobKeys.held(cid, did), EMPTY)
            batch.put(blobKeys.want(did, cid), utf8.encode(size === undefined ? '' : String(size)))
          }
        } else if (before > 0) {
          batch.del(blobKeys.refs(did, cid))
          batch.del(blobKeys.held(cid, did))
          batch.del(blobKeys.want(did, cid))
          batch.del(blobKeys.gone(did, cid))
          batch.put(blobKeys.candidate(cid), EMPTY)
          candidates++
        }
      }
    }
    batch.put(blobKeys.repo(did), utf8.encode(commit))
    return candidates
  }

  /** Adds to `batch` what drops every reference of `did` (unpin, takedown); `unpin` also forgets its blob setting. */
  async planRelease (did: string, batch: BlobPlanBatch, options: { unpin?: boolean } = {}): Promise<number> {
    let candidates = 0
    for (const cid of await this.#keysAfter(blobKeys.refsPrefix(did))) {
      batch.del(blobKeys.refs(did, cid))
      batch.del(blobKeys.held(cid, did))
      batch.put(blobKeys.candidate(cid), EMPTY)
      candidates++
    }
    for (const cid of await this.#keysAfter(blobKeys.wantPrefix(did))) batch.del(blobKeys.want(did, cid))
    for (const cid of await this.#keysAfter(blobKeys.gonePrefix(did))) batch.del(blobKeys.gone(did, cid))
    batch.del(blobKeys.repo(did))
    batch.del(blobKeys.probe(did))
    if (options.unpin === true) batch.del(blobKeys.off(did))
    return candidates
  }

  async #keysAfter (prefix: string, limit?: number): Promise<string[]> {
    const keys = await this.#db.keys({ gte: prefix, lt: prefix + '\xff', limit }).all()
    return keys.map(key => key.slice(prefix.length))
  }

  /** The commit `did`'s references describe, if they were computed. */
  async describedCommit (did: string): Promise<string | undefined> {
    const value = await this.#db.get(blobKeys.repo(did))
    return value === undefined ? undefined : fromUtf8.decode(value)
  }

  /** `did`'s current references: blob CID → count. */
  async refs (did: string): Promise<Map<string, number>> {
    const out = new Map<string, number>()
    const prefix = blobKeys.refsPrefix(did)
    for await (const [key, value] of this.#db.iterator({ gte: prefix, lt: prefix + '\xff' })) {
      out.set(key.slice(prefix.length), Number(fromUtf8.decode(value)))
    }
    return out
  }

  /** Blobs `did` references, in CID order, from after `cursor` (for listBlobs). */
  async list (did: string, options: { cursor?: string, limit?: number } = {}): Promise<string[]> {
    const prefix = blobKeys.refsPrefix(did)
    const gte = options.cursor === undefined ? prefix : `${prefix}${options.cursor}\x00`
    const keys = await this.#db.keys({ gte, lt: prefix + '\xff', limit: options.limit ?? 500 }).all()
    return keys.map(key => key.slice(prefix.length))
  }

  /** Where the next bounded takedown re-check of `did`'s blobs starts: after this blob CID (none: at the first). */
  async probeCursor (did: string): Promise<string | undefined> {
    const value = await this.#db.get(blobKeys.probe(did))
    return value === undefined ? undefined : fromUtf8.decode(value)
  }

  async setProbeCursor (did: string, cid: string): Promise<void> {
    await this.#db.put(blobKeys.probe(did), utf8.encode(cid))
  }

  /** Whether `did`'s current repo references the blob. */
  async isReferencedBy (did: string, cid: CID): Promise<boolean> {
    return await this.#db.get(blobKeys.refs(did, asRaw(cid).toString())) !== undefined
  }

  /** The DIDs whose current repo references the blob (any codec of its multihash). */
  async * holders (cid: CID): AsyncGenerator<string> {
    const prefix = blobKeys.heldPrefix(asRaw(cid).toString())
    for await (const key of this.#db.keys({ gte: prefix, lt: prefix + '\xff' })) yield key.slice(prefix.length)
  }

  /** The blobs `did` references that are still to be fetched, with the size its records declare. */
  async wanted (did: string): Promise<Array<{ cid: CID, size?: number }>> {
    const prefix = blobKeys.wantPrefix(did)
    const out: Array<{ cid: CID, size?: number }> = []
    for await (const [key, value] of this.#db.iterator({ gte: prefix, lt: prefix + '\xff' })) {
      const text = fromUtf8.decode(value)
      const cid = CID.parse(key.slice(prefix.length))
      out.push(text === '' ? { cid } : { cid, size: Number(text) })
    }
    return out
  }

  /** A wanted blob is stored (or was found stored): no longer wanted. */
  async fetched (did: string, cid: CID): Promise<void> {
    await this.#db.del(blobKeys.want(did, cid.toString()))
  }

  /** A blob `did` references is to be fetched again (verify found it damaged or missing). */
  async rewant (did: string, cid: CID): Promise<void> {
    await this.#db.put(blobKeys.want(did, asRaw(cid).toString()), EMPTY)
  }

  /**
   * A referenced blob will not be fetched: taken down at the PDS, or over the cap.
   * A stored copy of one taken down is removed, unless another repo references the
   * same bytes and has not lost them too (then they stay, served for that repo
   * alone: never as `did`'s).
   */
  async markGone (did: string, cid: CID, gone: GoneBlob): Promise<void> {
    const batch = this.#db.batch()
    batch.del(blobKeys.want(did, cid.toString()))
    batch.put(blobKeys.gone(did, cid.toString()), utf8.encode(JSON.stringify(gone)))
    await batch.write()
    if (gone.reason !== 'not-found') return
    for await (const holder of this.holders(cid)) {
      if (holder !== did && !await this.isGone(holder, cid)) {
        log('%s: blob %c is no longer served by its PDS; kept for %s, which references it too', did, cid, holder)
        return
      }
    }
    if (await this.#remove(cid)) log('%s: removed blob %c, which its PDS no longer serves', did, cid)
  }

  /** A blob that was gone for `did` is served by its PDS again (a takedown reversed): wanted again. */
  async restore (did: string, cid: CID): Promise<void> {
    const batch = this.#db.batch()
    batch.del(blobKeys.gone(did, cid.toString()))
    batch.put(blobKeys.want(did, cid.toString()), EMPTY)
    await batch.write()
  }

  /** Why the blob is gone for `did`, if it is. */
  async goneOf (did: string, cid: CID): Promise<GoneBlob | undefined> {
    const value = await this.#db.get(blobKeys.gone(did, asRaw(cid).toString()))
    return value === undefined ? undefined : JSON.parse(fromUtf8.decode(value)) as GoneBlob
  }

  /** Whether the blob is gone for `did` (taken down at its PDS, or over the cap): never served as `did`'s. */
  async isGone (did: string, cid: CID): Promise<boolean> {
    return await this.#db.get(blobKeys.gone(did, asRaw(cid).toString())) !== undefined
  }

  /** Blobs `did` references that will not be fetched, and why. */
  async gone (did: string): Promise<Map<string, GoneBlob>> {
    const out = new Map<string, GoneBlob>()
    const prefix = blobKeys.gonePrefix(did)
    for await (const [key, value] of this.#db.iterator({ gte: prefix, lt: prefix + '\xff' })) {
      out.set(key.slice(prefix.length), JSON.parse(fromUtf8.decode(value)) as GoneBlob)
    }
    return out
  }

  /** Whether `did` was pinned with blobs off. */
  async isOff (did: string): Promise<boolean> {
    return await this.#db.get(blobKeys.off(did)) !== undefined
  }

  /** Turns blob mirroring off (or back on) for one pinned repo. */
  async setOff (did: string, off: boolean): Promise<void> {
    if (off) await this.#db.put(blobKeys.off(did), EMPTY)
    else await this.#db.del(blobKeys.off(did))
  }

  /** Blobs `did` references and those of them stored here, with their bytes (from the sizes recorded when stored, nothing read). */
  async usage (did: string): Promise<{ referenced: number, stored: number, bytes: number }> {
    const cids = await this.#keysAfter(blobKeys.refsPrefix(did))
    let stored = 0
    let bytes = 0
    for (let i = 0; i < cids.length; i += CHUNK) {
      for (const value of await this.#db.getMany(cids.slice(i, i + CHUNK).map(cid => blobKeys.size(cid)))) {
        if (value === undefined) continue
        stored++
        bytes += Number(fromUtf8.decode(value))
      }
    }
    return { referenced: cids.length, stored, bytes }
  }

  /** The blob files (large blobs) and their bytes: a full scan, for metrics. */
  async fileUsage (options: { signal?: AbortSignal } = {}): Promise<{ files: number, bytes: number }> {
    return await shardedFilesUsage(this.dir, options)
  }

  async hasCandidates (): Promise<boolean> {
    return (await this.#keysAfter(blobKeys.candidatePrefix, 1)).length > 0
  }

  /**
   * Deletes every candidate blob no repo references any more, and forgets the
   * candidates. Must not overlap a blob download (MirrorStore runs it when no
   * writer is in).
   */
  async collect (): Promise<{ checked: number, deleted: number }> {
    let checked = 0
    let deleted = 0
    while (true) {
      const cids = await this.#keysAfter(blobKeys.candidatePrefix, CHUNK)
      if (cids.length === 0) break
      const batch = this.#db.batch()
      for (const cid of cids) {
        checked++
        batch.del(blobKeys.candidate(cid))
        if ((await this.#keysAfter(blobKeys.heldPrefix(cid), 1)).length > 0) continue
        try {
          if (await this.#remove(CID.parse(cid))) deleted++
        } catch (err) {
          log.error('cannot delete blob %s: %e', cid, err)
        }
      }
      await batch.write()
    }
    if (checked > 0) log('blobs collected: %d candidates checked, %d deleted', checked, deleted)
    return { checked, deleted }
  }
}

/** The raw-codec CID of the same multihash (blobs are named so whatever codec a peer asks with). */
export function asRaw (cid: CID): CID {
  return cid.code === RAW && cid.version === 1 ? cid : CID.createV1(RAW, cid.multihash)
}

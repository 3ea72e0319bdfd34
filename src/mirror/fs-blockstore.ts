/**
 * The `fs` blockstore kind (`--blockstore fs`, and every data directory made before
 * the packed store): blockstore-fs's layout (one file per block, sharded by
 * the next-to-last two base32 characters of the multihash) with a write path that
 * the mirror can trust across crashes and a read path that is cheap per block.
 *
 * - Every `put` hash-checks the bytes against the CID first (verifyBlock), whoever
 *   calls it: the syncer, the fetch chain, or Helia's bitswap.
 * - A block is written to a temporary file with a unique name (`.<pid>-<n>.tmp`,
 *   next to where the block goes) and renamed into place, so a block file is either
 *   absent or complete, even when the process is killed mid-write or two writers
 *   store the same block at once. (blockstore-fs names its temp file after the
 *   block, so two concurrent puts of one CID can leave a truncated file behind if
 *   the process dies at the wrong moment.) Temp files go in the shard directory, not
 *   one shared directory: every create and rename in one directory serialises on
 *   that directory, which measured 2× slower.
 * - `<blocks>/.open` marks a store in use; when `open` finds it, the last process
 *   did not close the store (it was killed), and the shard directories are swept
 *   for its temp files. A clean start costs nothing.
 * - Single reads and writes are synchronous: repo blocks are a few hundred bytes,
 *   and for files that small the thread-pool round trips of the async API cost
 *   more than the work. Bulk writes (`putVerified`, what a sync stores) are the
 *   exception: creating a file costs the kernel far more than writing a few hundred
 *   bytes into it (measured: creates took ~40% of a peer-to-peer mirror's main
 *   thread), so they go through the thread pool, a bounded number at once, and the
 *   event loop keeps serving the network meanwhile. Either way a block file is
 *   written under a temporary name and renamed into place only once complete.
 * - Shard directories are created once per process, not once per put.
 *
 * Any FsBlockstore (and Helia) can open the same directory.
 */
import { close, closeSync, existsSync, fsync, open as openFile, readdir, rename, stat, unlink, write, fsyncSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, unlinkSync, writeFileSync, writeSync } from 'node:fs'
import type { Dirent, Stats } from 'node:fs'
import { join } from 'node:path'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { FsBlockstore } from 'blockstore-fs'
import { NextToLast } from 'blockstore-fs/sharding'
import type { CID } from 'multiformats/cid'
import type { AbortOptions } from '@libp2p/interface'
import type { InputPair, Pair } from 'interface-blockstore'
import { eachParallel } from '../blocks/parallel.ts'
import type { Block } from '../repo/block-store.ts'
import { verifyBlock } from '../repo/cid.ts'
import { blockFilePath, readBlockFile } from './block-file.ts'
import { allocatedBytes } from './disk-usage.ts'
import { getManyOrThrow, getOrThrow, wholeBytes, type BlockstoreUsage, type MirrorBlockstore, type MirrorBlockstoreInit } from './blockstore.ts'

const OPEN_MARKER = '.open'
/** Temp files: `.<pid>-<n>.tmp` in a shard directory. */
const TMP_FILE = /^\.\d+-\d+\.tmp$/

export class FsMirrorBlockstore extends FsBlockstore implements MirrorBlockstore {
  readonly kind = 'fs'
  readonly #sharding: NextToLast
  readonly #slice: number
  readonly #fsync: boolean
  readonly #writers: number
  readonly #dirs = new Set<string>()
  #tmpCounter = 0

  constructor (location: string, init: MirrorBlockstoreInit = {}) {
    const sharding = new NextToLast()
    super(location, { shardingStrategy: sharding })
    this.#sharding = sharding
    this.#slice = Math.max(1, init.slice ?? 64)
    this.#fsync = init.fsync ?? false
    this.#writers = Math.max(1, init.writers ?? 16)
  }

  override async open (): Promise<void> {
    await super.open()
    const marker = join(this.path, OPEN_MARKER)
    // Temp files of a killed writer are garbage; the data directory lock (held by
    // whoever opens the store) guarantees nobody else is writing one right now, and
    // this process's writes are synchronous, so none of its own is ever pending.
    if (existsSync(marker)) await this.#sweepTempFiles()
    writeFileSync(marker, `${process.pid}\n`)
  }

  override async close (): Promise<void> {
    rmSync(join(this.path, OPEN_MARKER), { force: true })
    await super.close()
  }

  async #sweepTempFiles (): Promise<number> {
    let removed = 0
    for (const shard of readdirSync(this.path)) {
      if (shard.startsWith('.')) continue
      let names: string[]
      try {
        names = readdirSync(join(this.path, shard))
      } catch {
        continue // not a directory
      }
      for (const name of names) {
        if (!TMP_FILE.test(name)) continue
        rmSync(join(this.path, shard, name), { force: true })
        removed++
      }
      await nextTurn()
    }
    return removed
  }

  /** The file a block lives in. */
  pathOf (cid: CID): string {
    return blockFilePath(this.path, cid)
  }

  override async put (cid: CID, value: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>, options: AbortOptions = {}): Promise<CID> {
    const bytes = await wholeBytes(value)
    options.signal?.throwIfAborted()
    verifyBlock(cid, bytes)
    this.#write(cid, bytes)
    return cid
  }

  /**
   * Writes blocks whose bytes the caller has just hash-checked (verifyBlock),
   * `writers` files at once on the thread pool. Resolves (or rejects, with the
   * first error) only once no write is under way any more: every block is then
   * either complete in its place or absent. Everything else goes through `put`.
   */
  async putVerified (blocks: readonly Block[], options: AbortOptions = {}): Promise<void> {
    await eachParallel(blocks, async (block) => {
      options.signal?.throwIfAborted()
      await this.#writeAsync(block.cid, block.bytes)
    }, this.#writers)
  }

  #shardDir (dir: string): void {
    if (this.#dirs.has(dir)) return
    mkdirSync(join(this.path, dir), { recursive: true })
    this.#dirs.add(dir)
  }

  async #writeAsync (cid: CID, bytes: Uint8Array): Promise<void> {
    const { dir, file } = this.#sharding.encode(cid)
    this.#shardDir(dir)
    const tmp = join(this.path, dir, `.${process.pid}-${++this.#tmpCounter}.tmp`)
    try {
      const fd = await fsCall<number>(done => { openFile(tmp, 'w', done) })
      try {
        let offset = 0
        while (offset < bytes.byteLength) offset += await fsCall<number>(done => { write(fd, bytes, offset, bytes.byteLength - offset, null, done) })
        if (this.#fsync) await fsCall<void>(done => { fsync(fd, done) })
      } finally {
        await fsCall<void>(done => { close(fd, done) })
      }
      await fsCall<void>(done => { rename(tmp, join(this.path, dir, file), done) })
    } catch (err) {
      await fsCall<void>(done => { unlink(tmp, done) }).catch(() => {})
      throw err
    }
  }

  #write (cid: CID, bytes: Uint8Array): void {
    const { dir, file } = this.#sharding.encode(cid)
    this.#shardDir(dir)
    const tmp = join(this.path, dir, `.${process.pid}-${++this.#tmpCounter}.tmp`)
    try {
      const fd = openSync(tmp, 'w')
      try {
        let offset = 0
        while (offset < bytes.byteLength) offset += writeSync(fd, bytes, offset)
        if (this.#fsync) fsyncSync(fd)
      } finally {
        closeSync(fd)
      }
      renameSync(tmp, join(this.path, dir, file))
    } catch (err) {
      try { unlinkSync(tmp) } catch {}
      throw err
    }
  }

  override async * putMany (source: Iterable<InputPair> | AsyncIterable<InputPair>, options: AbortOptions = {}): AsyncGenerator<CID> {
    let n = 0
    for await (const { cid, bytes } of source) {
      await this.put(cid, bytes, options)
      if (++n % this.#slice === 0) await nextTurn()
      yield cid
    }
  }

  /** The block's bytes in one piece, or `undefined` when it is not stored. */
  getBytesSync (cid: CID): Uint8Array | undefined {
    return readBlockFile(this.path, cid)
  }

  /** The block's bytes in one piece, or `undefined` when it is not stored. */
  async getBytes (cid: CID, options: AbortOptions = {}): Promise<Uint8Array | undefined> {
    options.signal?.throwIfAborted()
    return this.getBytesSync(cid)
  }

  hasSync (cid: CID): boolean {
    return existsSync(this.pathOf(cid))
  }

  override async has (cid: CID, options: AbortOptions = {}): Promise<boolean> {
    options.signal?.throwIfAborted()
    return this.hasSync(cid)
  }

  override async * get (cid: CID, options: AbortOptions = {}): AsyncGenerator<Uint8Array> {
    yield * getOrThrow(async (c, o) => await this.getBytes(c, o), cid, options)
  }

  override async * getMany (source: Iterable<CID> | AsyncIterable<CID>, options: AbortOptions = {}): AsyncGenerator<Pair> {
    yield * getManyOrThrow(async (c, o) => await this.getBytes(c, o), source, this.#slice, options)
  }

  /** Bytes allocated on disk for the block files (st_blocks, as `du` counts them). */
  async diskUsage (): Promise<number> {
    return await allocatedBytes(this.path)
  }

  /**
   * Deletes block files, `writers` at once on the thread pool, as `putVerified`
   * writes them: removing what a sync left costs about what writing it did (one by
   * one on the main thread, each unlink waits out the disk's latency). Absent files
   * are skipped. Resolves with how many files were deleted.
   */
  async deleteBlocks (cids: readonly CID[], options: AbortOptions = {}): Promise<number> {
    let deleted = 0
    await eachParallel(cids, async (cid) => {
      options.signal?.throwIfAborted()
      try {
        await fsCall<void>(done => { unlink(this.pathOf(cid), done) })
        deleted++
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      }
    }, this.#writers)
    return deleted
  }

  override async delete (cid: CID, options: AbortOptions = {}): Promise<void> {
    options.signal?.throwIfAborted()
    try {
      unlinkSync(this.pathOf(cid))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }

  /**
   * How many blocks are stored and their bytes: a full scan (see
   * {@link shardedFilesUsage}), for metrics now and then, never on a hot path.
   */
  async usage (options: AbortOptions = {}): Promise<BlockstoreUsage> {
    const { files, bytes } = await shardedFilesUsage(this.path, { signal: options.signal, concurrency: this.#writers })
    return { blocks: files, bytes }
  }

  override async * deleteMany (source: Iterable<CID> | AsyncIterable<CID>, options: AbortOptions = {}): AsyncGenerator<CID> {
    let n = 0
    for await (const cid of source) {
      await this.delete(cid, options)
      if (++n % this.#slice === 0) await nextTurn()
      yield cid
    }
  }
}

/**
 * Files and their bytes in a directory of shard directories (blocks, blob files):
 * every shard is listed and every file stat-ed, `concurrency` at once on the thread
 * pool, so the event loop keeps serving meanwhile. Names starting with a dot (temp
 * files, markers, a temp directory) are not counted.
 */
export async function shardedFilesUsage (root: string, options: { signal?: AbortSignal, concurrency?: number } = {}): Promise<{ files: number, bytes: number }> {
  let count = 0
  let bytes = 0
  async function * files (): AsyncGenerator<string> {
    const shards = await fsCall<Dirent[]>(done => { readdir(root, { withFileTypes: true }, done) })
    for (const shard of shards) {
      if (!shard.isDirectory() || shard.name.startsWith('.')) continue
      options.signal?.throwIfAborted()
      const dir = join(root, shard.name)
      for (const name of await fsCall<string[]>(done => { readdir(dir, done) })) {
        if (!name.startsWith('.')) yield join(dir, name)
      }
    }
  }
  await eachParallel(files(), async (file) => {
    try {
      const stats = await fsCall<Stats>(done => { stat(file, done) })
      count++
      bytes += stats.size
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err // collected meanwhile
    }
  }, options.concurrency ?? 16)
  return { files: count, bytes }
}

/** A callback-style fs call as a promise (cheaper than fs/promises' FileHandles). */
async function fsCall<T> (call: (done: (err: NodeJS.ErrnoException | null, value?: T) => void) => void): Promise<T> {
  return await new Promise<T>((resolve, reject) => {
    call((err, value) => { if (err !== null) reject(err); else resolve(value as T) })
  })
}

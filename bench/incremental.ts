/**
 * Verification in proportion to the change: a one-record change on a
 * 100,000-record repo, verified incrementally (verifyIncremental) against the
 * whole-repo verification a sync ran before (verifyRepo), in the same run, on
 * the same blocks on disk.
 *
 *   node bench/incremental.ts [--records 100000] [--runs 15]
 *
 * The repo is built once by @atproto/repo and cached in bench/.cache (as
 * bench/verify-car.ts does); its blocks are written to a MirrorStore in a temp
 * dir. The change is made by @atproto/repo too (`formatCommit` of one create:
 * the commit, the new path's nodes and the record, what a `#commit` event
 * carries). Measured, each side reading the store through `verifiedBlocks()`
 * (every disk read hash-checked):
 *
 * - firehose: the change's blocks over the stored ones (OverlayBlockStore),
 *   nothing written yet;
 * - getRepo?since: the change's blocks written to the store first, as the sync
 *   does, then verified from disk;
 * - full: verifyRepo of the new commit over the store, as every sync did before.
 *
 * `benchIncremental()` is exported for other benches (bench/follow.ts).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { MemoryBlockstore, Repo, WriteOpAction, readCarWithRoot } from '@atproto/repo'
import { CID } from 'multiformats/cid'
import { MirrorStore } from '../src/mirror/store.ts'
import { MemoryBlockStore, OverlayBlockStore, type Block, type ReadonlyBlockStore } from '../src/repo/block-store.ts'
import { readCar } from '../src/repo/car.ts'
import { parseDidKey } from '../src/repo/keys.ts'
import { verifyIncremental } from '../src/repo/verify-incremental.ts'
import { verifyRepo } from '../src/repo/verify.ts'
import { cachedRepo } from '../support/generated-repo.ts'

const cacheDir = join(import.meta.dirname, '.cache')

/** The incremental verification's target: milliseconds for a one-record change. */
export const TARGET_MS = 50

export interface IncrementalBenchResult {
  records: number
  /** Blocks of the stored repo. */
  repoBlocks: number
  /** Blocks the change brings (commit, nodes, record). */
  changeBlocks: number
  firehose: Timing
  since: Timing
  full: Timing
}

export interface Timing {
  /** Median wall ms over the runs (the full side: its single run). */
  ms: number
  /** First run, cold JIT. */
  firstMs: number
  /** Distinct blocks the verification read. */
  blocksRead: number
  /** Reads that went to the disk store. */
  diskReads: number
}

/** A store that counts the reads that reach it. */
function counting (inner: ReadonlyBlockStore): ReadonlyBlockStore & { reads: number } {
  const store = {
    reads: 0,
    get: (cid: CID, options?: { signal?: AbortSignal }) => { store.reads++; return inner.get(cid, options) },
    has: (cid: CID, options?: { signal?: AbortSignal }) => inner.has(cid, options)
  }
  return store
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[sorted.length >> 1]
}

/**
 * Runs the measurement: builds (or loads) the repo, stores it under a temp dir,
 * makes a one-record change and verifies it each way. Logs progress to `log`.
 */
export async function benchIncremental (options: { records?: number, runs?: number, log?: (line: string) => void } = {}): Promise<IncrementalBenchResult> {
  const records = options.records ?? 100_000
  const runs = options.runs ?? 15
  const log = options.log ?? (() => {})
  const started = performance.now()
  const repo = await cachedRepo({ dir: cacheDir, records, keyType: 'k256', seed: 1 })
  log(`repo: ${repo.records.length} records, ${repo.car.byteLength} bytes CAR, ${repo.cached ? 'cached' : `built in ${((performance.now() - started) / 1000).toFixed(1)} s`}`)
  const key = parseDidKey(repo.didKey)

  // the change, by the reference implementation
  const { root, blocks: refBlocks } = await readCarWithRoot(repo.car)
  const refStore = new MemoryBlockstore(refBlocks)
  const refRepo = await Repo.load(refStore, root)
  const change = await refRepo.formatCommit({
    action: WriteOpAction.Create,
    collection: 'app.bsky.feed.post',
    rkey: '3zzzzzzzzzzz2',
    record: { $type: 'app.bsky.feed.post', text: 'one more post', createdAt: '2025-01-01T00:00:00.000Z' }
  }, repo.keypair)
  const changeBlocks: Block[] = change.newBlocks.entries().map(({ cid, bytes }) => ({ cid: CID.decode(cid.bytes), bytes }))
  const commit = CID.decode(change.cid.bytes)

  const dir = await mkdtemp(join(tmpdir(), 'atmirror-bench-incremental-'))
  try {
    const store = await MirrorStore.open(join(dir, 'data'))
    try {
      const writing = performance.now()
      const release = await store.beginWrite()
      let repoBlocks = 0
      try {
        const car = await readCar(repo.car)
        let batch: Block[] = []
        for await (const block of car.blocks) {
          batch.push(block)
          repoBlocks++
          if (batch.length === 1024) {
            await store.putBlocks(repo.did, batch)
            batch = []
          }
        }
        await store.putBlocks(repo.did, batch)
      } finally {
        await release()
      }
      log(`stored ${repoBlocks} blocks in ${((performance.now() - writing) / 1000).toFixed(1)} s; the change brings ${changeBlocks.length}`)
      const oldData = CID.parse(repo.data)
      const disk = store.verifiedBlocks()

      const measure = async (blocks: () => { store: ReadonlyBlockStore, disk: { reads: number } }, n: number): Promise<Timing> => {
        const times: number[] = []
        let blocksRead = 0
        let diskReads = 0
        for (let i = 0; i < n; i++) {
          const view = blocks()
          const t = performance.now()
          const result = await verifyIncremental({ oldData, commit, blocks: view.store, key, did: repo.did, records: 'hash', trusted: true })
          times.push(performance.now() - t)
          if (result.recordDelta !== 1) throw new Error(`the change creates one record, verifyIncremental says ${result.recordDelta}`)
          blocksRead = result.blocksRead
          diskReads = view.disk.reads
        }
        return { ms: median(times.slice(1)), firstMs: times[0], blocksRead, diskReads }
      }

      // firehose: the event's blocks over the store, nothing written
      const event = new MemoryBlockStore()
      for (const block of changeBlocks) event.put(block.cid, block.bytes)
      const firehose = await measure(() => {
        const counted = counting(disk)
        return { store: new OverlayBlockStore(event, counted), disk: counted }
      }, runs + 1)

      // getRepo?since: written first, then verified from disk
      const release2 = await store.beginWrite()
      try {
        await store.putBlocks(repo.did, changeBlocks)
      } finally {
        await release2()
      }
      const since = await measure(() => {
        const counted = counting(disk)
        return { store: counted, disk: counted }
      }, runs + 1)

      // the whole new repo, as every sync verified it before
      const counted = counting(disk)
      const t = performance.now()
      const summary = await verifyRepo(counted, commit, { key, did: repo.did, records: 'hash', trusted: true })
      const fullMs = performance.now() - t
      if (summary.records !== records + 1) throw new Error(`the full verification counted ${summary.records} records, want ${records + 1}`)
      const full: Timing = { ms: fullMs, firstMs: fullMs, blocksRead: summary.blocks, diskReads: counted.reads }
      return { records, repoBlocks, changeBlocks: changeBlocks.length, firehose, since, full }
    } finally {
      await store.close()
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { records: { type: 'string', default: '100000' }, runs: { type: 'string', default: '15' } } })
  const print = (line: string): void => { process.stdout.write(`${line}\n`) }
  print(`node ${process.version}`)
  const result = await benchIncremental({ records: Number(values.records), runs: Number(values.runs), log: print })
  const row = (name: string, t: Timing): string => `${name.padEnd(44)}${t.ms.toFixed(1).padStart(10)} ms${t.firstMs.toFixed(1).padStart(10)} ms${String(t.blocksRead).padStart(12)}${String(t.diskReads).padStart(12)}`
  print('')
  print(`one-record change on a ${result.records}-record repo (${result.repoBlocks} blocks)`)
  print(`${'verification'.padEnd(44)}${'median'.padStart(13)}${'first run'.padStart(13)}${'blocks read'.padStart(12)}${'disk reads'.padStart(12)}`)
  print(row('incremental, firehose (event over store)', result.firehose))
  print(row('incremental, getRepo?since (from disk)', result.since))
  print(row('full verifyRepo (what a sync did before)', result.full))
  print('')
  print(`ratio full / incremental: ${(result.full.ms / result.since.ms).toFixed(0)}x time (getRepo?since), ${(result.full.blocksRead / result.since.blocksRead).toFixed(0)}x blocks read`)
  const worst = Math.max(result.firehose.ms, result.since.ms)
  print(`incremental: ${worst.toFixed(1)} ms, target <= ${TARGET_MS} ms: ${worst <= TARGET_MS ? 'PASS' : 'BELOW TARGET'}`)
}

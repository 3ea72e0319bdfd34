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
 * With `--sync`, also the whole `getRepo?since` sync against a real local PDS
 * (support/network.ts): the cached repo imported into an account
 * (`importRepo`, about 1.5 minutes), mirrored in full once, then rounds of one
 * new record each, synced alternately by a RepoSyncer verifying incrementally
 * and one verifying the whole repo (`verify: 'full'`, the behaviour before).
 *
 * `benchIncremental()` and `benchSyncPath()` are exported for other benches
 * (bench/follow.ts).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { MemoryBlockstore, Repo, WriteOpAction, readCarWithRoot } from '@atproto/repo'
import { CID } from 'multiformats/cid'
import { PdsHeadResolver } from '../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../src/identity/resolver.ts'
import { MirrorStore } from '../src/mirror/store.ts'
import { RepoSyncer } from '../src/mirror/sync.ts'
import { MemoryBlockStore, OverlayBlockStore, type Block, type ReadonlyBlockStore } from '../src/repo/block-store.ts'
import { readCar, writeCar } from '../src/repo/car.ts'
import { cidForBytes } from '../src/repo/cid.ts'
import { decodeCommit, encodeCommit } from '../src/repo/commit.ts'
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

/**
 * The repo CAR with its commit made out to `did` (unsigned: importRepo checks
 * neither the DID nor the signature, and the PDS's next commit, signed by the
 * account's key, takes the DID from the imported one).
 */
async function forAccount (car: Uint8Array, did: string): Promise<Uint8Array<ArrayBuffer>> {
  const reader = await readCar(car)
  const blocks: Block[] = []
  for await (const block of reader.blocks) blocks.push(block)
  const [root] = reader.roots
  const index = blocks.findIndex(block => block.cid.equals(root))
  const commit = decodeCommit(blocks[index].bytes, root)
  const bytes = encodeCommit({ ...commit, did })
  const cid = cidForBytes(bytes)
  blocks[index] = { cid, bytes }
  const chunks: Uint8Array[] = []
  for await (const chunk of writeCar([cid], blocks)) chunks.push(chunk)
  return new Uint8Array(Buffer.concat(chunks))
}

export interface SyncPathResult {
  records: number
  importSeconds: number
  /** The first, full sync. */
  fullSyncSeconds: number
  /** Per round, seconds of the sync as RepoSyncer reports them (head to advance). */
  incremental: SyncRound[]
  full: SyncRound[]
}

export interface SyncRound {
  seconds: number
  /** Blocks fetched from the PDS. */
  fetched: number
}

/**
 * A one-record change synced through `getRepo?since` from a real local PDS, with
 * incremental and with full verification, alternating (see the file header).
 */
export async function benchSyncPath (options: { records?: number, rounds?: number, log?: (line: string) => void } = {}): Promise<SyncPathResult> {
  const records = options.records ?? 100_000
  const rounds = options.rounds ?? 3
  const log = options.log ?? (() => {})
  const { startTestNetwork } = await import('../support/network.ts')
  const repo = await cachedRepo({ dir: cacheDir, records, keyType: 'k256', seed: 1 })
  const net = await startTestNetwork()
  const dir = await mkdtemp(join(tmpdir(), 'atmirror-bench-incremental-sync-'))
  try {
    const account = await net.createAccount('big')
    let t = performance.now()
    const res = await fetch(`${net.pdsUrl}/xrpc/com.atproto.repo.importRepo`, {
      method: 'POST',
      headers: { authorization: `Bearer ${account.accessJwt}`, 'content-type': 'application/vnd.ipld.car' },
      body: await forAccount(repo.car, account.did),
      signal: AbortSignal.timeout(600_000)
    })
    if (!res.ok) throw new Error(`importRepo: HTTP ${res.status} ${await res.text()}`)
    let written = 0
    // one write after the import, so the head is signed by the account's key
    const post = async (): Promise<void> => {
      await net.writeRecords(account, [{ collection: 'app.bsky.feed.post', value: { text: `one more post ${written++}`, createdAt: new Date().toISOString() } }])
    }
    await post()
    const importSeconds = (performance.now() - t) / 1000
    log(`imported ${records} records into ${account.did} in ${importSeconds.toFixed(1)} s`)

    const store = await MirrorStore.open(join(dir, 'data'))
    try {
      const identity = new AtprotoIdentityResolver({ plcUrl: net.plcUrl, allowHttpLocalhost: true })
      const heads = new PdsHeadResolver({ identity })
      const syncers = {
        incremental: new RepoSyncer({ store, identity, heads }),
        full: new RepoSyncer({ store, identity, heads }, { verify: 'full' })
      }
      t = performance.now()
      const first = await syncers.incremental.sync(account.did)
      if (!first.full || first.records !== records + written) throw new Error(`first sync: full=${String(first.full)} records=${first.records}`)
      log(`first (full) sync: ${first.records} records in ${first.seconds.toFixed(1)} s`)
      const result: SyncPathResult = { records, importSeconds, fullSyncSeconds: first.seconds, incremental: [], full: [] }
      for (let i = 0; i < rounds; i++) {
        for (const side of ['incremental', 'full'] as const) {
          await post()
          const synced = await syncers[side].sync(account.did)
          if (synced.full || !synced.changed || synced.records !== records + written) throw new Error(`${side} sync: full=${String(synced.full)} changed=${String(synced.changed)} records=${synced.records}`)
          result[side].push({ seconds: synced.seconds, fetched: synced.fetched.pds })
          log(`round ${i + 1}, ${side} verification: ${(synced.seconds * 1000).toFixed(0)} ms, ${synced.fetched.pds} blocks from the PDS`)
        }
      }
      return result
    } finally {
      await store.close()
    }
  } finally {
    await net.stop()
    await rm(dir, { recursive: true, force: true })
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { records: { type: 'string', default: '100000' }, runs: { type: 'string', default: '15' }, sync: { type: 'boolean', default: false }, rounds: { type: 'string', default: '3' } } })
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

  if (values.sync) {
    print('')
    const sync = await benchSyncPath({ records: Number(values.records), rounds: Number(values.rounds), log: print })
    const inc = median(sync.incremental.map(r => r.seconds))
    const full = median(sync.full.map(r => r.seconds))
    print('')
    print(`getRepo?since sync of a one-record change (head to advance), median of ${sync.incremental.length}: incremental verification ${(inc * 1000).toFixed(0)} ms, full verification ${(full * 1000).toFixed(0)} ms (${(full / inc).toFixed(1)}x)`)
  }
}

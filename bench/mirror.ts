/**
 * Mirroring a 20,000-record account from a real local PDS (+ PLC), in one run, on
 * both kinds of blockstore:
 *
 *   node bench/mirror.ts [--records N] [--runs N]
 *   node bench/mirror.ts --records 100000 --runs 1      # the scale run (writing the
 *                                                      # account alone takes minutes)
 *   node bench/mirror.ts --records 100000 --serve       # write the account, print the
 *                                                      # child's command, keep the PDS up
 *
 * (a/kind) baseline: download getRepo and putMany every block into a fresh store of
 *     the kind's own library (blockstore-level, blockstore-fs; @ipld/car's iterator,
 *     no verification): the floor for "download and store". Timed from the request to
 *     the last block stored; the store's open and close are outside the timing, as
 *     they are outside (b)'s.
 * (b/kind) `atmirror mirror DID --blockstore kind` from an empty data directory, in a
 *     child process (its own peak RSS); time is the sync as the CLI reports it
 *     (resolve → head → download → store → verify → advance; opening and closing the
 *     data directory are not in it), plus the child's wall time with Node start-up.
 * (c) one record updated at the PDS, then `atmirror mirror` again: blocks fetched,
 *     against the target 2 × MST depth + 2.
 *
 * Disk: allocated bytes (st_blocks × 512, as `du` counts, not file sizes) of the
 * mirrored data directory of each kind, against the CAR file's bytes; the blocks
 * alone are the `blocks/` directory (fs), or a LevelDB holding the same blocks and
 * nothing else (level: in the data directory they share files with the index).
 *
 * Plus the storage floor on its own: the same blocks from memory into each library's
 * putMany and into atmirror's putVerified (as a sync writes), to show whether the
 * store is the bottleneck.
 *
 * The account is created fresh each run (applyWrites, 200 per commit); nothing is
 * cached across runs.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs, promisify } from 'node:util'
import { CarBlockIterator } from '@ipld/car/iterator'
import { FsBlockstore } from 'blockstore-fs'
import { fixtureWrites } from '../support/generated-repo.ts'
import { startTestNetwork } from '../support/network.ts'
import { LevelBlockstore } from 'blockstore-level'
import { LevelDatastore } from 'datastore-level'
import type { BlockstoreKind } from '../src/mirror/blockstore.ts'
import { allocatedBytes } from '../src/mirror/disk-usage.ts'
import { FsMirrorBlockstore } from '../src/mirror/fs-blockstore.ts'
import { LevelMirrorBlockstore } from '../src/mirror/level-blockstore.ts'
import { MirrorStore } from '../src/mirror/store.ts'
import { CID } from '../src/repo/cid.ts'
import { decodeMstNode } from '../src/repo/mst/node.ts'
import { keyHeight } from '../src/repo/mst/key.ts'
import { decodeCommit } from '../src/repo/commit.ts'

const pexec = promisify(execFile)
const root = join(import.meta.dirname, '..')

const { values } = parseArgs({
  options: {
    records: { type: 'string', default: '20000' },
    runs: { type: 'string', default: '3' },
    // write the account, print the child's command and keep the PDS up until SIGINT
    // (to profile `atmirror mirror` by hand)
    serve: { type: 'boolean', default: false }
  }
})
const RECORDS = Number(values.records)
const RUNS = Math.max(1, Number(values.runs))

const KINDS: readonly BlockstoreKind[] = ['fs', 'level']
const mib = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(1)} MiB`
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const fmt = (s: number): string => `${s.toFixed(2)} s`

const work = await mkdtemp(join(tmpdir(), 'atmirror-bench-'))
const net = await startTestNetwork()
try {
  process.stdout.write(`node ${process.version}; local PDS ${net.pdsUrl}, PLC ${net.plcUrl}\n`)
  const t0 = performance.now()
  const account = await net.createAccount('bench')
  // a mix like a real account's (posts of seeded random words, likes, follows, a
  // profile): repeated text would compress far better than real records do
  const records = fixtureWrites(RECORDS, account.did, 7).map(write => ({ collection: write.collection, rkey: write.rkey, value: write.record as Record<string, unknown> }))
  const written = await net.writeRecords(account, records)
  process.stdout.write(`account ${account.did}: ${RECORDS} records written in ${fmt((performance.now() - t0) / 1000)}\n\n`)
  if (values.serve) {
    process.stdout.write(`node ${join(root, 'bin/atmirror.ts')} mirror ${account.did} --data DIR --plc ${net.plcUrl} --json [--blockstore fs]\nPDS up until SIGINT\n`)
    await new Promise(resolve => process.once('SIGINT', resolve))
    await net.stop()
    await rm(work, { recursive: true, force: true })
    process.exit(0)
  }

  // (a) and (b) alternate, and so do the two kinds of store, so all see the same
  // machine (other load comes and goes)
  let carBlocks = 0
  let carBytes = 0
  let carFileBytes = 0
  /** (a): getRepo into a fresh store of the kind's own library, putMany. */
  const runBaseline = async (kind: BlockstoreKind, i: number): Promise<number> => {
    const dir = join(work, `baseline-${kind}-${i}`)
    // timed like (b): from the request to the last block stored, the store's open and
    // close outside (the sync's own `seconds` excludes opening and closing the data dir)
    const store = kind === 'fs' ? new FsBlockstore(dir) : new LevelBlockstore(dir)
    await store.open()
    const started = performance.now()
    const res = await fetch(`${net.pdsUrl}/xrpc/com.atproto.sync.getRepo?did=${account.did}`)
    if (!res.ok || res.body === null) throw new Error(`getRepo: HTTP ${res.status}`)
    carBlocks = 0
    carBytes = 0
    carFileBytes = 0
    const body = (async function * () {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        carFileBytes += chunk.byteLength
        yield chunk
      }
    })()
    const blocks = await CarBlockIterator.fromIterable(body)
    const pairs = (async function * () {
      for await (const { cid, bytes } of blocks) {
        carBlocks++
        carBytes += bytes.byteLength
        yield { cid: CID.asCID(cid) as CID, bytes }
      }
    })()
    for await (const _ of store.putMany(pairs as unknown as Parameters<FsBlockstore['putMany']>[0])) { /* drain */ }
    const seconds = (performance.now() - started) / 1000
    await store.close()
    await rm(dir, { recursive: true, force: true })
    return seconds
  }

  // (b) atmirror mirror from empty, in a child process
  const cli = async (dir: string, kind?: BlockstoreKind): Promise<{ result: Record<string, any>, wall: number, maxRssKb: number }> => {
    const started = performance.now()
    const { stdout, stderr } = await pexec(process.execPath, [
      '--import', 'data:text/javascript,process.on("exit",()=>{process.stderr.write("maxrss="+process.resourceUsage().maxRSS+"\\n")})',
      join(root, 'bin/atmirror.ts'), 'mirror', account.did, '--data', dir, '--plc', net.plcUrl, '--json', ...(kind === undefined ? [] : ['--blockstore', kind])
    ], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })
    const wall = (performance.now() - started) / 1000
    const rss = /maxrss=(\d+)/.exec(stderr)
    return { result: JSON.parse(stdout.trim().split('\n').at(-1) as string), wall, maxRssKb: rss === null ? NaN : Number(rss[1]) }
  }
  const baseline: Record<BlockstoreKind, number[]> = { level: [], fs: [] }
  const mirrorRuns: Record<BlockstoreKind, Array<{ seconds: number, wall: number, maxRssKb: number }>> = { level: [], fs: [] }
  const mirrorDirs: Record<BlockstoreKind, string> = { level: '', fs: '' }
  for (let i = 0; i < RUNS; i++) {
    for (const kind of KINDS) {
      baseline[kind].push(await runBaseline(kind, i))
      const dir = join(work, `mirror-${kind}-${i}`)
      const { result, wall, maxRssKb } = await cli(dir, kind)
      if (result.ok !== true || result.records !== RECORDS) throw new Error(`mirror failed: ${JSON.stringify(result)}`)
      mirrorRuns[kind].push({ seconds: result.seconds, wall, maxRssKb })
      if (i < RUNS - 1) await rm(dir, { recursive: true, force: true })
      else mirrorDirs[kind] = dir
    }
  }
  process.stdout.write(`the CAR: ${carBlocks} blocks, ${(carBytes / 1024 / 1024).toFixed(1)} MiB of block bytes, ${(carFileBytes / 1024 / 1024).toFixed(1)} MiB as a CAR file\n`)
  const a: Record<BlockstoreKind, number> = { level: median(baseline.level), fs: median(baseline.fs) }
  const b: Record<BlockstoreKind, number> = { level: median(mirrorRuns.level.map(r => r.seconds)), fs: median(mirrorRuns.fs.map(r => r.seconds)) }
  const library: Record<BlockstoreKind, string> = { level: 'blockstore-level', fs: 'blockstore-fs' }
  for (const kind of KINDS) {
    process.stdout.write(`(a/${kind}) baseline getRepo + ${library[kind]} putMany: ${fmt(a[kind])} median of ${RUNS} (${baseline[kind].map(fmt).join(', ')})\n`)
    process.stdout.write(`(b/${kind}) atmirror mirror --blockstore ${kind} from empty: ${fmt(b[kind])} sync median (${mirrorRuns[kind].map(r => fmt(r.seconds)).join(', ')}); child wall time with Node start-up ${fmt(median(mirrorRuns[kind].map(r => r.wall)))}; peak RSS ${(Math.max(...mirrorRuns[kind].map(r => r.maxRssKb)) / 1024).toFixed(0)} MB\n`)
  }
  const rss = Math.max(...mirrorRuns.level.map(r => r.maxRssKb)) / 1024
  const mirrorDir = mirrorDirs.level
  // what (a) and (b) both leave out, for scale: opening and closing atmirror's store
  // (LevelDB, the blockstore, the leftover-staging check) on the mirrored directory
  const openClose = await timeOpenClose(mirrorDir)
  process.stdout.write(`    not in (a) or (b): MirrorStore open + close of the mirrored data directory ${(openClose * 1000).toFixed(0)} ms\n`)

  // disk: allocated bytes (st_blocks × 512, as du counts), after (b), against the CAR file
  const disk: Record<BlockstoreKind, { blocks: number, whole: number, index: number }> = { level: { blocks: 0, whole: 0, index: 0 }, fs: { blocks: 0, whole: 0, index: 0 } }
  for (const kind of KINDS) {
    const whole = await allocatedBytes(mirrorDirs[kind])
    // the blocks alone: fs, the blocks/ directory; level, a LevelDB holding the same
    // blocks and nothing else (the mirrored one shares its files with the index)
    const blocks = kind === 'fs' ? await allocatedBytes(join(mirrorDirs.fs, 'blocks')) : await packedBlocksAlone(mirrorDirs.level)
    disk[kind] = { blocks, whole, index: kind === 'fs' ? await allocatedBytes(join(mirrorDirs.fs, 'datastore')) : whole - blocks }
    process.stdout.write(`disk/${kind}: blocks ${mib(blocks)} (${(blocks / carFileBytes).toFixed(2)}× the CAR), whole data directory ${mib(whole)} (${(whole / carFileBytes).toFixed(2)}×; datastore and index ${mib(disk[kind].index)})\n`)
  }

  // (c) one record changed
  const postsWritten = written.records.filter(record => record.collection === 'app.bsky.feed.post')
  const target = postsWritten[Math.floor(postsWritten.length / 2)]
  await net.updateRecord(account, { collection: target.collection, rkey: target.rkey, value: { $type: 'app.bsky.feed.post', text: 'changed', createdAt: new Date().toISOString() } })
  const again = await cli(mirrorDir)
  const fetched = again.result.fetched as { pds: number, bitswap: number, local: number }
  const depth = await mstDepth(mirrorDir, again.result.commit)
  process.stdout.write(`(c) re-mirror after one record changed: fetched pds=${fetched.pds} bitswap=${fetched.bitswap} local=${fetched.local}, ${again.result.bytes} bytes, ${fmt(again.result.seconds)} sync\n`)

  // storage floor: the same blocks from memory
  const blocks: Array<{ cid: CID, bytes: Uint8Array }> = []
  {
    const res = await fetch(`${net.pdsUrl}/xrpc/com.atproto.sync.getRepo?did=${account.did}`)
    for await (const { cid, bytes } of await CarBlockIterator.fromIterable(res.body as unknown as AsyncIterable<Uint8Array>)) blocks.push({ cid: CID.asCID(cid) as CID, bytes })
  }
  // the floor of each kind: the same blocks from memory, the library's own putMany
  // and atmirror's putVerified (what a sync does: blocks already hash-checked)
  const floors: Record<string, number[]> = {}
  const floor = async (name: string, make: (dir: string) => { open: () => Promise<void>, close: () => Promise<void>, write: () => Promise<void>, after?: () => Promise<void> }): Promise<void> => {
    for (let i = 0; i < RUNS; i++) {
      const dir = join(work, `floor-${name.replace(/\W+/g, '-')}-${i}`)
      const store = make(dir)
      await store.open()
      const started = performance.now()
      await store.write()
      ;(floors[name] ??= []).push((performance.now() - started) / 1000)
      await store.close()
      await rm(dir, { recursive: true, force: true })
    }
  }
  const drain = async (putMany: AsyncIterable<unknown> | Iterable<unknown>): Promise<void> => { for await (const _ of putMany) { /* drain */ } }
  const pairs = blocks as unknown as Parameters<FsBlockstore['putMany']>[0]
  await floor('blockstore-fs putMany', dir => { const s = new FsBlockstore(dir); return { open: async () => await s.open(), close: async () => await s.close(), write: async () => await drain(s.putMany(pairs)) } })
  await floor('blockstore-level putMany', dir => { const s = new LevelBlockstore(dir); return { open: async () => await s.open(), close: async () => await s.close(), write: async () => await drain(s.putMany(pairs)) } })
  await floor('fs putVerified', dir => { const s = new FsMirrorBlockstore(dir); return { open: async () => await s.open(), close: async () => await s.close(), write: async () => { for (let at = 0; at < blocks.length; at += 1000) await s.putVerified(blocks.slice(at, at + 1000)) } } })
  await floor('level putVerified', dir => {
    const d = new LevelDatastore(dir)
    const s = new LevelMirrorBlockstore(d.db)
    return { open: async () => { await d.open(); await s.open() }, close: async () => await d.close(), write: async () => { for (let at = 0; at < blocks.length; at += 256) await s.putVerified(blocks.slice(at, at + 256)) } }
  })
  process.stdout.write(`storage floor, ${blocks.length} blocks from memory (median of ${RUNS}): ${Object.entries(floors).map(([name, times]) => `${name} ${fmt(median(times))}`).join(', ')}\n\n`)

  const bound = 2 * depth + 2
  const download = a.level - median(floors['blockstore-level putMany'])
  const line = (label: string, value: number, target: number, unit = ''): string => `${label} = ${value.toFixed(2)}${unit}  (target <= ${target}${unit})  ${value <= target ? 'OK' : 'MISSED'}`
  process.stdout.write([
    line('(b/level)/(a/level), against getRepo + blockstore-level putMany', b.level / a.level, 1.5),
    `(b/level)/(b/fs), against the blockstore-fs mirror in this run = ${(b.level / b.fs).toFixed(2)}; (b/fs)/(a/fs) = ${(b.fs / a.fs).toFixed(2)}; getRepo alone ~ ${fmt(Math.max(0, download))}`,
    line('disk/level: blocks alone ÷ CAR', disk.level.blocks / carFileBytes, 1.3, '×'),
    line('disk/level: whole data directory ÷ CAR', disk.level.whole / carFileBytes, 1.5, '×'),
    `disk/fs for comparison: blocks ${(disk.fs.blocks / carFileBytes).toFixed(2)}×, whole ${(disk.fs.whole / carFileBytes).toFixed(2)}×`,
    `(c) blocks fetched = ${fetched.pds + fetched.bitswap}, MST depth = ${depth}, bound 2*depth+2 = ${bound}  ${fetched.pds + fetched.bitswap <= bound ? 'OK' : 'MISSED'}`,
    line('(b/level) peak RSS', rss, 300, ' MB')
  ].join('\n') + '\n')
} finally {
  await net.stop()
  await rm(work, { recursive: true, force: true })
}

/** Seconds to open and close atmirror's store on `dir`. */
async function timeOpenClose (dir: string): Promise<number> {
  const started = performance.now()
  const store = await MirrorStore.open(dir)
  await store.close()
  return (performance.now() - started) / 1000
}

/** Allocated bytes of a LevelDB holding only the blocks the mirrored `dir` holds (written as a sync writes them). */
async function packedBlocksAlone (dir: string): Promise<number> {
  const source = await MirrorStore.open(dir)
  const target = join(dir + '-blocks-alone')
  // opened as MirrorStore opens its LevelDB (snappy on)
  const datastore = new LevelDatastore(target, { compression: true })
  await datastore.open()
  try {
    const store = new LevelMirrorBlockstore(datastore.db)
    await store.open()
    let batch: Array<{ cid: CID, bytes: Uint8Array }> = []
    for await (const { cid, bytes } of source.blockstore.getAll()) {
      const parts: Uint8Array[] = []
      for await (const part of bytes) parts.push(part)
      batch.push({ cid, bytes: parts.length === 1 ? parts[0] : Buffer.concat(parts) })
      if (batch.length >= 256) { await store.putVerified(batch); batch = [] }
    }
    await store.putVerified(batch)
  } finally {
    await datastore.close()
    await source.close()
  }
  const bytes = await allocatedBytes(target)
  await rm(target, { recursive: true, force: true })
  return bytes
}

/** Levels of the stored MST: the root's layer + 1. */
async function mstDepth (dir: string, commit: string): Promise<number> {
  const store = await MirrorStore.open(dir)
  try {
    const commitBytes = await store.getBlock(CID.parse(commit))
    if (commitBytes === undefined) throw new Error('commit not stored')
    const data = decodeCommit(commitBytes).data
    const bytes = await store.getBlock(data)
    if (bytes === undefined) throw new Error('MST root not stored')
    const rootNode = decodeMstNode(bytes, data)
    // every key of the root node sits at the root's layer; layers count from 0 at the leaves
    return rootNode.entries.length === 0 ? 1 : keyHeight(rootNode.entries[0].key) + 1
  } finally {
    await store.close()
  }
}

/**
 * Mirroring a 20,000-record account from a real local PDS (+ PLC), in one run:
 *
 *   node bench/mirror.ts [--records N] [--runs N]
 *
 * (a) baseline: download getRepo and putMany every block into a fresh blockstore-fs
 *     (@ipld/car's iterator, no verification): the floor for "download and store".
 *     Timed from the request to the last block stored; the store's open and close
 *     are outside the timing, as they are outside (b)'s.
 * (b) `atmirror mirror DID` from an empty data directory, in a child process (its
 *     own peak RSS); time is the sync as the CLI reports it (resolve → head →
 *     download → store → verify → advance; opening and closing the data directory
 *     are not in it), plus the child's wall time with Node start-up for reference,
 *     and the store's open + close time measured on its own.
 * (c) one record updated at the PDS, then `atmirror mirror` again: blocks fetched,
 *     against the target 2 × MST depth + 2.
 *
 * Plus the storage floor on its own: the same blocks from memory into a fresh
 * blockstore-fs (putMany) and into atmirror's MirrorBlockstore (putMany, and putVerified as a sync writes), to show whether the
 * filesystem store is the bottleneck.
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
import { startTestNetwork } from '../support/network.ts'
import { MirrorBlockstore } from '../src/mirror/blockstore.ts'
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
    runs: { type: 'string', default: '3' }
  }
})
const RECORDS = Number(values.records)
const RUNS = Math.max(1, Number(values.runs))

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const fmt = (s: number): string => `${s.toFixed(2)} s`

const work = await mkdtemp(join(tmpdir(), 'atmirror-bench-'))
const net = await startTestNetwork()
try {
  process.stdout.write(`node ${process.version}; local PDS ${net.pdsUrl}, PLC ${net.plcUrl}\n`)
  const t0 = performance.now()
  const account = await net.createAccount('bench')
  const records = Array.from({ length: RECORDS }, (_, i) => ({
    collection: 'app.bsky.feed.post',
    value: { text: `post number ${i}: ${'lorem ipsum '.repeat(1 + (i % 7))}`, createdAt: new Date(1_700_000_000_000 + i * 1000).toISOString() }
  }))
  const written = await net.writeRecords(account, records)
  process.stdout.write(`account ${account.did}: ${RECORDS} records written in ${fmt((performance.now() - t0) / 1000)}\n\n`)

  // (a) and (b) alternate, so both see the same machine (other load comes and goes)
  const baseline: number[] = []
  let carBlocks = 0
  let carBytes = 0
  const runBaseline = async (i: number): Promise<void> => {
    const dir = join(work, `baseline-${i}`)
    // timed like (b): from the request to the last block stored, the store's open and
    // close outside (the sync's own `seconds` excludes opening and closing the data dir)
    const store = new FsBlockstore(dir)
    await store.open()
    const started = performance.now()
    const res = await fetch(`${net.pdsUrl}/xrpc/com.atproto.sync.getRepo?did=${account.did}`)
    if (!res.ok || res.body === null) throw new Error(`getRepo: HTTP ${res.status}`)
    carBlocks = 0
    carBytes = 0
    const blocks = await CarBlockIterator.fromIterable(res.body as unknown as AsyncIterable<Uint8Array>)
    const pairs = (async function * () {
      for await (const { cid, bytes } of blocks) {
        carBlocks++
        carBytes += bytes.byteLength
        yield { cid: CID.asCID(cid) as CID, bytes }
      }
    })()
    for await (const _ of store.putMany(pairs as unknown as Parameters<FsBlockstore['putMany']>[0])) { /* drain */ }
    baseline.push((performance.now() - started) / 1000)
    await store.close()
    await rm(dir, { recursive: true, force: true })
  }

  // (b) atmirror mirror from empty, in a child process
  const cli = async (dir: string): Promise<{ result: Record<string, any>, wall: number, maxRssKb: number }> => {
    const started = performance.now()
    const { stdout, stderr } = await pexec(process.execPath, [
      '--import', 'data:text/javascript,process.on("exit",()=>{process.stderr.write("maxrss="+process.resourceUsage().maxRSS+"\\n")})',
      join(root, 'bin/atmirror.ts'), 'mirror', account.did, '--data', dir, '--plc', net.plcUrl, '--json'
    ], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })
    const wall = (performance.now() - started) / 1000
    const rss = /maxrss=(\d+)/.exec(stderr)
    return { result: JSON.parse(stdout.trim().split('\n').at(-1) as string), wall, maxRssKb: rss === null ? NaN : Number(rss[1]) }
  }
  const mirrorRuns: Array<{ seconds: number, wall: number, maxRssKb: number }> = []
  let mirrorDir = ''
  for (let i = 0; i < RUNS; i++) {
    await runBaseline(i)
    const dir = join(work, `mirror-${i}`)
    const { result, wall, maxRssKb } = await cli(dir)
    if (result.ok !== true || result.records !== RECORDS) throw new Error(`mirror failed: ${JSON.stringify(result)}`)
    mirrorRuns.push({ seconds: result.seconds, wall, maxRssKb })
    if (i < RUNS - 1) await rm(dir, { recursive: true, force: true })
    else mirrorDir = dir
  }
  const a = median(baseline)
  process.stdout.write(`(a) baseline getRepo + blockstore-fs putMany: ${fmt(a)} median of ${RUNS} (${baseline.map(fmt).join(', ')}); ${carBlocks} blocks, ${(carBytes / 1024 / 1024).toFixed(1)} MiB\n`)
  const b = median(mirrorRuns.map(r => r.seconds))
  const bWall = median(mirrorRuns.map(r => r.wall))
  const rss = Math.max(...mirrorRuns.map(r => r.maxRssKb)) / 1024
  process.stdout.write(`(b) atmirror mirror from empty: ${fmt(b)} sync median (${mirrorRuns.map(r => fmt(r.seconds)).join(', ')}); child wall time with Node start-up ${fmt(bWall)}\n`)
  // what (a) and (b) both leave out, for scale: opening and closing atmirror's store
  // (LevelDB, the blockstore, the leftover-staging check) on the mirrored directory
  const openClose = await timeOpenClose(mirrorDir)
  process.stdout.write(`    not in (a) or (b): MirrorStore open + close of the mirrored data directory ${(openClose * 1000).toFixed(0)} ms (blockstore-fs open + close in (a): a mkdir)\n`)

  // (c) one record changed
  const target = written.records[Math.floor(RECORDS / 2)]
  await net.updateRecord(account, { collection: target.collection, rkey: target.rkey, value: { text: 'changed', createdAt: new Date().toISOString() } })
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
  const fsTimes: number[] = []
  const mirrorTimes: number[] = []
  const verifiedTimes: number[] = []
  for (let i = 0; i < RUNS; i++) {
    for (const [kind, times] of [['fs', fsTimes], ['mirror', mirrorTimes], ['verified', verifiedTimes]] as const) {
      const dir = join(work, `floor-${kind}-${i}`)
      const store = kind === 'fs' ? new FsBlockstore(dir) : new MirrorBlockstore(dir)
      await store.open()
      const started = performance.now()
      if (store instanceof MirrorBlockstore && kind === 'verified') {
        // what a sync does: blocks already hash-checked, written 16 at once on the thread pool
        for (let at = 0; at < blocks.length; at += 1000) await store.putVerified(blocks.slice(at, at + 1000))
      } else {
        for await (const _ of store.putMany(blocks as unknown as Parameters<FsBlockstore['putMany']>[0])) { /* drain */ }
      }
      times.push((performance.now() - started) / 1000)
      await store.close()
      await rm(dir, { recursive: true, force: true })
    }
  }
  process.stdout.write(`storage floor, ${blocks.length} blocks from memory: blockstore-fs putMany ${fmt(median(fsTimes))}, MirrorBlockstore putMany (hash-checked, sync writes, temp file + rename) ${fmt(median(mirrorTimes))}, MirrorBlockstore putVerified (the sync's path: 16 async writes at once) ${fmt(median(verifiedTimes))}\n\n`)

  const ratio = b / a
  const bound = 2 * depth + 2
  process.stdout.write([
    `(b)/(a) = ${ratio.toFixed(2)}  (target <= 1.5)  ${ratio <= 1.5 ? 'OK' : 'MISSED'}`,
    `(c) blocks fetched = ${fetched.pds + fetched.bitswap}, MST depth = ${depth}, bound 2*depth+2 = ${bound}  ${fetched.pds + fetched.bitswap <= bound ? 'OK' : 'MISSED'}`,
    `(b) peak RSS = ${rss.toFixed(0)} MB  (target <= 300 MB)  ${rss <= 300 ? 'OK' : 'MISSED'}`
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

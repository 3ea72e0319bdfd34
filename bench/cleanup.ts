/**
 * What cleaning up after a killed sync costs, against what writing its blocks cost.
 *
 *   node bench/cleanup.ts [--blocks N] [--held N]
 *
 * (a) baseline: a sync's writes, N small blocks (100 bytes, as a junk flood sends)
 *     stored through MirrorStore.putBlocks in batches of 256 (staged, hash-checked,
 *     temp file + rename), for a DID that is never pinned. The datastore is then
 *     closed without any cleanup, as SIGKILL leaves it.
 * (b) reopening the store: the staging lists are released, each block is checked
 *     against the holder index (which holds `--held` blocks of a pinned repo, so the
 *     seeks run over a real index) and its file deleted.
 * (c) the other way leftovers go: the same N blocks turned into GC candidates
 *     (discardStaged, as after a sync that failed) and collected.
 *
 * Each phase runs in a fresh child process, so its peak RSS is its own. Printed:
 * times, (b)/(a) and (c)/(a), and the peak RSS of each (the target: cleanup costs
 * about what writing did, in time, and memory does not grow with N).
 */
import { spawn } from 'node:child_process'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { randomBytes } from 'node:crypto'
import { HoldDelta } from '../src/mirror/gc.ts'
import { MirrorStore } from '../src/mirror/store.ts'
import { cidForBytes, RAW } from '../src/repo/cid.ts'

const { values } = parseArgs({
  options: {
    blocks: { type: 'string', default: '200000' },
    held: { type: 'string', default: '50000' },
    child: { type: 'string' },
    dir: { type: 'string' },
    owner: { type: 'string' }
  }
})

/** Block files under a data directory. */
async function countBlockFiles (dataDir: string): Promise<number> {
  let n = 0
  const base = join(dataDir, 'blocks')
  for (const shard of await readdir(base)) {
    if (shard.startsWith('.')) continue
    n += (await readdir(join(base, shard))).filter(name => name.endsWith('.data')).length
  }
  return n
}

const DID = 'did:plc:benchcleanupaaaaaaaaaaaa'
const PINNED = 'did:plc:benchpinnedaaaaaaaaaaaaa'

function junk (n: number): Array<{ cid: ReturnType<typeof cidForBytes>, bytes: Uint8Array }> {
  return Array.from({ length: n }, () => {
    const bytes = randomBytes(100)
    return { cid: cidForBytes(bytes, RAW), bytes }
  })
}

async function writeLeftovers (dir: string, n: number, held: number, owner: string): Promise<number> {
  const store = await MirrorStore.open(dir)
  // a pinned repo's holds, so that "held by anyone?" seeks a real index
  const release = await store.beginWrite()
  const delta = new HoldDelta()
  const kept = junk(held)
  for (let i = 0; i < kept.length; i += 256) await store.putBlocks(PINNED, kept.slice(i, i + 256))
  for (const { cid } of kept) delta.add(cid)
  await store.commitRepo({ did: PINNED, commit: kept[0].cid.toString(), rev: '3kaaaaaaaaaaa', data: kept[0].cid.toString(), status: 'active', syncedAt: new Date().toISOString() }, delta, { pin: true, fresh: true })
  await release()
  const blocks = junk(n)
  const started = performance.now()
  await store.beginWrite()
  for (let i = 0; i < blocks.length; i += 256) await store.putBlocks(owner, blocks.slice(i, i + 256))
  const ms = performance.now() - started
  // SIGKILL: nothing released, nothing collected; only LevelDB's lock let go
  await store.datastore.close()
  return ms
}

async function reopen (dir: string): Promise<number> {
  const started = performance.now()
  const store = await MirrorStore.open(dir)
  const ms = performance.now() - started
  await store.close()
  return ms
}

async function discardAndCollect (dir: string): Promise<number> {
  const store = await MirrorStore.open(dir)
  // the pinned DID's list of the killed write was kept at open; as after a failed
  // sync of it, discard and collect
  const started = performance.now()
  const release = await store.beginWrite()
  await store.discardStaged(PINNED)
  await release()
  const ms = performance.now() - started
  await store.close()
  return ms
}

if (values.child !== undefined) {
  const dir = values.dir as string
  const n = Number(values.blocks)
  let ms: number
  if (values.child === 'write') ms = await writeLeftovers(dir, n, Number(values.held), values.owner === 'pinned' ? PINNED : DID)
  else if (values.child === 'reopen') ms = await reopen(dir)
  else ms = await discardAndCollect(dir)
  process.stdout.write(JSON.stringify({ ms, rssMb: process.resourceUsage().maxRSS / 1024 }) + '\n')
} else {
  const n = Number(values.blocks)
  const child = async (phase: string, dir: string, owner = 'stray'): Promise<{ ms: number, rssMb: number }> => await new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [import.meta.filename, '--child', phase, '--dir', dir, '--blocks', String(n), '--held', values.held as string, '--owner', owner], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    proc.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    proc.on('exit', (code) => { if (code === 0) resolve(JSON.parse(out)); else reject(new Error(`${phase} exited ${code}`)) })
  })
  const root = await mkdtemp(join(tmpdir(), 'atmirror-bench-cleanup-'))
  try {
    // (a) + (b): leftovers of an unpinned DID, released when the store opens
    const a = await child('write', join(root, 'b'))
    const b = await child('reopen', join(root, 'b'))
    const leftB = await countBlockFiles(join(root, 'b'))
    // (a') + (c): the same leftovers staged by the pinned DID are kept at open (its
    // next sync may use them); a failed sync discards them into candidates, and
    // they are collected when the writer leaves
    const a2 = await child('write', join(root, 'c'), 'pinned')
    const c = await child('collect', join(root, 'c'))
    const leftC = await countBlockFiles(join(root, 'c'))
    const held = Number(values.held)
    console.log(`(a)  write ${n} leftover blocks (putBlocks, batches of 256): ${(a.ms / 1000).toFixed(2)} s, ${(n / a.ms * 1000).toFixed(0)} blocks/s, peak RSS ${a.rssMb.toFixed(0)} MB`)
    console.log(`(b)  reopen after SIGKILL, release the staging lists: ${(b.ms / 1000).toFixed(2)} s, ${(n / b.ms * 1000).toFixed(0)} blocks/s, peak RSS ${b.rssMb.toFixed(0)} MB; ${leftB - held} leftovers remain (want 0)`)
    console.log(`(a') write again: ${(a2.ms / 1000).toFixed(2)} s`)
    console.log(`(c)  discardStaged + collect: ${(c.ms / 1000).toFixed(2)} s, ${(n / c.ms * 1000).toFixed(0)} blocks/s, peak RSS ${c.rssMb.toFixed(0)} MB; ${leftC - held} leftovers remain (want 0)`)
    console.log(`(b)/(a) = ${(b.ms / a.ms).toFixed(2)}  (target <= 1.5)  ${b.ms / a.ms <= 1.5 ? 'OK' : 'BELOW TARGET'}`)
    console.log(`(c)/(a') = ${(c.ms / a2.ms).toFixed(2)}  (target <= 1.5)  ${c.ms / a2.ms <= 1.5 ? 'OK' : 'BELOW TARGET'}`)
  } finally {
    await rm(root, { recursive: true, force: true })
  }
}

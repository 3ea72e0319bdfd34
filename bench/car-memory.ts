/**
 * Memory of `atmirror car verify` and `car ls` on a CAR of millions of tiny blocks.
 *
 *   node bench/car-memory.ts [--blocks 3000000] [--records 1000]
 *
 * Builds a CAR in a temp directory: a real repository of `--records` records made by
 * @atproto/repo, padded with tiny blocks the commit does not reach (each the
 * DAG-CBOR encoding of one integer, 1–5 bytes) up to `--blocks` blocks in all. That
 * is the shape a hostile or careless CAR can have, and `car verify` must hold every
 * block while it reads (blocks may come in any order). Then, each in its own child
 * process running the real CLI, it prints the peak RSS of:
 *
 * - the baseline: `car verify` of the repo alone (Node, the CLI and its modules, a
 *   small verification);
 * - `car verify` and `car ls` of the padded CAR.
 *
 * The figure is the padded run's peak RSS against the target (≤ 1 GB for 3 million
 * blocks), and what it costs per block above the baseline.
 */
import { spawn } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { parseArgs } from 'node:util'
import { varint } from 'multiformats'
import { generateRepo } from '../support/generated-repo.ts'
import { readCar } from '../src/repo/car.ts'
import { cidForBytes, type CID } from '../src/repo/cid.ts'
import { encodeCbor } from '../src/repo/cbor.ts'

const { values } = parseArgs({
  options: {
    blocks: { type: 'string', default: '3000000' },
    records: { type: 'string', default: '1000' }
  }
})

const TARGET_MB = 1024
const cli = join(import.meta.dirname, '..', 'bin', 'atmirror.ts')
/** Prints the process's peak RSS (KiB) on stderr as it exits. */
const REPORT_RSS = 'data:text/javascript,process.on("exit",()=>{process.stderr.write("\\nmaxrss-kb="+process.resourceUsage().maxRSS+"\\n")})'

const total = Number(values.blocks)
const records = Number(values.records)
const dir = await mkdtemp(join(tmpdir(), 'atmirror-car-memory-'))
try {
  const started = performance.now()
  const repo = await generateRepo({ records, seed: 7 })
  const small = join(dir, 'repo.car')
  await writeFile(small, repo.car)
  const big = join(dir, 'padded.car')
  const blocks = await writePadded(big, repo.car, total)
  const size = (await stat(big)).size
  process.stdout.write(`CAR: ${blocks} blocks (${records} records + ${blocks - (await countBlocks(repo.car))} padding), ${mb(size)} MB, written in ${((performance.now() - started) / 1000).toFixed(1)} s to ${big}\n`)
  process.stdout.write(`node ${process.version}; each run is the CLI in its own process\n\n`)

  const baseline = await measure(['car', 'verify', small, '--json'])
  const verify = await measure(['car', 'verify', big, '--json'])
  const list = await measure(['car', 'ls', big])
  const verified = JSON.parse(verify.stdout) as { records: number, carBlocks: number, unreachableBlocks: number }
  if (verified.records !== records || verified.carBlocks !== blocks) throw new Error(`car verify counted ${verified.records} records and ${verified.carBlocks} blocks, want ${records} and ${blocks}`)
  const listed = list.stdout.split('\n').filter(line => line !== '').length
  if (listed !== records) throw new Error(`car ls listed ${listed} records, want ${records}`)

  const rows: Array<[string, Run]> = [
    [`car verify, repo alone (${records} records): baseline`, baseline],
    [`car verify, ${blocks} blocks`, verify],
    [`car ls, ${blocks} blocks`, list]
  ]
  const width = Math.max(...rows.map(([name]) => name.length))
  process.stdout.write(`${'run'.padEnd(width)}   peak RSS    seconds   bytes/block over baseline\n`)
  for (const [name, run] of rows) {
    const perBlock = run === baseline ? '' : (((run.maxRssKb - baseline.maxRssKb) * 1024) / blocks).toFixed(0)
    process.stdout.write(`${name.padEnd(width)}  ${`${mb(run.maxRssKb * 1024)} MB`.padStart(9)}  ${run.seconds.toFixed(1).padStart(9)}   ${perBlock.padStart(10)}\n`)
  }
  const peak = Math.max(verify.maxRssKb, list.maxRssKb) * 1024
  process.stdout.write(`\npeak RSS / CAR size: ${(peak / size).toFixed(2)}x; peak RSS ${mb(peak)} MB for ${blocks} blocks (target <= ${TARGET_MB} MB for 3000000)\n`)
  process.stdout.write(`${peak <= TARGET_MB * 1024 * 1024 ? 'PASS' : 'BELOW TARGET'}\n`)
} finally {
  await rm(dir, { recursive: true, force: true })
}

interface Run { maxRssKb: number, seconds: number, stdout: string }

async function measure (args: string[]): Promise<Run> {
  const started = performance.now()
  const child = spawn(process.execPath, ['--import', REPORT_RSS, cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DEBUG: '' } })
  const out: Buffer[] = []
  let err = ''
  child.stdout.on('data', (chunk: Buffer) => { out.push(chunk) })
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk: string) => { err += chunk })
  const [code] = await once(child, 'close') as [number | null]
  const seconds = (performance.now() - started) / 1000
  if (code !== 0) throw new Error(`atmirror ${args.join(' ')} exited with ${code}: ${err}`)
  const match = /maxrss-kb=(\d+)/.exec(err)
  if (match === null) throw new Error(`no RSS report from atmirror ${args.join(' ')}: ${err}`)
  return { maxRssKb: Number(match[1]), seconds, stdout: Buffer.concat(out).toString() }
}

async function countBlocks (car: Uint8Array): Promise<number> {
  let n = 0
  for await (const _ of (await readCar(car)).blocks) n++
  return n
}

/** Writes the repo's blocks, then tiny padding blocks up to `total`; returns the block count. */
async function writePadded (path: string, repoCar: Uint8Array, total: number): Promise<number> {
  const reader = await readCar(repoCar)
  const out = createWriteStream(path, { highWaterMark: 1 << 20 })
  let pending: Uint8Array[] = []
  let pendingBytes = 0
  /** Queues bytes; true when a megabyte is queued and should be flushed. */
  const write = (bytes: Uint8Array): boolean => {
    pending.push(bytes)
    pendingBytes += bytes.byteLength
    return pendingBytes >= 1 << 20
  }
  const flush = async (): Promise<void> => {
    const chunk = Buffer.concat(pending)
    pending = []
    pendingBytes = 0
    if (!out.write(chunk)) await once(out, 'drain')
  }
  const section = (cid: CID, bytes: Uint8Array): boolean => {
    const length = cid.bytes.byteLength + bytes.byteLength
    write(varint.encodeTo(length, new Uint8Array(varint.encodingLength(length))))
    write(cid.bytes)
    return write(bytes)
  }
  const header = encodeCbor({ roots: reader.roots, version: 1 })
  write(varint.encodeTo(header.byteLength, new Uint8Array(varint.encodingLength(header.byteLength))))
  write(header)
  let n = 0
  for await (const block of reader.blocks) {
    if (section(block.cid, block.bytes)) await flush()
    n++
  }
  for (let i = 0; n < total; i++, n++) {
    const bytes = encodeCbor(i)
    if (section(cidForBytes(bytes), bytes)) await flush()
  }
  out.end(Buffer.concat(pending))
  await once(out, 'finish')
  return n
}

function mb (bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(0)
}

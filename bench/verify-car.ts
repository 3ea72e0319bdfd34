/**
 * Full verification of a 20,000-record repository CAR: atmirror vs @atproto/repo.
 *
 *   node bench/verify-car.ts [--records N] [--runs N] [--warmup N] [--profile]
 *
 * The repo is built once by @atproto/repo and cached in bench/.cache. Each side then
 * runs in its own child process on the same bytes (so their peak RSS figures are
 * separate): warm-up runs, then timed runs, median reported.
 *
 * - atmirror:  verifyRepoCar(bytes, { did, key }) — parse, every CID, the commit and
 *              its signature, strict MST structure, every record present and decoded
 *              as DRISL (and again with records: 'hash', which only hash-checks them).
 * - baseline:  @atproto/repo readCarWithRoot(bytes) + verifyRepo(blocks, root, did,
 *              didKey) — parse, every CID, the signature, the MST walk, every leaf
 *              present (records are not decoded).
 */
import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

const here = import.meta.dirname
const cacheDir = join(here, '.cache')

type Side = 'atmirror' | 'atmirror-hash' | 'atproto' | 'idle'

interface ChildResult {
  side: Side
  /** Wall-clock ms per timed run. */
  times: number[]
  /** CPU ms (user + system, all threads) per timed run: steadier than wall time on a busy machine. */
  cpu: number[]
  maxRssKb: number
  records: number
}

const { values } = parseArgs({
  options: {
    records: { type: 'string', default: '20000' },
    runs: { type: 'string', default: '9' },
    warmup: { type: 'string', default: '3' },
    profile: { type: 'boolean', default: false },
    child: { type: 'string' },
    car: { type: 'string' },
    did: { type: 'string' },
    key: { type: 'string' }
  }
})

if (values.child !== undefined) {
  await runChild(values.child as Side)
} else {
  await runParent()
}

async function runParent (): Promise<void> {
  const { cachedRepo } = await import('../support/generated-repo.ts')
  const records = Number(values.records)
  const started = performance.now()
  const repo = await cachedRepo({ dir: cacheDir, records, keyType: 'k256', seed: 1 })
  const carPath = join(cacheDir, `repo-k256-${records}-1.car`)
  process.stdout.write(`repo: ${repo.records.length} records, ${repo.car.byteLength} bytes CAR, ${repo.cached ? 'loaded from' : `built in ${((performance.now() - started) / 1000).toFixed(1)} s into`} ${carPath}\n`)
  process.stdout.write(`node ${process.version}, ${values.warmup} warm-up + ${values.runs} timed runs per side, each side in its own process\n\n`)

  // Each side runs twice, in fresh processes: once cold (one verification, no
  // warm-up: what a CLI invocation pays, and the memory one verification needs)
  // and once warm (warm-up, then the timed runs).
  const cold = new Map<Side, ChildResult>()
  const warm = new Map<Side, ChildResult>()
  for (const side of ['idle', 'atproto', 'atmirror', 'atmirror-hash'] as const) {
    cold.set(side, await spawnChild(side, carPath, repo.did, repo.didKey, { runs: 1, warmup: 0, profile: false }))
    if (side === 'idle') continue
    warm.set(side, await spawnChild(side, carPath, repo.did, repo.didKey, { runs: Number(values.runs), warmup: Number(values.warmup), profile: values.profile }))
  }
  for (const [side, result] of [...cold, ...warm]) {
    if (side !== 'idle' && result.records !== records) throw new Error(`${side} counted ${result.records} records, want ${records}`)
  }

  const rows = [
    ['@atproto/repo readCarWithRoot + verifyRepo', 'atproto'],
    ['atmirror verifyRepoCar (records decoded)', 'atmirror'],
    ['atmirror verifyRepoCar (records hash-checked)', 'atmirror-hash']
  ] as const
  const width = Math.max(...rows.map(([name]) => name.length))
  const columns = ['median', 'min', 'max', 'CPU med.', 'peak RSS', 'cold run', 'cold RSS']
  process.stdout.write(`${'side'.padEnd(width)}${columns.map(c => c.padStart(11)).join('')}\n`)
  for (const [name, side] of rows) {
    const w = warm.get(side)!
    const c = cold.get(side)!
    const sorted = [...w.times].sort((a, b) => a - b)
    const cells = [ms(median(w.times)), ms(sorted[0]), ms(sorted[sorted.length - 1]), ms(median(w.cpu)), mb(w.maxRssKb), ms(c.times[0]), mb(c.maxRssKb)]
    process.stdout.write(`${name.padEnd(width)}${cells.map(cell => cell.padStart(11)).join('')}\n`)
  }
  process.stdout.write(`(peak RSS of a process that only loads the same modules and reads the CAR: ${mb(cold.get('idle')!.maxRssKb)})\n\n`)
  const ratio = (a: Side, b: Side, pick: (r: ChildResult) => number): string => (pick(warm.get(a)!) / pick(warm.get(b)!)).toFixed(2)
  const wallOf = (r: ChildResult): number => median(r.times)
  const cpuOf = (r: ChildResult): number => median(r.cpu)
  const wall = ratio('atproto', 'atmirror', wallOf)
  process.stdout.write(`ratio @atproto/repo / atmirror, wall time: ${wall}x with records decoded, ${ratio('atproto', 'atmirror-hash', wallOf)}x hash-only (target >= 3x)\n`)
  process.stdout.write(`ratio @atproto/repo / atmirror, CPU time:  ${ratio('atproto', 'atmirror', cpuOf)}x with records decoded, ${ratio('atproto', 'atmirror-hash', cpuOf)}x hash-only\n`)
  process.stdout.write(`ratio @atproto/repo / atmirror, cold run:  ${(cold.get('atproto')!.times[0] / cold.get('atmirror')!.times[0]).toFixed(2)}x with records decoded\n`)
  process.stdout.write(`${Number(wall) >= 3 ? 'PASS' : 'BELOW TARGET'}\n`)
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

function ms (value: number): string {
  return `${value.toFixed(1)} ms`
}

function mb (kb: number): string {
  return `${(kb / 1024).toFixed(0)} MB`
}

async function spawnChild (side: Side, car: string, did: string, key: string, plan: { runs: number, warmup: number, profile: boolean }): Promise<ChildResult> {
  const nodeArgs = plan.profile && side.startsWith('atmirror')
    ? ['--cpu-prof', '--cpu-prof-dir', join(cacheDir, 'profiles'), '--cpu-prof-name', `${side}-${Date.now()}.cpuprofile`]
    : []
  const args = [...nodeArgs, import.meta.filename, '--child', side, '--car', car, '--did', did, '--key', key, '--runs', String(plan.runs), '--warmup', String(plan.warmup)]
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (chunk: string) => { out += chunk })
  const code = await new Promise<number | null>(resolve => child.on('close', resolve))
  if (code !== 0) throw new Error(`${side} child exited with ${code}: ${out}`)
  return JSON.parse(out) as ChildResult
}

async function runChild (side: Side): Promise<void> {
  const bytes = new Uint8Array(await readFile(values.car!))
  const did = values.did!
  const didKey = values.key!
  let run: () => Promise<number>
  if (side === 'atproto') {
    const { readCarWithRoot, verifyRepo } = await import('@atproto/repo')
    run = async () => {
      const car = await readCarWithRoot(bytes)
      const verified = await verifyRepo(car.blocks, car.root, did, didKey)
      return verified.creates.length
    }
  } else if (side === 'idle') {
    await import('@atproto/repo')
    await import('../src/repo/verify.ts')
    run = async () => bytes.byteLength > 0 ? 0 : -1
  } else {
    const { verifyRepoCar } = await import('../src/repo/verify.ts')
    const { parseDidKey } = await import('../src/repo/keys.ts')
    const key = parseDidKey(didKey)
    const records = side === 'atmirror' ? 'decode' : 'hash'
    run = async () => {
      const summary = await verifyRepoCar(bytes, { did, key, records })
      if (summary.signature !== 'verified') throw new Error('signature not verified')
      return summary.records
    }
  }
  let count = 0
  for (let i = 0; i < Number(values.warmup); i++) count = await run()
  const times: number[] = []
  const cpu: number[] = []
  const runs = side === 'idle' ? 1 : Number(values.runs)
  for (let i = 0; i < runs; i++) {
    const startCpu = process.cpuUsage()
    const start = performance.now()
    count = await run()
    times.push(performance.now() - start)
    const used = process.cpuUsage(startCpu)
    cpu.push((used.user + used.system) / 1000)
  }
  const result: ChildResult = { side, times, cpu, maxRssKb: process.resourceUsage().maxRSS, records: count }
  process.stdout.write(JSON.stringify(result))
}

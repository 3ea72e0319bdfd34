/**
 * Start-up time of the installed CLI against bare Node, in the same run.
 *
 *   node bench/startup.ts [--runs 21] [--warmup 3] [--records 2000]
 *
 * Packs this repository and installs the tarball into an empty project with
 * `--omit=dev` (support/package-install.ts: what a user gets), then times, each as a
 * fresh process on the pinned Node, interleaved run by run so load on the machine
 * hits every command alike:
 *
 * - bare Node: `node -e 0`, the baseline;
 * - `atmirror --help`;
 * - `atmirror status` on a data directory with no daemon (the "no daemon" answer);
 * - `atmirror block get CID --offline` on a data directory holding a stored repo
 *   (a `--records`-record repo made by @atproto/repo, its blocks written with
 *   atmirror's MirrorBlockstore).
 *
 * The CLI runs through `<project>/node_modules/.bin/atmirror` as a user's shell
 * would. Prints each command's median and min wall time, its mean CPU time (user +
 * system; steadier than wall time when other work shares the machine, whose load
 * average is printed too), and its median wall time above bare Node next to the
 * target; `BELOW TARGET` when one is missed.
 */
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { packAndInstall } from '../support/package-install.ts'
import { generateRepo } from '../support/generated-repo.ts'
import { settleBlockstoreKind } from '../src/mirror/blockstore.ts'
import { FsMirrorBlockstore } from '../src/mirror/fs-blockstore.ts'
import { MirrorStore } from '../src/mirror/store.ts'
import { readCar } from '../src/repo/car.ts'
import type { Block } from '../src/repo/block-store.ts'

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '21' },
    warmup: { type: 'string', default: '3' },
    records: { type: 'string', default: '2000' }
  }
})
const runs = Number(values.runs)
const warmup = Number(values.warmup)

const dir = await mkdtemp(join(tmpdir(), 'atmirror-startup-'))
try {
  process.stderr.write('packing and installing the package (npm pack, npm install --omit=dev)…\n')
  const pkg = await packAndInstall(dir)
  process.stderr.write(`  npm pack (build included) ${pkg.seconds.pack.toFixed(1)} s, npm install ${pkg.seconds.install.toFixed(1)} s\n`)

  // a stored repo, every block of a generated repo, in each kind of store: one
  // file per block in <data>/blocks, and packed in <packed>/datastore
  const data = join(dir, 'data')
  const packed = join(dir, 'packed')
  const repo = await generateRepo({ records: Number(values.records), seed: 3 })
  const blocks: Block[] = []
  for await (const block of (await readCar(repo.car)).blocks) blocks.push(block)
  await mkdir(data)
  settleBlockstoreKind(data, 'fs')
  const blockstore = new FsMirrorBlockstore(join(data, 'blocks'))
  await blockstore.open()
  await blockstore.putVerified(blocks)
  await blockstore.close()
  const store = await MirrorStore.open(packed, { blockstore: 'level' })
  await store.blockstore.putVerified(blocks)
  await store.close()
  const record = repo.records[Math.floor(repo.records.length / 3)].cid
  const expected = blocks.find(block => block.cid.toString() === record)!.bytes
  const empty = join(dir, 'empty')

  interface Case { label: string, file: string, args: string[], target?: number, check: (r: ReturnType<typeof spawnSync>) => string | undefined }
  const cases: Case[] = [
    { label: 'node -e 0 (bare Node)', file: pkg.node, args: ['-e', '0'], check: r => r.status === 0 ? undefined : `exit ${r.status}` },
    {
      label: 'atmirror --help',
      file: pkg.bin,
      args: ['--help'],
      target: 150,
      check: r => r.status === 0 && String(r.stdout).startsWith('usage: atmirror') ? undefined : `exit ${r.status}: ${String(r.stderr)}`
    },
    {
      label: 'atmirror status (no daemon)',
      file: pkg.bin,
      args: ['status', '--data', empty],
      target: 250,
      check: r => r.status === 1 && /no daemon/.test(String(r.stderr) + String(r.stdout)) ? undefined : `exit ${r.status}: ${String(r.stderr)}`
    },
    {
      label: 'atmirror block get CID --offline (fs)',
      file: pkg.bin,
      args: ['block', 'get', record, '--offline', '--data', data],
      target: 300,
      check: r => r.status === 0 && Buffer.compare(r.stdout as Buffer, expected) === 0 ? undefined : `exit ${r.status}: ${String(r.stderr)}`
    },
    {
      label: 'atmirror block get CID --offline (level)',
      file: pkg.bin,
      args: ['block', 'get', record, '--offline', '--data', packed],
      target: 300,
      check: r => r.status === 0 && Buffer.compare(r.stdout as Buffer, expected) === 0 ? undefined : `exit ${r.status}: ${String(r.stderr)}`
    }
  ]

  const times = cases.map(() => [] as number[])
  const cpu = cases.map(() => 0)
  for (let i = 0; i < warmup + runs; i++) {
    cases.forEach((c, j) => {
      const cpuBefore = childCpuMs()
      const start = performance.now()
      const result = spawnSync(c.file, c.args, { cwd: pkg.app, env: pkg.env, maxBuffer: 16 << 20 })
      const ms = performance.now() - start
      const problem = c.check(result)
      if (problem !== undefined) throw new Error(`${c.label}: ${problem}`)
      if (i >= warmup) {
        times[j].push(ms)
        cpu[j] += childCpuMs() - cpuBefore
      }
    })
  }

  const median = (xs: number[]): number => {
    const s = [...xs].sort((a, b) => a - b)
    return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
  }
  const bare = median(times[0])
  const version = spawnSync(pkg.node, ['--version'], { encoding: 'utf8' }).stdout.trim()
  console.log(`installed atmirror (${pkg.tarball.split('/').pop()}), Node ${version}, ${runs} runs each after ${warmup} warm-up, interleaved; load average ${loadavg().map(x => x.toFixed(1)).join(' ')} on ${availableParallelism()} CPUs`)
  console.log(`${'command'.padEnd(36)}${'median'.padStart(10)}${'min'.padStart(10)}${'CPU mean'.padStart(10)}${'above bare'.padStart(13)}   target (median above bare)`)
  let pass = true
  cases.forEach((c, j) => {
    const m = median(times[j])
    const above = m - bare
    const ok = c.target === undefined || above <= c.target
    pass &&= ok
    const target = c.target === undefined ? '' : `<= ${c.target} ms above  ${ok ? 'ok' : 'BELOW TARGET'}`
    const cpuMean = Number.isNaN(cpu[j]) ? '-' : `${(cpu[j] / runs).toFixed(0)} ms`
    console.log(`${c.label.padEnd(36)}${`${m.toFixed(1)} ms`.padStart(10)}${`${Math.min(...times[j]).toFixed(1)} ms`.padStart(10)}${cpuMean.padStart(10)}${(j === 0 ? '' : `${above.toFixed(1)} ms`).padStart(13)}   ${target}`)
  })
  console.log(pass ? 'PASS' : 'BELOW TARGET')
} finally {
  await rm(dir, { recursive: true, force: true })
}

/**
 * User + system CPU time of this process's waited-for children so far (Linux:
 * /proc/self/stat, in clock ticks of 10 ms, hence a mean over the runs); NaN elsewhere.
 */
function childCpuMs (): number {
  try {
    const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ')
    return (Number(fields[13]) + Number(fields[14])) * 10
  } catch {
    return Number.NaN
  }
}

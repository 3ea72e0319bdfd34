/**
 * Serving a mirrored repo over HTTP against the reference PDS serving the same repo,
 * in one run:
 *
 *   node bench/serve.ts [--records N] [--runs N] [--gets N]
 *
 * A real local PDS (+ PLC) holds a fresh 20,000-record account; an atmirror node in
 * this process mirrors it and serves it on its public server (`--http`).
 *
 * (a) getRepo: the whole repo as a CAR, read to the end by fetch, from the PDS and
 *     from the mirror, alternating; MB/s from the median time. Target: the mirror
 *     at least 2× the PDS. Repeated requests are answered from the mirror's CAR
 *     cache, so the first request of each side is also printed on its own (one
 *     sample: the mirror reading every block from its store).
 * (b) getRecord, one request at a time for random records of the repo: the
 *     `com.atproto.sync.getRecord` proof CAR and the `com.atproto.repo.getRecord`
 *     JSON, PDS and mirror alternating; p50 and p99 latency of each.
 *
 * Both servers run in this process with the client (the PDS is the npm package, as
 * in every other bench), so each side pays the same client costs. Nothing is
 * cached across runs; the account is created fresh.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { startTestNetwork } from '../support/network.ts'
import { createMirrorNode } from '../src/node.ts'

const { values } = parseArgs({
  options: {
    records: { type: 'string', default: '20000' },
    runs: { type: 'string', default: '5' },
    gets: { type: 'string', default: '400' }
  }
})
const RECORDS = Number(values.records)
const RUNS = Math.max(1, Number(values.runs))
const GETS = Math.max(10, Number(values.gets))

const median = (xs: number[]): number => quantile(xs, 0.5)
function quantile (xs: number[], q: number): number {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

/** Seconds and bytes of one GET read to the end. */
async function timedGet (url: string): Promise<{ seconds: number, bytes: number }> {
  const started = performance.now()
  const res = await fetch(url)
  if (!res.ok || res.body === null) throw new Error(`GET ${url}: HTTP ${res.status} ${await res.text()}`)
  let bytes = 0
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) bytes += chunk.length
  return { seconds: (performance.now() - started) / 1000, bytes }
}

const work = await mkdtemp(join(tmpdir(), 'atmirror-bench-serve-'))
const net = await startTestNetwork()
let node: Awaited<ReturnType<typeof createMirrorNode>> | undefined
try {
  process.stdout.write(`node ${process.version}; local PDS ${net.pdsUrl}, PLC ${net.plcUrl}\n`)
  const t0 = performance.now()
  const account = await net.createAccount('bench')
  const written = await net.writeRecords(account, Array.from({ length: RECORDS }, (_, i) => ({
    collection: 'app.bsky.feed.post',
    value: { text: `post number ${i}: ${'lorem ipsum '.repeat(1 + (i % 7))}`, createdAt: new Date(1_700_000_000_000 + i * 1000).toISOString() }
  })))
  process.stdout.write(`account ${account.did}: ${RECORDS} records written in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`)

  node = await createMirrorNode({
    dataDir: join(work, 'node'),
    plcUrl: net.plcUrl,
    allowHttpLocalhost: true,
    network: false,
    api: false,
    http: { port: 0 },
    checkOnStart: false,
    intervalMs: 0
  })
  await node.start()
  const sync = await node.mirror(account.did)
  const mirrorUrl = node.http!.url
  process.stdout.write(`mirrored: ${sync.records} records, ${(sync.bytes / 1024 / 1024).toFixed(1)} MiB in ${sync.seconds.toFixed(1)} s; serving on ${mirrorUrl}\n\n`)

  // (a) getRepo, alternating (other load on the machine comes and goes)
  const sides = { pds: net.pdsUrl, mirror: mirrorUrl } as const
  const repoTimes: Record<keyof typeof sides, number[]> = { pds: [], mirror: [] }
  let carBytes = 0
  // the first request of each is timed on its own: the mirror reads every block from
  // its store then; later ones come from its CAR cache (sync-api.ts), and the PDS's from a warm
  // SQLite page cache
  const cold: Record<keyof typeof sides, number> = { pds: 0, mirror: 0 }
  for (const side of ['pds', 'mirror'] as const) cold[side] = (await timedGet(`${sides[side]}/xrpc/com.atproto.sync.getRepo?did=${account.did}`)).seconds
  for (let i = 0; i < RUNS; i++) {
    for (const side of (i % 2 === 0 ? ['pds', 'mirror'] : ['mirror', 'pds']) as Array<keyof typeof sides>) {
      const { seconds, bytes } = await timedGet(`${sides[side]}/xrpc/com.atproto.sync.getRepo?did=${account.did}`)
      repoTimes[side].push(seconds)
      carBytes = bytes
    }
  }
  const mbps = (side: keyof typeof sides): number => carBytes / 1e6 / median(repoTimes[side])
  const ratio = mbps('mirror') / mbps('pds')
  const list = (xs: number[]): string => xs.map(x => x.toFixed(3)).join(', ')
  process.stdout.write(`(a) getRepo, ${(carBytes / 1024 / 1024).toFixed(2)} MiB CAR, median of ${RUNS}:\n`)
  process.stdout.write(`    PDS     ${median(repoTimes.pds).toFixed(3)} s = ${mbps('pds').toFixed(1)} MB/s  (${list(repoTimes.pds)})\n`)
  process.stdout.write(`    mirror  ${median(repoTimes.mirror).toFixed(3)} s = ${mbps('mirror').toFixed(1)} MB/s  (${list(repoTimes.mirror)})\n`)
  process.stdout.write(`    mirror/PDS = ${ratio.toFixed(2)}x  (target >= 2x)  ${ratio >= 2 ? 'OK' : 'BELOW TARGET'}\n`)
  const coldRatio = cold.pds / cold.mirror
  process.stdout.write(`    first request of each (the mirror reading every block from its store, no cache): PDS ${cold.pds.toFixed(3)} s, mirror ${cold.mirror.toFixed(3)} s = ${coldRatio.toFixed(2)}x\n\n`)

  // (b) getRecord latency, one request at a time, random records, alternating
  let seed = 42
  const random = (): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31 }
  const picks = Array.from({ length: GETS }, () => written.records[Math.floor(random() * written.records.length)])
  for (const [name, path] of [
    ['sync.getRecord (proof CAR)', (r: typeof picks[0]) => `/xrpc/com.atproto.sync.getRecord?did=${account.did}&collection=${r.collection}&rkey=${r.rkey}`],
    ['repo.getRecord (JSON)', (r: typeof picks[0]) => `/xrpc/com.atproto.repo.getRecord?repo=${account.did}&collection=${r.collection}&rkey=${r.rkey}`]
  ] as const) {
    const times: Record<keyof typeof sides, number[]> = { pds: [], mirror: [] }
    for (const record of picks.slice(0, 20)) for (const base of Object.values(sides)) await timedGet(base + path(record))
    for (let i = 0; i < picks.length; i++) {
      for (const side of (i % 2 === 0 ? ['pds', 'mirror'] : ['mirror', 'pds']) as Array<keyof typeof sides>) {
        times[side].push((await timedGet(sides[side] + path(picks[i]))).seconds * 1000)
      }
    }
    const row = (side: keyof typeof sides): string => `p50 ${quantile(times[side], 0.5).toFixed(2)} ms, p99 ${quantile(times[side], 0.99).toFixed(2)} ms`
    process.stdout.write(`(b) ${name}, ${GETS} requests each:\n`)
    process.stdout.write(`    PDS     ${row('pds')}\n    mirror  ${row('mirror')}\n`)
    process.stdout.write(`    mirror/PDS p50 = ${(quantile(times.mirror, 0.5) / quantile(times.pds, 0.5)).toFixed(2)}, p99 = ${(quantile(times.mirror, 0.99) / quantile(times.pds, 0.99)).toFixed(2)}  (lower is faster)\n\n`)
  }
} finally {
  await node?.stop()
  await net.stop()
  await rm(work, { recursive: true, force: true })
}
